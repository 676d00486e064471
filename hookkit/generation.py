"""``hookkit.generation.generate``: prompts (+ images) in, text out, with whatever interventions are attached.

Most methods need nothing beyond ``model.generate``. Methods that compare against a *reference branch* (VHR
compares every head with and without the image) declare it through ``Intervention.reference_branch(...)``, and
this module runs the branch for them, batched:

* ``"lockstep"`` (faithful VHR, methods-lvlm.md §1.4 step 5): one left-padded batch ``[image rows; no-image rows]``
  is prefilled together, so the intervention sees both branches layer by layer in the same forward and later layers
  already see its edits; the first token comes from that forward; the no-image rows are then dropped from the KV
  cache and decoding continues on the image rows only (verified equal to a plain ``generate`` on every VLM family).
* ``"probe"``: one unmodified forward of both branches first, then an ordinary ``generate`` of the image rows with
  what the probe decided (handed over as per-sample extras).

Timings come from a logits processor that stamps every decoding step, so prefill (time to the first token) and
decode throughput are measured separately for every path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from hookkit import compat
from hookkit.core.session import SESSION_ATTR, Session, get_model_info
from hookkit.errors import InputError
from hookkit.models.base import model_device

_TEXT_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class GenerationResult:
    texts: list[str]
    sequences: torch.Tensor  # [B, prompt + new]
    new_token_ids: list[list[int]]
    prompt_length: int
    timings: dict[str, float] = field(default_factory=dict)
    logits: tuple[torch.Tensor, ...] | None = None  # one [B, vocab] tensor per generated token


class StepTimer(LogitsProcessor):
    """Records the wall time at every decoding step (it is called once per step, after that step's forward)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.device.type == "cuda":
            torch.cuda.synchronize(scores.device)
        self.stamps.append(time.perf_counter())
        return scores


def _timings(start: float, first_token_at: float, stamps: list[float]) -> dict[str, float]:
    """Prefill = start → first token; decode = first token → last token."""
    decode_steps = max(len(stamps) - 1, 0)
    decode_s = stamps[-1] - stamps[0] if decode_steps else 0.0
    return {
        "prefill_s": first_token_at - start,
        "decode_s": decode_s,
        "total_s": (stamps[-1] if stamps else first_token_at) - start,
        "new_tokens": float(len(stamps)),
        "decode_tokens_per_s": decode_steps / decode_s if decode_s > 0 else float("nan"),
    }


def generate(model: torch.nn.Module, processor: Any, prompts: str | Sequence[str],
             images: Image.Image | Sequence[Image.Image | Sequence[Image.Image] | None] | None = None, *,
             max_new_tokens: int = 64, do_sample: bool = False, output_logits: bool = False,
             **generate_kwargs: Any) -> GenerationResult:
    """Generate for a batch of prompts (left-padded), running any reference branch the attached methods need.

    ``images``: per prompt, None (a text-only row), an image, or a list of images (several placeholders, where the
    family allows it); or None / one image for all prompts. Extra keyword arguments go to ``model.generate``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts) if isinstance(prompts, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError("prompts: expected a string or a non-empty list of strings")
    if images is None or isinstance(images, Image.Image):
        images = [images] * len(prompts)
    images = list(images)
    if len(images) != len(prompts):
        raise InputError(f"images: got {len(prompts)} prompts but {len(images)} image entries (one per prompt)")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    session: Session | None = getattr(model, SESSION_ATTR, None)
    info = session.info if session is not None else get_model_info(model)
    gen = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs)
    tokenizer = getattr(processor, "tokenizer", processor)
    gen.setdefault("pad_token_id", tokenizer.pad_token_id)

    reference = _reference_request(session, images)
    if reference is not None:
        result = _generate_with_reference(model, processor, info, session, reference, prompts, images, gen,
                                          output_logits)
    else:
        batch = _checked(info.adapter.build_inputs(processor, prompts, images, device=model_device(model)))
        timer = StepTimer()
        start = time.perf_counter()
        out = model.generate(**batch, **gen, output_logits=output_logits, return_dict_in_generate=True,
                             logits_processor=LogitsProcessorList([timer]))
        stamps = timer.stamps or [time.perf_counter()]
        result = _result(out.sequences, batch["input_ids"].shape[1], tokenizer, out.logits if output_logits else None,
                         _timings(start, stamps[0], stamps), gen)
    return result


def _reference_request(session: Session | None, images: list[Image.Image | None]) -> dict[Any, str] | None:
    if session is None:
        return None
    wanted = {}
    for iv in session.interventions:
        kind = iv.reference_branch()
        if kind is not None:
            wanted[iv] = kind
    if not wanted:
        return None
    if any(im is None or (isinstance(im, (list, tuple)) and not im) for im in images):
        names = sorted({iv.name for iv in wanted})
        raise InputError(f"{', '.join(names)} compare each prompt with and without its image: every prompt needs "
                         "an image (images[i] is None)")
    return wanted


def _generate_with_reference(model: torch.nn.Module, processor: Any, info: Any, session: Session,
                             reference: dict[Any, str], prompts: list[str], images: list[Image.Image | None],
                             gen: dict[str, Any], output_logits: bool) -> GenerationResult:
    n = len(prompts)
    tokenizer = getattr(processor, "tokenizer", processor)
    device = model_device(model)
    paired = _checked(info.adapter.build_inputs(processor, prompts + prompts, images + [None] * n, device=device))
    image_rows = {k: (v[:n] if k in _TEXT_ROW_KEYS else v) for k, v in paired.items()}
    kinds = set(reference.values())
    if len(kinds) > 1:
        raise InputError(f"attached methods ask for different reference modes {sorted(kinds)}; use one")
    kind = kinds.pop()
    start = time.perf_counter()
    timer = StepTimer()
    if kind == "probe":
        # One unmodified forward of [image rows; no-image rows]; the method decides from it, then an ordinary
        # generate of the image rows uses that decision.
        session.next_sample_extras = {iv: {"phase": "probe", "paired_rows": n} for iv in reference}
        with torch.no_grad():
            model(**paired)
        decided = {iv: iv.probe_result(session.states[iv]) for iv in reference}
        session.next_sample_extras = {iv: {"phase": "apply", **decided[iv]} for iv in reference}
        out = model.generate(**image_rows, **gen, output_logits=output_logits, return_dict_in_generate=True,
                             logits_processor=LogitsProcessorList([timer]))
        stamps = timer.stamps or [time.perf_counter()]
        return _result(out.sequences, image_rows["input_ids"].shape[1], tokenizer,
                       out.logits if output_logits else None, _timings(start, stamps[0], stamps), gen)

    # Lock-step: prefill both branches in one forward and take the first token from it.
    session.next_sample_extras = {iv: {"phase": "lockstep", "paired_rows": n} for iv in reference}
    first_gen = {**gen, "max_new_tokens": 1, "min_new_tokens": min(1, gen.get("min_new_tokens") or 0)}
    first = model.generate(**paired, **first_gen, output_logits=True, return_dict_in_generate=True,
                           logits_processor=LogitsProcessorList([timer]))
    rows = torch.arange(n, device=first.sequences.device)
    cache = compat.cache_from_output(first)
    compat.select_cache_rows(cache, rows)
    session.select_rows(rows)
    info.adapter.select_rows(model, rows)
    sequences = first.sequences[:n]
    logits = [first.logits[0][:n]]
    remaining = gen["max_new_tokens"] - 1
    eos = _eos_ids(model, gen)
    if remaining > 0 and not all(int(t) in eos for t in sequences[:, -1]):
        cont = {k: torch.cat([v, torch.full((n, 1), 1 if k == "attention_mask" else 0, dtype=v.dtype,
                                           device=v.device)], dim=1)
                for k, v in image_rows.items() if k in _TEXT_ROW_KEYS and k != "input_ids"}
        rest = {**gen, "max_new_tokens": remaining}
        if gen.get("min_new_tokens"):
            rest["min_new_tokens"] = max(gen["min_new_tokens"] - 1, 0)
        out = info.adapter.continue_generate(model, input_ids=sequences, **compat.with_cache(model, cache), **cont,
                                             **rest, output_logits=output_logits, return_dict_in_generate=True,
                                             logits_processor=LogitsProcessorList([timer]))
        sequences = out.sequences
        if output_logits:
            logits += list(out.logits)
    stamps = timer.stamps
    return _result(sequences, image_rows["input_ids"].shape[1], tokenizer, tuple(logits) if output_logits else None,
                   _timings(start, stamps[0], stamps), gen)


def _checked(batch: Any) -> Any:
    """A batch with at least one real token per row (an empty prompt on a tokenizer with no chat template and no
    BOS token would otherwise reach the model as an empty sequence)."""
    mask = batch.get("attention_mask")
    lengths = mask.sum(dim=1) if mask is not None else torch.full((batch["input_ids"].shape[0],),
                                                                   batch["input_ids"].shape[1])
    empty = [i for i, n in enumerate(lengths.tolist()) if n == 0]
    if empty:
        raise InputError(f"prompts[{empty[0]}]: the prompt is empty after tokenisation (this tokenizer adds no chat "
                         "template and no BOS token); give some text")
    return batch


def _eos_ids(model: torch.nn.Module, gen: dict[str, Any]) -> set[int]:
    eos = gen.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _result(sequences: torch.Tensor, prompt_length: int, tokenizer: Any, logits: Any, timings: dict[str, float],
            gen: dict[str, Any]) -> GenerationResult:
    new = sequences[:, prompt_length:]
    eos = set()
    eos_id = gen.get("eos_token_id", getattr(tokenizer, "eos_token_id", None))
    if eos_id is not None:
        eos = {int(e) for e in (eos_id if isinstance(eos_id, (list, tuple)) else [eos_id])}
    ids = []
    for row in new.tolist():
        kept = []
        for tok in row:  # everything after the first end-of-sequence token is padding
            if tok in eos:
                break
            kept.append(tok)
        ids.append(kept)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    return GenerationResult(texts, sequences, ids, prompt_length, timings, logits)
