"""What the lm-eval and lmms-eval plug-ins share: ``model_args`` -> hookkit load options and recipe, the session
scope every harness call runs in, and the provenance record written into the harness's results.

``model_args`` syntax (both harnesses split it on ``,`` and ``=``)::

    pretrained=<alias | folder | hub id>      what hookkit.load takes (tiny-llama, smollm2, llava, ./ckpt, org/name)
    recipe=<path.json>                        a recipe file (its safetensors beside it), or
    method=<name>,param.<key>=<value>,...     one method and its parameters (``hookkit list`` shows them)
    allow_stacking=true | site1;site2         only with method= (a recipe carries its own)
    dtype=auto|float32|bfloat16|float16       hookkit.load dtype (default auto: the checkpoint's dtype)
    attn_implementation=sdpa|eager            base attention backend (default sdpa)
    device_map=auto|cpu|...                   accelerate device map; device=cuda:0 moves the model instead
    adapter=<folder>                          an adapter saved by ``hookkit tune``

Parameter values: the harness has already turned ``2`` into an int, ``2.5`` into a float and ``true`` into a bool;
a string value is read as JSON when it parses, else kept as a string. Lists cannot contain ``,`` (the harness's
separator), so list items are separated by ``;``: ``param.layers=1;2;3``. Anything more involved belongs in a
recipe file. With neither ``recipe`` nor ``method`` the plug-in is the stock model (no hooks at all).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError

log = logging.getLogger(__name__)

#: model_args keys the plug-ins consume themselves; everything else goes to the harness's own model class.
LOAD_KEYS = ("dtype", "attn_implementation", "device_map", "adapter")
PARAM_PREFIX = "param."


def parse_param_value(value: Any) -> Any:
    """A ``param.<key>`` value as hookkit expects it (see the module docs for the ``;`` list rule)."""
    if not isinstance(value, str):
        return value
    if ";" in value:
        return [parse_param_value(item) for item in value.split(";") if item.strip() != ""]
    text = value.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "none":
            return None
        return text


def _parse_allow_stacking(value: Any) -> bool | list[str]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        return [s.strip() for s in value.split(";") if s.strip()]
    raise ConfigError("allow_stacking", f"expected true/false or site1;site2, got {value!r}")


@dataclass
class HarnessModelArgs:
    """``model_args`` split into what hookkit consumes and what goes on to the harness."""

    pretrained: str
    recipe: Recipe | None
    recipe_source: str | None  # "recipe=<path>" or "method=<name>" (for the provenance record)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    rest: dict[str, Any] = field(default_factory=dict)


def split_model_args(kwargs: Mapping[str, Any]) -> HarnessModelArgs:
    """Pop hookkit's keys from the harness's parsed ``model_args``; unknown methods and parameter names fail here,
    before any model is loaded."""
    args = dict(kwargs)
    pretrained = args.pop("pretrained", None)
    if not pretrained or not isinstance(pretrained, str):
        raise ConfigError("model_args.pretrained", "required: a model alias (`hookkit list`), folder or hub id")
    recipe_path = args.pop("recipe", None)
    method = args.pop("method", None)
    stacking = args.pop("allow_stacking", None)
    params = {key[len(PARAM_PREFIX):]: parse_param_value(args.pop(key)) for key in list(args)
              if key.startswith(PARAM_PREFIX)}
    load_kwargs = {key: args.pop(key) for key in LOAD_KEYS if key in args}

    if recipe_path is not None and method is not None:
        raise ConfigError("model_args.recipe", "give either recipe=<file> or method=<name>, not both")
    recipe: Recipe | None = None
    source: str | None = None
    if recipe_path is not None:
        if params or stacking is not None:
            raise ConfigError("model_args.param", "parameters and allow_stacking come from the recipe file when "
                              "recipe= is given")
        recipe = Recipe.load(str(recipe_path))
        source = f"recipe={recipe_path}"
    elif method is not None:
        recipe = Recipe.single(str(method), params)
        if stacking is not None:
            recipe.allow_stacking = _parse_allow_stacking(stacking)
        source = f"method={method}"
    elif params or stacking is not None:
        raise ConfigError("model_args.param", "param.* / allow_stacking given without method=")
    if recipe is not None:
        recipe.build_interventions()  # unknown method or parameter names fail here, before the model loads
    return HarnessModelArgs(str(pretrained), recipe, source, load_kwargs, args)


def load_for_harness(spec: HarnessModelArgs, device: str | None) -> tuple[torch.nn.Module, Any]:
    """``hookkit.load`` with the model_args options; ``device`` (the harness's ``--device``) moves the model when no
    ``device_map`` placed it."""
    import hookkit

    kwargs = dict(spec.load_kwargs)
    kwargs.setdefault("attn_implementation", "sdpa")
    model, processor = hookkit.load(spec.pretrained, **kwargs)
    if device and kwargs.get("device_map") is None:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            # lm-eval's default --device is cuda:0; its HF model falls back to the CPU in the same way.
            log.warning("hookkit: device %r requested but CUDA is not available; staying on the CPU", device)
        else:
            model.to(target)
    if spec.recipe is not None:
        mismatch = spec.recipe.check_model(hookkit.get_model_info(model).fingerprint())
        if mismatch:
            raise ConfigError("model_args.recipe", "made for another model: " + "; ".join(mismatch))
        # Bind once now so that a method that does not apply to this model (VHR on a text-only model, a layer out of
        # range) fails at load time with hookkit's message, not in the middle of the harness's first request.
        with hookkit.attach(model, spec.recipe):
            pass
    return model, processor


def provenance(spec: HarnessModelArgs, model: torch.nn.Module, harness: str) -> dict[str, Any]:
    """The ``hookkit`` block of the harness results: model, load options and the intervention with its hash.

    ``intervention`` has the shape ``hookkit eval`` writes (``recipe``, ``recipe_hash``, ``model_fingerprint``),
    so a harness run and a hookkit run of the same recipe can be matched by ``recipe_hash``.
    """
    import hookkit
    from hookkit.evals.files import sha256_of
    from hookkit.evals.results import intervention_record

    fingerprint = hookkit.get_model_info(model).fingerprint()
    intervention = intervention_record(spec.recipe, model)
    return {
        "hookkit_version": hookkit.__version__,
        "harness": harness,
        "model": spec.pretrained,
        "load": {k: str(v) for k, v in spec.load_kwargs.items()},
        "model_fingerprint": fingerprint,
        "intervention_source": spec.recipe_source,
        "intervention": intervention,
        "intervention_hash": sha256_of(intervention) if intervention is not None else None,
    }


class SessionScope:
    """Attaches the recipe for the duration of one harness call and detaches it afterwards.

    Why per call rather than for the model's lifetime: between calls the harness (and anything else holding the
    model) sees the stock model, and a call that raises leaves nothing attached. Re-entrant, because the harness's
    public methods call each other (``loglikelihood_rolling`` -> ``_loglikelihood_tokens``).
    """

    def __init__(self, model: torch.nn.Module, recipe: Recipe | None) -> None:
        self.model = model
        self.recipe = recipe
        self.session: Any = None
        self._depth = 0
        self.calls = 0  # harness calls that ran with the recipe attached (tests and logs)

    @property
    def active(self) -> bool:
        return self.session is not None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Any]:
        if self.recipe is None:
            yield None
            return
        if self._depth == 0:
            import hookkit

            self.session = hookkit.attach(self.model, self.recipe)
            self.calls += 1
        self._depth += 1
        try:
            yield self.session
        finally:
            self._depth -= 1
            if self._depth == 0:
                session, self.session = self.session, None
                session.detach()


def missing_harness_message(package: str, extra: str) -> str:
    return (f"{package} is not installed; install it with `pip install 'hookkit[{extra}]'` "
            f"(see docs/harnesses.md for the lean install used in CI)")
