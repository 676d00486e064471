"""Timed greedy decoding of one prompt with the KV cache (prefill and decode measured apart), and EOS ids."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hookkit import compat
from hookkit.errors import check_int
from hookkit.evals.memory import PeakMemory


@dataclass
class GenerationTiming:
    new_ids: list[int]
    prefill_s: float  # one forward over the prompt (produces the first new token)
    decode_s: float  # the cached forwards that produced the other new tokens
    peak_rss_bytes: int | None
    cuda_peak_bytes: int | None

    @property
    def decode_tok_s(self) -> float | None:
        n = len(self.new_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else None

    def record_fields(self) -> dict[str, Any]:
        """Volatile (``_``-prefixed, excluded from the task hash) timing and memory fields of a record."""
        out: dict[str, Any] = {"_prefill_s": self.prefill_s, "_decode_s": self.decode_s,
                               "_decode_tok_s": self.decode_tok_s, "_peak_rss_bytes": self.peak_rss_bytes}
        if self.cuda_peak_bytes is not None:
            out["_cuda_peak_bytes"] = self.cuda_peak_bytes
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy_generate(model: Any, input_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                    eos_token_ids: Iterable[int] = (), min_new_tokens: int = 0) -> GenerationTiming:
    """Greedy decoding of one prompt with prefill and decode timed separately (batch 1, KV cache).

    The prefill asks for the last position's logits only (``logits_to_keep=1``: at 32k tokens the full logits of
    a 49k vocabulary would take gigabytes; transformers-v5.md §9.1). Stops early at an EOS id. Works with any
    attached hookkit session (every forward goes through the model's own ``forward``).

    ``min_new_tokens``: the EOS ids cannot be chosen for the first ``min_new_tokens`` new tokens (their logits are
    set to −inf before the argmax), as ``generate(min_new_tokens=...)`` does.
    """
    from hookkit.models.base import model_device

    device = model_device(model)
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor([list(input_ids)], dtype=torch.long)
    ids = ids.to(device)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"greedy_generate takes one prompt, got input_ids of shape {tuple(ids.shape)}")
    eos = {int(t) for t in eos_token_ids}
    check_int("min_new_tokens", min_new_tokens, low=0)
    eos_index = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    new: list[int] = []

    def pick(logits: torch.Tensor) -> torch.Tensor:
        """Greedy choice from ``[1, vocab]`` logits; EOS masked while fewer than min_new_tokens are out."""
        if len(new) < min_new_tokens and eos_index.numel():
            logits = logits.index_fill(-1, eos_index, float("-inf"))
        return logits.argmax(-1)

    with PeakMemory() as mem, torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        nxt = pick(out.logits[:, -1])
        new.append(int(nxt))
        _sync(device)
        prefill_s = time.perf_counter() - t0
        cache = compat.cache_from_output(out)
        del out
        t1 = time.perf_counter()
        while len(new) < max_new_tokens and new[-1] not in eos:
            out = model(input_ids=nxt[:, None], **compat.with_cache(model, cache), use_cache=True)
            nxt = pick(out.logits[:, -1])
            new.append(int(nxt))
            cache = compat.cache_from_output(out)
        _sync(device)
        decode_s = time.perf_counter() - t1
        del cache
    return GenerationTiming(new, prefill_s, decode_s, mem.peak_rss, mem.cuda_peak)


def eos_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """EOS ids from the generation config (may be a list) or the tokenizer."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    if isinstance(value, int):
        ids.append(value)
    elif isinstance(value, (list, tuple)):
        ids.extend(int(v) for v in value)
    return ids
