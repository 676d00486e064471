"""Long-context perplexity per window, as an :class:`~hookkit.evals.runner.EvalTask` (``hookkit eval longppl``).

One forward over the first ``max_tokens`` tokens of a text (from each start offset), then the negative
log-likelihood of every token given everything before it, reported per window of ``window`` tokens (window k
covers the predictions of tokens ``[k·window, (k+1)·window)``; the first token has no prediction). This is the
measurement of transformers-v5.md §9.1 (KJV, per 2k-token window: about 8 up to 10k tokens with stock SmolLM2,
then 72, 327, 1245), generalised to any UTF-8 text file; the default text is the shipped KJV.

Logits are never materialised for the whole sequence (32k × 49k would be gigabytes): the decoder's hidden states
come from one forward without a KV cache, and the output embedding is applied ``logit_chunk`` positions at a time
(fp32 log-softmax). The forward goes through the text model, so an attached hookkit session (LongHeads) applies.
Models with final logit soft-capping (Gemma-2 style) are refused.

``max_context`` gives the text's own reference: each window is then predicted in its own forward from at most
``max_context`` tokens (the window and the tokens right before it). With the stock model and ``max_context`` no
more than the trained length, that separates "the text gets harder here" (genealogies in Genesis are) from "the
model loses track of a long context".
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hookkit.evals.corpus import KJV_RESOURCE, KJV_SHA256, corpus_sha256, load_kjv_text
from hookkit.evals.memory import PeakMemory
from hookkit.evals.runner import EvalTask, Record, Sample, SampleError

__all__ = ["LongPPLTask", "window_nll"]


def window_nll(model: Any, input_ids: torch.Tensor, window: int, logit_chunk: int = 1024) -> tuple[list[float],
                                                                                                 list[int], float]:
    """NLL sums and token counts per window for one sequence ``[1, N]``, and the forward's wall time.

    The hidden states come from the text model (``hookkit.get_model_info(model).text_model``) in one forward
    with ``use_cache=False``; ``lm_head`` is applied ``logit_chunk`` positions at a time.
    """
    import hookkit
    from hookkit.models.base import model_device

    info = hookkit.get_model_info(model)
    if getattr(info.text_config, "final_logit_softcapping", None):
        raise NotImplementedError("longppl does not implement final logit soft-capping")
    head = info.lm_head
    if head is None or info.text_model is None:
        raise NotImplementedError("longppl needs the decoder stack and its output embedding")
    device = model_device(model)
    ids = input_ids.to(device)
    n = ids.shape[1]
    n_win = math.ceil(n / window)
    sums = [0.0] * n_win
    counts = [0] * n_win
    with torch.no_grad():
        t0 = time.perf_counter()
        hidden = info.text_model(input_ids=ids, use_cache=False).last_hidden_state  # [1, N, hidden]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        forward_s = time.perf_counter() - t0
        targets = ids[0, 1:]
        for s in range(0, n - 1, logit_chunk):
            e = min(n - 1, s + logit_chunk)
            logits = head(hidden[0, s:e]).float()
            nll = F.cross_entropy(logits, targets[s:e], reduction="none")  # predicts token i+1 from position i
            pos = torch.arange(s + 1, e + 1, device=nll.device) // window  # window of the *predicted* token
            per = torch.zeros(n_win, dtype=torch.float64, device=nll.device).index_add_(0, pos, nll.double())
            cnt = torch.bincount(pos, minlength=n_win)
            for k in range(n_win):
                sums[k] += float(per[k])
                counts[k] += int(cnt[k])
    return sums, counts, forward_s


class LongPPLTask(EvalTask):
    """Perplexity per window of a long text (one sample per start offset).

    Args:
        tokenizer: the model's tokenizer.
        text: the text; default the shipped KJV.
        text_name: name recorded in ``data_files``.
        max_tokens: tokens per sample (one forward).
        window: window size in tokens.
        starts: start offsets in tokens into the tokenised text (one sample each).
        max_context: None: one forward over the whole sample; an integer (a multiple of ``window``): every window
            in its own forward over at most ``max_context`` tokens ending with it (truncated-context reference).
    """

    name = "longppl"
    version = "1"
    # A sample is the text from its own start offset: more starts on resume only add samples (the tokenised text
    # is a prefix-stable function of the longest need, see token_ids), so a run can be widened to more excerpts.
    extendable_config_keys = ("starts",)

    def __init__(self, tokenizer: Any, *, text: str | None = None, text_name: str | None = None,
                 max_tokens: int = 32768, window: int = 2048, starts: Sequence[int] = (0,),
                 add_bos: bool = False, max_context: int | None = None) -> None:
        if max_tokens < 2 or window < 1:
            raise ValueError("max_tokens must be >= 2 and window >= 1")
        if max_context is not None and (max_context < window or max_context % window):
            raise ValueError(f"max_context must be a multiple of window={window}, got {max_context}")
        if not starts or any(s < 0 for s in starts):
            raise ValueError("starts must be non-negative token offsets")
        self.tokenizer = tokenizer
        self.shipped = text is None
        self.text = load_kjv_text() if text is None else text
        self.text_name = text_name or (f"hookkit/evals/data/{KJV_RESOURCE}" if self.shipped else "text")
        self.max_tokens = int(max_tokens)
        self.window = int(window)
        self.starts = [int(s) for s in starts]
        self.add_bos = add_bos
        self.max_context = None if max_context is None else int(max_context)
        self._ids: list[int] | None = None
        self.model: Any = None

    @classmethod
    def from_file(cls, tokenizer: Any, path: str | Path, **kwargs: Any) -> LongPPLTask:
        from hookkit.errors import InputError

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--text {p}: cannot read it as UTF-8 text ({exc})") from exc
        if not text.strip():
            raise InputError(f"--text {p}: the file is empty")
        return cls(tokenizer, text=text, text_name=str(p), **kwargs)

    def token_ids(self) -> list[int]:
        """The tokenised text, long enough for the last start (characters are tokenised lazily, ~6 per token)."""
        if self._ids is None:
            need = max(self.starts) + self.max_tokens
            chars = 6 * need + 4096
            while True:
                ids = list(self.tokenizer(self.text[:chars], add_special_tokens=self.add_bos)["input_ids"])
                if len(ids) > need + 64 or chars >= len(self.text):
                    break
                chars *= 2
            self._ids = ids[:need + 1] if len(ids) > need else ids
        return self._ids

    def samples(self) -> list[Sample]:
        return [{"sample_id": f"start{s}", "start": s} for s in self.starts]

    def predict(self, batch: list[Sample]) -> list[Record]:
        if self.model is None:
            raise RuntimeError("LongPPLTask.model is not set")
        return [self.predict_one(s) for s in batch]

    def predict_one(self, sample: Sample) -> Record:
        ids = self.token_ids()[sample["start"]: sample["start"] + self.max_tokens]
        if len(ids) < 2:
            raise SampleError(sample["sample_id"], f"the text has fewer than {sample['start'] + 2} tokens")
        with PeakMemory() as mem:
            if self.max_context is None:
                sums, counts, forward_s = window_nll(self.model, torch.tensor([ids]), self.window)
            else:
                sums, counts, forward_s = self._truncated_context_nll(ids)
        ppl = [math.exp(s / c) if c else None for s, c in zip(sums, counts)]
        return {"sample_id": sample["sample_id"], "start": sample["start"], "n_tokens": len(ids),
                "window": self.window, "nll_sums": sums, "token_counts": counts, "window_ppl": ppl,
                "_prefill_s": forward_s, "_peak_rss_bytes": mem.peak_rss,
                **({"_cuda_peak_bytes": mem.cuda_peak} if mem.cuda_peak is not None else {})}

    def _truncated_context_nll(self, ids: list[int]) -> tuple[list[float], list[int], float]:
        """Window k from its own forward over ``ids[max(0, hi - max_context):hi]``, ``hi = (k+1)·window``.

        The segment starts a multiple of ``window`` tokens before the window, so the window is the segment's last
        one in :func:`window_nll`'s pooling.
        """
        assert self.max_context is not None
        sums, counts, total_s = [], [], 0.0
        for lo in range(0, len(ids), self.window):
            hi = min(len(ids), lo + self.window)
            first = max(0, lo + self.window - self.max_context)
            seg_sums, seg_counts, seconds = window_nll(self.model, torch.tensor([ids[first:hi]]), self.window)
            sums.append(seg_sums[-1])
            counts.append(seg_counts[-1])
            total_s += seconds
        return sums, counts, total_s

    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        n_win = max((len(r["nll_sums"]) for r in records), default=0)
        sums = [0.0] * n_win
        counts = [0] * n_win
        for r in records:
            for k, (s, c) in enumerate(zip(r["nll_sums"], r["token_counts"])):
                sums[k] += s
                counts[k] += c
        metrics: dict[str, Any] = {}
        table = []
        for k in range(n_win):
            lo, hi = k * self.window, (k + 1) * self.window
            value = math.exp(sums[k] / counts[k]) if counts[k] else math.nan
            metrics[f"ppl_{lo}_{hi}"] = value
            table.append({"start": lo, "end": hi, "tokens": counts[k], "ppl": value})
        total = sum(counts)
        metrics["ppl"] = math.exp(sum(sums) / total) if total else math.nan
        metrics["windows"] = table
        pre = [float(r["_prefill_s"]) for r in records if isinstance(r.get("_prefill_s"), (int, float))]
        rss = [int(r["_peak_rss_bytes"]) for r in records if isinstance(r.get("_peak_rss_bytes"), int)]
        metrics["forward_s_median"] = sorted(pre)[len(pre) // 2] if pre else math.nan
        metrics["peak_rss_bytes_max"] = float(max(rss)) if rss else math.nan
        return metrics

    def config(self) -> dict[str, Any]:
        protocol = ("NLL of each token given all previous ones, one forward, pooled per window"
                    if self.max_context is None else
                    f"NLL of each token given at most the {self.max_context} tokens ending with its window, one "
                    "forward per window, pooled per window")
        return {"protocol": protocol, "max_context": self.max_context,
                "max_tokens": self.max_tokens, "window": self.window, "starts": self.starts,
                "add_special_tokens": self.add_bos, "text": self.text_name}

    def data_files(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {"path": self.text_name, "sha256": corpus_sha256(self.text), "role": "text"}
        if self.shipped:
            entry["version"] = "Debian bible-kjv-text 4.38 (public domain); see hookkit/evals/data/PROVENANCE.md"
            entry["expected_sha256"] = KJV_SHA256
        return [entry]

    def higher_is_better(self) -> dict[str, bool]:
        return {"ppl": False}
