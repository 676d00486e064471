"""lmms-eval plug-in: the ``hookkit`` model, any lmms-eval task (images + text) under a hookkit intervention.

    hookkit harness lmms-eval -- --model hookkit --model_args pretrained=llava,method=vhr,param.alpha=2 \\
        --tasks hookkit_pope --batch_size 4

Generation goes through :func:`hookkit.generation.generate` itself: the model family's processor and chat template,
left-padded batches, and the reference branch of methods that compare against one (VHR prefills every prompt
together with its no-image version in lock-step, inside this call). So a task run here and the same samples run by
``hookkit eval pope`` produce the same tokens. ``model_args`` syntax: :mod:`hookkit.integrations.common`.

What reaches the model:

* the request's context (lmms-eval's ``doc_to_text``), with any literal ``<image>`` removed, becomes the user
  turn; the family adapter places the image where the chat template wants it;
* ``doc_to_visual`` gives no image (a text-only row), one image, or several images (placeholders in order, where
  the family's processor takes several; the adapter says when it does not); video and audio are refused with an
  error rather than silently dropped;
* ``generation_kwargs``: ``max_new_tokens`` (default 128, lmms-eval's POPE value), ``temperature`` / ``do_sample`` /
  ``top_p`` / ``top_k`` / ``num_beams`` and a few other HF generate options; ``until`` strings cut the decoded text
  afterwards (as lmms-eval's own models do), other keys are ignored with a warning.

``loglikelihood``: the continuation is appended to the chat-formatted prompt and scored in the same forward, as
lmms-eval's HF models do; with a reference-branch method (VHR), whose decision is taken at the last prompt token,
the prompt is first prefilled with its no-image twin in lock-step (as at generation) and the continuation is then
teacher-forced through the KV cache of the image row.

``generate_until_multi_round`` follows lmms-eval's protocol for simple models: round 0 is the request's context,
later rounds come from the task's ``doc_to_text(doc, previous_output=..., round_idx=...)`` until it signals the end.

lmms-eval 0.7.3 does not copy the model's information into its results file, so ``hookkit harness lmms-eval`` adds
the ``hookkit`` block (recipe and hash) to ``results["config"]`` itself (:func:`add_provenance`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from hookkit import compat
from hookkit.errors import ConfigError, InputError
from hookkit.integrations.common import (
    HarnessModelArgs,
    SessionScope,
    load_for_harness,
    missing_harness_message,
    provenance,
    split_model_args,
)

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as exc:  # pragma: no cover - exercised only without the harness
    raise ImportError(missing_harness_message("lmms_eval", "lmms-eval")) from exc

log = logging.getLogger(__name__)

__all__ = ["HookkitLMMS", "MODEL_NAME", "add_provenance", "register"]

MODEL_NAME = "hookkit"
DEFAULT_MAX_NEW_TOKENS = 128
_TEXT_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_MASK_POSITION_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
#: generation_kwargs passed on to ``model.generate`` (besides max_new_tokens / do_sample / temperature / top_p).
_PASSED_GEN_KEYS = ("top_k", "num_beams", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
                    "min_new_tokens")
#: generation_kwargs that only matter to other backends (nothing to do here).
_IGNORED_GEN_KEYS = ("image_aspect_ratio", "use_cache", "max_length", "modalities")

_instances: weakref.WeakSet[HookkitLMMS] = weakref.WeakSet()
#: What one request gives the model: no image, an image, or several images.
Visual = Image.Image | list[Image.Image] | None


class HookkitLMMS(lmms):
    """lmms-eval model: ``hookkit.load`` + ``hookkit.generation.generate`` with a recipe attached per call."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        spec = split_model_args({"pretrained": pretrained, **kwargs})
        if spec.rest:
            raise ConfigError(f"model_args.{sorted(spec.rest)[0]}", "unknown option for the hookkit model",
                              ["pretrained", "recipe", "method", "param.<name>", "allow_stacking", "dtype",
                               "attn_implementation", "device_map", "adapter"])
        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise ConfigError("batch_size", f"expected a positive integer, got {batch_size!r}") from None
        if self.batch_size_per_gpu < 1:
            raise ConfigError("batch_size", f"expected a positive integer, got {batch_size!r}")
        import hookkit

        self.hookkit_args: HarnessModelArgs = spec
        self._model, self.processor = load_for_harness(spec, device)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.info = hookkit.get_model_info(self._model)
        self.scope = SessionScope(self._model, spec.recipe)
        # Computed now: lmms-eval's clean() deletes the model attribute before the results are written.
        self._provenance = provenance(spec, self._model, "lmms-eval")
        self._warned_keys: set[str] = set()
        _instances.add(self)

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batches of ``batch_size`` requests with equal generation_kwargs, in request order, through
        :func:`hookkit.generation.generate` with the recipe attached."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items(), key=lambda kv: kv[0])), []).append(i)
        with self.scope():
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start:start + self.batch_size]
                    args = [requests[i].args for i in chunk]
                    prompts = [_clean_context(a[0]) for a in args]
                    images = [self._request_visual(a[2], a[3], a[4], a[5]) for a in args]
                    texts = self._generate(prompts, images, dict(args[0][1]))
                    for i, text in zip(chunk, texts):
                        out[i] = text
        return [t if t is not None else "" for t in out]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """lmms-eval's multi-round protocol for simple models, one request at a time."""
        results = []
        with self.scope():
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                image = self._request_visual(doc_to_visual, doc_id, task, split)
                prompt = _clean_context(context)
                rounds: list[str] = []
                previous_info = None
                round_idx = 0
                while True:
                    if round_idx > 0:
                        visuals, prompt, terminal, _, previous_info = doc_to_text(
                            doc, previous_output=list(rounds), round_idx=round_idx,
                            previous_round_info=previous_info)
                        if terminal:
                            break
                        image = _visual_input(visuals, where=f"{task}[{doc_id}] round {round_idx}")
                        prompt = _clean_context(prompt)
                    rounds.extend(self._generate([prompt], [image], dict(gen_kwargs)))
                    round_idx += 1
                results.append(rounds)
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(sum of log-probabilities of the continuation, whether greedy decoding gives it)`` per request."""
        out = []
        with self.scope() as session:
            for request in requests:
                context, target, doc_to_visual, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                if isinstance(continuation, list):  # doc_to_target may give the list of acceptable answers
                    continuation = continuation[0]
                image = _visual_input(doc_to_visual(doc) if doc_to_visual is not None else [],
                                      where=f"{task}[{doc_id}]")
                out.append(self._score(session, _clean_context(context), image, str(continuation)))
        return out

    # ------------------------------------------------------------------ internals
    def _request_visual(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Visual:
        if doc_to_visual is None:
            return None
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return _visual_input(visuals, where=f"{task}[{doc_id}]")

    def _generate(self, prompts: list[str], images: list[Visual], gen_kwargs: dict[str, Any]) -> list[str]:
        from hookkit.generation import generate

        max_new_tokens, kwargs, until = self._generation_kwargs(gen_kwargs)
        result = generate(self._model, self.processor, prompts, images, max_new_tokens=max_new_tokens, **kwargs)
        return [_cut_at(text, until) for text in result.texts]

    def _generation_kwargs(self, gen: dict[str, Any]) -> tuple[int, dict[str, Any], list[str]]:
        until = gen.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_new_tokens = int(gen.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        temperature = gen.pop("temperature", None)
        top_p = gen.pop("top_p", None)
        do_sample = gen.pop("do_sample", None)
        if do_sample is None:
            do_sample = bool(temperature) and float(temperature) > 0
        kwargs: dict[str, Any] = {"do_sample": bool(do_sample)}
        if do_sample:
            if temperature is not None:
                kwargs["temperature"] = float(temperature)
            if top_p is not None:
                kwargs["top_p"] = float(top_p)
        for key in _PASSED_GEN_KEYS:
            if key in gen:
                kwargs[key] = gen.pop(key)
        if kwargs.get("num_beams") == 1:
            del kwargs["num_beams"]
        for key in sorted(set(gen) - set(_IGNORED_GEN_KEYS) - self._warned_keys):
            log.warning("hookkit lmms-eval model: generation_kwargs[%r] is not supported and is ignored", key)
            self._warned_keys.add(key)
        return max_new_tokens, kwargs, list(until)

    def _score(self, session: Any, prompt: str, image: Visual, continuation: str) -> tuple[float, bool]:
        cont = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if cont.numel() == 0:
            raise InputError(f"continuation {continuation!r} has no tokens")
        device = next(self._model.parameters()).device
        cont = cont.to(device)
        reference = _reference_kind(session)
        with torch.no_grad():
            if reference is None:
                logits = self._score_one_forward(prompt, image, cont, device)
            else:
                logits = self._score_with_reference(session, reference, prompt, image, cont, device)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        total = float(logprobs.gather(-1, cont[:, None]).sum())
        greedy = bool((logits.argmax(-1) == cont).all())
        return total, greedy

    def _score_one_forward(self, prompt: str, image: Visual, cont: torch.Tensor,
                           device: torch.device) -> torch.Tensor:
        """Logits predicting every continuation token ``[n_cont, vocab]`` from one forward of prompt + continuation."""
        batch = self.info.adapter.build_inputs(self.processor, [prompt], [image], device=device)
        n = cont.numel()
        inputs = dict(batch)
        for key in _TEXT_ROW_KEYS:
            if key in inputs:
                fill = cont[None] if key == "input_ids" else torch.full((1, n), 1 if key == "attention_mask" else 0,
                                                                         dtype=inputs[key].dtype, device=device)
                inputs[key] = torch.cat([inputs[key], fill.to(inputs[key].dtype)], dim=1)
        logits = self._model(**inputs).logits[0]
        return logits[-n - 1:-1]

    def _score_with_reference(self, session: Any, kind: str, prompt: str, image: Visual,
                              cont: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Prefill the prompt with its no-image twin as :func:`hookkit.generation.generate` does (lock-step, or
        probe then apply), then teacher-force the continuation through the image row's KV cache."""
        if image is None:
            names = sorted({iv.name for iv in session.interventions if iv.reference_branch() is not None})
            raise InputError(f"{', '.join(names)} compare each prompt with and without its image: this request "
                             "has no image")
        adapter = self.info.adapter
        paired = adapter.build_inputs(self.processor, [prompt, prompt], [image, None], device=device)
        image_row = {k: (v[:1] if k in _TEXT_ROW_KEYS else v) for k, v in paired.items()}
        wanted = [iv for iv in session.interventions if iv.reference_branch() is not None]
        rows = torch.arange(1, device=device)
        if kind == "lockstep":
            session.next_sample_extras = {iv: {"phase": "lockstep", "paired_rows": 1} for iv in wanted}
            out = self._model(**paired, use_cache=True)
            cache = compat.cache_from_output(out)
            compat.select_cache_rows(cache, rows)
            session.select_rows(rows)
            adapter.select_rows(self._model, rows)
            first = out.logits[0, -1:]
        else:  # probe: one unmodified forward of both rows, then the image row with the decision
            session.next_sample_extras = {iv: {"phase": "probe", "paired_rows": 1} for iv in wanted}
            self._model(**paired)
            decided = {iv: iv.probe_result(session.states[iv]) for iv in wanted}
            session.next_sample_extras = {iv: {"phase": "apply", **decided[iv]} for iv in wanted}
            out = self._model(**image_row, use_cache=True)
            cache = compat.cache_from_output(out)
            first = out.logits[0, -1:]
        if cont.numel() == 1:
            return first
        mask = image_row["attention_mask"]
        step = cont[None, :-1]
        new_mask = torch.cat([mask, torch.ones_like(step, dtype=mask.dtype)], dim=1)
        extra: dict[str, Any] = {}
        if self.info.family not in _MASK_POSITION_FAMILIES:
            extra["position_ids"] = (new_mask.cumsum(-1) - 1)[:, -step.shape[1]:]
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in image_row:
                extra[key] = torch.zeros_like(step, dtype=image_row[key].dtype)
        rest = self._model(input_ids=step, attention_mask=new_mask, use_cache=True,
                           **compat.with_cache(self._model, cache), **extra).logits[0]
        return torch.cat([first, rest], dim=0)

    # ------------------------------------------------------------------ provenance
    def hookkit_info(self) -> dict[str, Any]:
        """The ``hookkit`` block of the results: model, load options, recipe and its hash."""
        return dict(self._provenance)


