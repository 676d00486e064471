"""lm-evaluation-harness plug-in: the ``hookkit`` model, any lm-eval task under a hookkit intervention.

    hookkit harness lm-eval -- --model hookkit \\
        --model_args pretrained=smollm2,method=longheads,param.chunk_size=256 --tasks hookkit_passkey

``HookkitLM`` is lm-eval's own ``HFLM`` (tokenisation, batching, truncation, stop sequences, caching: all
unchanged) around a model loaded by :func:`hookkit.load`, with the recipe attached for the duration of every
``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` call — the pattern of lm-eval's ``steered``
model, with hookkit's registry instead of forward hooks. ``model_args`` syntax: :mod:`hookkit.integrations.common`.

Padding. ``HFLM`` batches loglikelihood requests right-padded with token 0 and calls the model without an
attention mask: harmless for a stock causal model, whose real positions never see the later pad slots. hookkit
methods reason about token regions (padding is a region) and support left padding only (LongHeads refuses
anything else, and its exact-tail window is counted from the end of the row). So while a recipe is attached, every
padded batch is re-laid out left-padded with an attention mask and position ids that count real tokens only —
what :func:`hookkit.generation.generate` does — and the logits are shifted back into the layout ``HFLM`` expects.
Each row's real length comes from the requests of the current call (the harness's own truncation rule applied to
context + continuation). Without a recipe nothing is re-laid out: the plug-in is then ``HFLM`` itself.

Registered with ``@register_model("hookkit")`` on import. lm-eval 0.4.13 resolves ``--model`` through a static
table and never reads the ``lm_eval.models`` entry point, so ``hookkit harness lm-eval`` imports this module
before handing the arguments to lm-eval's CLI; the entry point is declared for releases that read it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from hookkit.errors import ConfigError
from hookkit.integrations.common import (
    HarnessModelArgs,
    SessionScope,
    load_for_harness,
    missing_harness_message,
    provenance,
    split_model_args,
)

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # pragma: no cover - exercised only without the harness
    raise ImportError(missing_harness_message("lm_eval", "lm-eval")) from exc

log = logging.getLogger(__name__)

__all__ = ["HookkitLM", "MODEL_NAME"]

MODEL_NAME = "hookkit"
#: Families whose text positions come from the attention mask inside the model (M-RoPE): no position_ids passed.
_MASK_POSITION_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@register_model(MODEL_NAME)
class HookkitLM(HFLM):
    """lm-eval's ``HFLM`` on a ``hookkit.load``-ed model, with a hookkit recipe attached during every request."""

    def __init__(self, pretrained: str, device: str | None = None, **kwargs: Any) -> None:
        spec = split_model_args({"pretrained": pretrained, **kwargs})
        if spec.recipe is not None:
            _refuse_reference_branch(spec)
        rest = dict(spec.rest)
        if rest.pop("backend", "causal") not in ("causal", "default"):
            raise ConfigError("model_args.backend", "hookkit models are decoder-only", ["causal"])
        _check_hflm_options(rest)
        model, processor = load_for_harness(spec, device)
        tokenizer = getattr(processor, "tokenizer", processor)
        super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", **rest)
        self.hookkit_args: HarnessModelArgs = spec
        self.processor = processor
        self.scope = SessionScope(model, spec.recipe)
        self._row_inputs: set[tuple[int, ...]] | None = None
        import hookkit

        self._family = hookkit.get_model_info(model).family
        self._warned_unmatched = False

    # ------------------------------------------------------------------ requests, each inside the session
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        with self.scope():
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        with self.scope():
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        with self.scope():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        # The model inputs HFLM will build for these requests (its truncation rule), so that _model_call can tell
        # every right-padded row's real length.
        self._row_inputs = {tuple((ctx + cont)[-(self.max_length + 1):][:-1]) for _, ctx, cont in requests}
        try:
            with self.scope():
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._row_inputs = None

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.scope.active or attn_mask is not None or labels is not None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        lengths = self._row_lengths(inps)
        width = inps.shape[1]
        if all(n == width for n in lengths):
            return super()._model_call(inps)
        return self._left_padded_call(inps, lengths)

    def _row_lengths(self, inps: torch.Tensor) -> list[int]:
        """Real length of every right-padded row: the longest prefix that is one of this call's inputs and is
        followed by pad zeros only."""
        width = inps.shape[1]
        lengths = []
        for row in inps.tolist():
            zeros = 0
            while zeros < width and row[width - 1 - zeros] == 0:
                zeros += 1
            found = None
            if self._row_inputs is not None:
                for n in range(width, width - zeros - 1, -1):
                    if tuple(row[:n]) in self._row_inputs:
                        found = n
                        break
            if found is None:  # not one of this call's inputs (a subclass or another caller): trailing zeros are pad
                if not self._warned_unmatched and zeros:
                    log.warning("hookkit: a loglikelihood row was not found among the call's inputs; its trailing "
                                "zeros are taken as padding")
                    self._warned_unmatched = True
                found = width - zeros if zeros < width else width
            lengths.append(found)
        return lengths

    def _left_padded_call(self, inps: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        batch, width = inps.shape
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full_like(inps, pad_id)
        mask = torch.zeros_like(inps)
        for r, n in enumerate(lengths):
            ids[r, width - n:] = inps[r, :n]
            mask[r, width - n:] = 1
        kwargs: dict[str, Any] = {"attention_mask": mask}
        if self._family not in _MASK_POSITION_FAMILIES:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with (
            torch.no_grad(),
            torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                           enabled=self.mixed_precision_dtype is not None),
        ):
            logits = self.model(input_ids=ids, **kwargs).logits
        out = torch.empty_like(logits)
        for r, n in enumerate(lengths):
            out[r, :n] = logits[r, width - n:]
            out[r, n:] = 0.0  # pad positions: HFLM never reads them
        return out

    # ------------------------------------------------------------------ provenance
    def get_model_info(self) -> dict[str, Any]:
        """``results["config"]`` additions: sizes plus the ``hookkit`` block (recipe and its hash); no Hub calls."""
        model = self._model
        return {
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(getattr(model, "dtype", "")),
            "model_revision": None,
            "model_sha": "",
            "hookkit": provenance(self.hookkit_args, model, "lm-eval"),
        }


