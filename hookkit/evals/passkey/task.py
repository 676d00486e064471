"""Passkey retrieval as an :class:`~hookkit.evals.runner.EvalTask`, plus the timed greedy decoder shared by the
long-context tasks (passkey, NIAH).

Protocol: eval-protocols.md §5. The prompt is the Landmark-attention prompt (§5.1 texts, byte for byte) built to an
exact token count for the model's tokenizer (:func:`hookkit.evals.passkey.build_passkey_prompt`, §5.4). Depth and
key come from :func:`hookkit.evals.passkey.sample_trial` (LongHeads seeding rule, §5.3: seed = trial_seed + trial
index + length, fresh numpy generator per trial), or the depth is fixed (``depths``). Decoding is greedy with the
raw prompt (no chat template). The score is the Landmark rule (§5.2): the first run of digits in the
continuation equals the key; the LongHeads exact-token rule (§5.3, SmolLM2 fix: ids of ``" " + K``) is recorded as
a second metric.

Per sample the record holds the prompt metadata (token count, depth, needle token span, whether the needle
straddles a 256-token chunk boundary), the continuation, both scores, and the volatile timing/memory fields
``_prefill_s``, ``_decode_s``, ``_decode_tok_s``, ``_peak_rss_bytes`` (``_cuda_peak_bytes`` on GPU). Per length
(one cell per length, or per (length, depth) with fixed depths) the task reports accuracy, median prefill seconds,
median decode tokens/s and the peak memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hookkit.evals.decoding import eos_ids, greedy_generate
from hookkit.evals.passkey.build import (
    FILLER_UNIT,
    NEEDLE_TEMPLATE,
    QUESTION,
    TASK_DESCRIPTION,
    build_passkey_prompt,
    passkey_answer_ids,
    sample_trial,
    score_exact_tokens,
    score_first_number,
)
from hookkit.evals.results import as_number, cell_summary, mean_stderr
from hookkit.evals.runner import EvalTask, Record, Sample, SampleError

logger = logging.getLogger(__name__)

#: Enough for " " + 5 digits + "." with SmolLM2's one-token digits (§5.3: LongHeads uses len(answer ids)).
PASSKEY_MAX_NEW_TOKENS = 8


# ---------------------------------------------------------------------------------------------- the task
class PasskeyTask(EvalTask):
    """Passkey retrieval at exact token lengths (eval-protocols.md §5).

    Args:
        tokenizer: the model's tokenizer (prompts are sized with it).
        lengths: prompt lengths in tokens.
        trials: trials per cell.
        trial_seed: base seed of the trial draws (§5.3 rule: trial_seed + trial index + length).
        depths: fixed needle depths (fractions of the filler); None samples the depth per trial.
        max_new_tokens: greedy budget (the first number of the continuation is scored).
        rng: ``"numpy"`` (LongHeads draws) or ``"python"`` (Landmark draws, seeded).
        chunk_size: chunk size for the recorded ``needle_split`` flag (LongHeads' ``is_split``, §5.3).
    """

    name = "passkey"
    version = "1"
    # Trial i of a length is drawn from its own seed (trial_seed + i + length) and a length's trials do not
    # depend on the other lengths: more trials or lengths on resume only add samples.
    extendable_config_keys = ("lengths", "trials")

    def __init__(self, tokenizer: Any, lengths: Sequence[int], trials: int, *, trial_seed: int = 0,
                 depths: Sequence[float] | None = None, max_new_tokens: int = PASSKEY_MAX_NEW_TOKENS,
                 rng: str = "numpy", chunk_size: int = 256) -> None:
        if not lengths:
            raise ValueError("lengths is empty")
        if trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        for d in depths or ():
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"depths must lie in [0, 1], got {d}")
        if rng not in ("numpy", "python"):
            raise ValueError(f"rng must be 'numpy' or 'python', got {rng!r}")
        self.tokenizer = tokenizer
        self.lengths = [int(n) for n in lengths]
        self.trials = int(trials)
        self.trial_seed = int(trial_seed)
        self.depths = None if depths is None else [float(d) for d in depths]
        self.max_new_tokens = int(max_new_tokens)
        self.rng = rng
        self.chunk_size = int(chunk_size)
        self.model: Any = None  # set by the caller before evaluate()

    # -------------------------------------------------------------- samples
    def samples(self) -> list[Sample]:
        """Trials in the order length-major, then depth, then trial index (``--limit`` keeps the short ones)."""
        out: list[Sample] = []
        for length in self.lengths:
            for depth in self.depths if self.depths is not None else [None]:
                for j in range(self.trials):
                    trial = sample_trial(j, length, self.trial_seed, depth=depth, rng=self.rng)  # type: ignore[arg-type]
                    cell = f"len{length}" if depth is None else f"len{length}-depth{depth:g}"
                    out.append({"sample_id": f"{cell}-trial{j}", "length": length, "trial": j,
                                "depth": trial.depth, "depth_mode": "sampled" if depth is None else "fixed",
                                "passkey": trial.passkey, "seed": trial.seed})
        return out

    def build_prompt(self, sample: Mapping[str, Any]) -> Any:
        """The prompt of one sample, of exactly the sample's length where one exists; else (no filler cut reaches
        it, which the protocol filler has not shown) the longest prompt below it, recorded as
        ``exact_length: false`` with a warning, instead of losing the grid cell (as NIAH does)."""
        try:
            prompt = build_passkey_prompt(self.tokenizer, int(sample["length"]), float(sample["depth"]),
                                          int(sample["passkey"]), strict=False)
        except ValueError as exc:
            raise SampleError(sample["sample_id"], f"cannot build the prompt: {exc}") from exc
        if not prompt.exact:
            logger.warning("sample %r: no passkey prompt of exactly %d tokens; using %d tokens",
                           sample["sample_id"], prompt.target_tokens, prompt.n_tokens)
        return prompt

    # -------------------------------------------------------------- predict / aggregate
    def predict(self, batch: list[Sample]) -> list[Record]:
        if self.model is None:
            raise RuntimeError("PasskeyTask.model is not set")
        return [self.predict_one(s) for s in batch]

    def predict_one(self, sample: Sample) -> Record:
        prompt = self.build_prompt(sample)
        timing = greedy_generate(self.model, prompt.input_ids, self.max_new_tokens, eos_ids(self.tokenizer, self.model))
        text = self.tokenizer.decode(timing.new_ids, skip_special_tokens=True)
        answer_ids = passkey_answer_ids(self.tokenizer, prompt.passkey)
        start, end = prompt.needle_token_span
        w = self.chunk_size
        number = re.search(r"\d+", text)
        return {
            "sample_id": sample["sample_id"],
            "length": prompt.n_tokens,
            "target_tokens": prompt.target_tokens,
            "exact_length": prompt.exact,
            "trial": sample["trial"],
            "depth": prompt.depth,
            "depth_mode": sample["depth_mode"],
            "passkey": prompt.passkey,
            "needle_token_span": [start, end],
            "needle_split": (start // w) != ((end - 1) // w),
            "prompt_sha256": prompt.to_record()["prompt_sha256"],
            "continuation": text,
            "first_number": number.group() if number else None,
            "correct": score_first_number(text, prompt.passkey),
            "correct_exact_tokens": score_exact_tokens(timing.new_ids, answer_ids),
            **timing.record_fields(),
        }

    def cell_of(self, record: Mapping[str, Any]) -> str:
        return record["sample_id"].rsplit("-trial", 1)[0]

    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        acc, err = mean_stderr([float(bool(r["correct"])) for r in records])
        metrics["accuracy"], metrics["accuracy_stderr"] = acc, (math.nan if err is None else err)
        metrics["exact_token_accuracy"] = mean_stderr([float(bool(r["correct_exact_tokens"])) for r in records])[0]
        cells: dict[str, list[Record]] = {}
        for r in records:
            cells.setdefault(self.cell_of(r), []).append(r)
        table = {}
        for cell, recs in cells.items():
            summ = cell_summary(recs)
            summ["exact_token_accuracy"] = cell_summary(recs, "correct_exact_tokens")["accuracy"]
            table[cell] = summ
            for key in ("accuracy", "prefill_s_median", "decode_tok_s_median", "peak_rss_bytes_max"):
                metrics[f"{cell}/{key}"] = as_number(summ[key])
        metrics["cells"] = table
        return metrics

    def config(self) -> dict[str, Any]:
        return {
            "protocol": "eval-protocols.md §5 (Landmark prompt texts, LongHeads seeding, token-exact lengths)",
            "prompt_template": "\n".join([TASK_DESCRIPTION, "{prefix filler}", NEEDLE_TEMPLATE, "{suffix filler}",
                                          QUESTION]),
            "filler_unit": FILLER_UNIT,
            "lengths": self.lengths,
            "trials": self.trials,
            "trial_seed": self.trial_seed,
            "seeding": "numpy RandomState(trial_seed + trial + length): prefix=randint(0, length), K=randint(1, 50000)"
            if self.rng == "numpy" else "random.Random(trial_seed + trial + length): randint(0, length), "
                                        "randint(1, 50000)",
            "depths": self.depths if self.depths is not None else "sampled",
            "decoding": {"greedy": True, "max_new_tokens": self.max_new_tokens, "chat_template": False},
            "scorer": "first \\d+ of the continuation == K (Landmark, §5.2); also exact tokens of ' '+K (§5.3)",
            "chunk_size_for_needle_split": self.chunk_size,
        }

    def higher_is_better(self) -> dict[str, bool]:
        return {"accuracy": True, "exact_token_accuracy": True}