def _reference_kind(session: Any) -> str | None:
    if session is None:
        return None
    kinds = {iv.reference_branch() for iv in session.interventions} - {None}
    if len(kinds) > 1:
        raise InputError(f"attached methods ask for different reference modes {sorted(kinds)}; use one")
    return kinds.pop() if kinds else None


def _clean_context(context: Any) -> str:
    if not isinstance(context, str):
        raise InputError(f"expected a text context, got {type(context).__name__}")
    return context.replace("<image>\n", "").replace("<image>", "")


def _visual_input(visuals: Any, *, where: str) -> Visual:
    """``doc_to_visual``'s list as :func:`hookkit.generation.generate` takes it: None, one image or a list of images
    (the family adapter checks how many its processor accepts). Video and audio have no hookkit path."""
    items = [v for v in (visuals or []) if v is not None]
    for item in items:
        if not isinstance(item, Image.Image):
            raise InputError(f"{where}: the hookkit model takes images only, got {type(item).__name__} "
                             f"({str(item)[:60]!r})")
    items = [im if im.mode == "RGB" else im.convert("RGB") for im in items]
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def _cut_at(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def add_provenance(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """Add the ``hookkit`` block of the (single) live hookkit model to ``results["config"]``."""
    if not results or "config" not in results:
        return results
    live = list(_instances)
    if len(live) == 1:
        results["config"]["hookkit"] = live[0].hookkit_info()
    return results


def register() -> None:
    """Make ``--model hookkit`` resolvable in this process (the entry point does the same for installs)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from hookkit.integrations.entry_points import lmms_eval_manifest

    MODEL_REGISTRY_V2.register_manifest(lmms_eval_manifest(), overwrite=True)