#: HFLM options that only apply when HFLM loads the checkpoint itself (hookkit.load does it here).
_LOADING_OPTIONS = ("revision", "subfolder", "tokenizer", "trust_remote_code", "use_fast_tokenizer", "parallelize",
                    "max_memory_per_gpu", "max_cpu_memory", "offload_folder", "tp_plan", "peft", "delta", "autogptq",
                    "gptqmodel", "gguf_file")


def _check_hflm_options(options: dict[str, Any]) -> None:
    """HFLM silently ignores unknown keyword arguments when it is handed a loaded model, so a typo in model_args
    (``methd=vhr``) would run the stock model; refuse unknown and loading-only options instead."""
    import inspect

    accepted = set(inspect.signature(HFLM.__init__).parameters) - {"self", "pretrained", "kwargs"}
    allowed = sorted((accepted - set(_LOADING_OPTIONS)) | {"recipe", "method", "param.<name>", "allow_stacking",
                                                           "dtype", "attn_implementation", "device_map", "adapter"})
    for key in sorted(options):
        if key in _LOADING_OPTIONS:
            raise ConfigError(f"model_args.{key}", "not available with the hookkit model (hookkit.load loads the "
                              "checkpoint; use adapter= for a hookkit adapter)")
        if key not in accepted:
            raise ConfigError(f"model_args.{key}", "unknown option for the hookkit model", allowed)


def _refuse_reference_branch(spec: HarnessModelArgs) -> None:
    """Methods with a reference branch (VHR compares each prompt with its no-image version) need images, which
    lm-eval's text requests do not carry."""
    assert spec.recipe is not None
    needing = sorted({iv.name for iv in spec.recipe.build_interventions() if iv.reference_branch() is not None})
    if needing:
        raise ConfigError("model_args.method", f"{', '.join(needing)} compares every prompt with and without its "
                          "image; lm-eval requests carry no image: run it with `hookkit harness lmms-eval`")
