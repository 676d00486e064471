"""Trainable adapters as hookkit interventions, and their PEFT-style folders.

**Adapters as interventions.** MoH, ALoRA and plain LoRA are ordinary hookkit interventions (dataclasses whose
fields are their parameters). Their trainable weights live in a ``torch.nn.Module`` the intervention owns
(``AdapterIntervention.build``), never registered into the base model: the base weights stay untouched, and
``detach`` restores the model exactly. ``tensors()`` / ``load_tensors()`` carry the weights in recipes.

**Adapter folders** follow PEFT's layout::

    DIR/adapter_config.json        method, params, base-model fingerprint, hookkit version, tensor shapes
    DIR/adapter_model.safetensors  the adapter weights (keys "0.<tensor name>", see below)
    DIR/recipe.json                a hookkit recipe pointing at the same safetensors file

The weight keys carry the recipe's method-index prefix ``0.`` so that ``adapter_model.safetensors`` is at the same
time the tensor file of ``recipe.json``: ``hookkit apply --recipe DIR/recipe.json`` and
``hookkit.attach(model, Recipe.load("DIR/recipe.json"))`` work without a second copy of the weights. Nothing is
pickled: JSON plus ``safetensors``.

**Loading semantics.** ``load_adapter(model, DIR)`` (what ``hookkit.load(..., adapter=DIR)`` calls) validates the
folder completely (files, JSON, method, parameters, tensor names and shapes, base-model fingerprint) *before*
touching the model, then attaches a hookkit session that stays attached: the returned model is the same object
with the adapter active, the session is ``model._hookkit_session``, and ``unload_adapter(model)`` (or
``model._hookkit_session.detach()``) restores the stock model exactly. While the adapter session is attached no
second session can be attached; to combine an adapter with other methods, load the model without ``adapter=`` and
attach one recipe listing all of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hookkit.core.intervention import Intervention
from hookkit.errors import ConfigError, InputError

if TYPE_CHECKING:
    from hookkit.models.base import ModelInfo

log = logging.getLogger(__name__)

ADAPTER_FORMAT = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
RECIPE_NAME = "recipe.json"
KEY_PREFIX = "0."  # the recipe's method index (one method per adapter folder)
#: fingerprint keys that must match between the adapter's base model and the model it is loaded into
SHAPE_KEYS = ("family", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")


class AdapterIntervention(Intervention):
    """Base class of interventions with trainable weights (MoH routers and LoRA deltas, ALoRA, LoRA).

    Subclasses implement ``_build_modules(info)``, returning a fresh, deterministically initialised module tree
    whose ``state_dict`` keys are the adapter's tensor names. ``bind`` of a subclass calls ``build(info)``.
    """

    # ------------------------------------------------------------------ to implement
    def _build_modules(self, info: ModelInfo) -> nn.Module:
        raise NotImplementedError

    def auxiliary_loss(self, state: Any) -> torch.Tensor | None:
        """Extra training loss of the last forward (MoH's load-balance term), already weighted; None if none."""
        return None

    # ------------------------------------------------------------------ module ownership
    @property
    def adapter_module(self) -> nn.Module:
        module = getattr(self, "_adapter", None)
        if module is None:
            raise RuntimeError(f"{self.name}: the adapter weights are not built yet; attach it to a model "
                               "(or call build(get_model_info(model))) first")
        return module

    @property
    def is_built(self) -> bool:
        return getattr(self, "_adapter", None) is not None

    def build(self, info: ModelInfo) -> nn.Module:
        """Create the trainable modules for ``info`` (once; later calls return the same modules).

        The modules are created on the model's device in float32 from the method's ``seed``; tensors given earlier
        through ``load_tensors`` replace the initial values (with a clear error on missing, unexpected or
        mis-shaped tensors). The base model is not modified.
        """
        from hookkit.models.base import model_device

        signature = tuple(info.fingerprint()[k] for k in SHAPE_KEYS)
        if self.is_built:
            if getattr(self, "_built_for", None) != signature:
                raise ConfigError(self.name, "these adapter weights were built for a different model "
                                  f"({dict(zip(SHAPE_KEYS, self._built_for))}); create a new instance")
            return self._adapter
        module = self._build_modules(info)
        pending = getattr(self, "_pending_tensors", None)
        if pending:
            _load_state(self.name, module, pending)
            self._pending_tensors = None
        # Evaluation mode: the adapter's dropout is off unless a trainer switches it on (``adapter_module.train()``);
        # the modules are not children of the model, so ``model.train()`` does not reach them.
        module.to(model_device(info.model)).eval()
        self._adapter, self._built_for = module, signature
        return module

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.is_built:
            return {k: v.detach() for k, v in self._adapter.state_dict().items()}
        return dict(getattr(self, "_pending_tensors", None) or {})

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the adapter weights (from a recipe or an adapter folder); checked against the built shapes."""
        if self.is_built:
            _load_state(self.name, self._adapter, tensors)
        else:
            self._pending_tensors = dict(tensors)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter_module.parameters() if p.requires_grad)

    def select_rows(self, state: Any, rows: torch.Tensor) -> Any:
        return state


def _load_state(method: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    check_tensor_shapes(f"{method}.tensors", {k: tuple(v.shape) for k, v in expected.items()}, tensors)
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(tensors[key].to(value.dtype))


def check_tensor_shapes(field: str, expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> None:
    """Raise ``ConfigError(field)`` listing missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k}: got {tuple(tensors[k].shape)}, expected {tuple(expected[k])}"
                   for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing tensors {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_short(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_short(wrong)}")
    if problems:
        raise ConfigError(field, "adapter weights do not match the method's parameters and this model: "
                          + "; ".join(problems))


def _short(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


# ---------------------------------------------------------------------------------------------- folders
def save_adapter(intervention: AdapterIntervention, info: ModelInfo, directory: str | Path, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter_config.json``, ``adapter_model.safetensors`` and ``recipe.json`` into ``directory``.

    ``extra`` (JSON-serialisable, e.g. a training summary) is stored under ``"training"`` in the config.
    Files are written to temporary names and renamed, so an interrupted save never leaves a torn file.
    """
    from safetensors.torch import save_file

    import hookkit
    from hookkit.core.recipe import Recipe

    if not isinstance(intervention, AdapterIntervention):
        raise ConfigError("method", f"{intervention.name!r} has no trainable weights to save as an adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {KEY_PREFIX + k: v.detach().cpu().contiguous() for k, v in intervention.tensors().items()}
    fingerprint = info.fingerprint()
    config = {
        "hookkit_adapter": ADAPTER_FORMAT,
        "method": intervention.name,
        "params": intervention.params(),
        "base_model": fingerprint,
        "hookkit_version": hookkit.__version__,
        "weights": WEIGHTS_NAME,
        "tensors": {k[len(KEY_PREFIX):]: list(v.shape) for k, v in tensors.items()},
        "trainable_parameters": int(sum(v.numel() for v in tensors.values())),
    }
    if extra:
        config["training"] = extra
    _atomic(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _atomic(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n"))
    recipe = Recipe.from_interventions([intervention], model=fingerprint).to_dict()
    recipe["tensors"] = WEIGHTS_NAME
    _atomic(directory / RECIPE_NAME, lambda p: p.write_text(json.dumps(recipe, indent=2, allow_nan=False) + "\n"))
    return directory


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_adapter(directory: str | Path) -> tuple[AdapterIntervention, dict[str, Any]]:
    """Parse and check an adapter folder without a model: returns the intervention (weights pending) and config.

    Raises ``InputError`` for a missing or unreadable file and ``ConfigError`` naming the bad field otherwise.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hookkit.methods.registry import build_method

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"adapter folder {directory} does not exist (or is not a folder)")
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise InputError(f"adapter folder {directory} has no {path.name} (expected {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME}, as written by `hookkit tune` / save_adapter)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(CONFIG_NAME, f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(CONFIG_NAME, "must be a JSON object")
    if config.get("hookkit_adapter") != ADAPTER_FORMAT:
        raise ConfigError(f"{CONFIG_NAME}:hookkit_adapter", f"unsupported adapter format "
                          f"{config.get('hookkit_adapter')!r}", [ADAPTER_FORMAT])
    method = config.get("method")
    if not isinstance(method, str):
        raise ConfigError(f"{CONFIG_NAME}:method", "missing or not a string")
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{CONFIG_NAME}:params", "must be an object")
    if not isinstance(config.get("base_model"), dict):
        raise ConfigError(f"{CONFIG_NAME}:base_model", "missing base-model fingerprint (an object)")
    intervention = build_method(method, params)  # unknown method / parameter -> ConfigError listing the allowed
    if not isinstance(intervention, AdapterIntervention):
        raise ConfigError(f"{CONFIG_NAME}:method", f"method {method!r} is not a trainable adapter",
                          sorted(adapter_method_names()))
    try:
        raw = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(WEIGHTS_NAME, f"{weights_path} is not a valid safetensors file: {exc}") from exc
    bad = sorted(k for k in raw if not k.startswith(KEY_PREFIX))
    if bad:
        raise ConfigError(WEIGHTS_NAME, f"tensor names must start with {KEY_PREFIX!r}: {_short(bad)}")
    intervention.load_tensors({k[len(KEY_PREFIX):]: v for k, v in raw.items()})
    return intervention, config


def adapter_method_names() -> list[str]:
    from hookkit.methods.registry import get_method, method_names

    return [n for n in method_names() if issubclass(get_method(n), AdapterIntervention)]


def check_base_model(config: dict[str, Any], info: ModelInfo, source: str = CONFIG_NAME) -> None:
    """Raise ``ConfigError`` when the adapter's base model differs in a shape-relevant way from ``info``."""
    saved, current = config.get("base_model", {}), info.fingerprint()
    diffs = [f"{k}: adapter {saved.get(k)!r} vs model {current.get(k)!r}" for k in SHAPE_KEYS
             if k in saved and saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigError(f"{source}:base_model", "the adapter was trained on a different base model (" +
                          "; ".join(diffs) + ")")
    if saved.get("name_or_path") and saved.get("name_or_path") != current.get("name_or_path"):
        log.warning("adapter base model %r, loading into %r (same shapes; make sure the weights match)",
                    saved.get("name_or_path"), current.get("name_or_path"))


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Attach the adapter saved in ``directory`` to ``model`` and return the model (see module docstring).

    Everything is validated before the model is touched (``build`` only creates the adapter's own modules and
    checks every tensor name and shape); on any error the model is left as it was.
    """
    from hookkit.core.session import Session, get_model_info

    intervention, config = read_adapter(directory)
    info = get_model_info(model)
    check_base_model(config, info)
    intervention.build(info)
    session = Session(model, [intervention], info=info)
    session._install()
    return model


def unload_adapter(model: nn.Module) -> nn.Module:
    """Detach the adapter session attached by ``load_adapter``; the model is the stock model again."""
    from hookkit.core.session import SESSION_ATTR
    from hookkit.errors import AttachError

    session = getattr(model, SESSION_ATTR, None)
    if session is None:
        raise AttachError("this model has no attached adapter session")
    session.detach()
    return model


def copy_adapter_folder(src: str | Path, dst: str | Path) -> None:
    """Copy the three adapter files (used by the trainer to publish a checkpoint as the final adapter)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME, RECIPE_NAME):
        shutil.copyfile(src / name, dst / name)
