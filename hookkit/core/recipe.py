"""Recipes: a declarative, pickle-free description of an intervention setup.

A recipe is a JSON file::

    {"hookkit_recipe": 1,
     "methods": [{"method": "vhr", "params": {"alpha": 2.0}}],
     "allow_stacking": false,
     "model": {"family": "llava", "num_layers": 32, ...},
     "tensors": "vhr.safetensors"}

Tensors a method carries (fixed head sets, adapter weights) go in a safetensors file beside it, keyed
``"<method index>.<tensor name>"``. Loading never unpickles: JSON plus ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hookkit.core.intervention import Intervention
from hookkit.errors import ConfigError
from hookkit.registry import METHODS

RECIPE_VERSION = 1


@dataclass
class MethodSpec:
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    methods: list[MethodSpec]
    allow_stacking: bool | list[str] = False
    model: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_interventions(cls, interventions: list[Intervention], *, model: dict[str, Any] | None = None,
                           allow_stacking: bool | list[str] = False) -> Recipe:
        specs, tensors = [], {}
        for i, iv in enumerate(interventions):
            specs.append(MethodSpec(iv.name, iv.params()))
            for name, tensor in iv.tensors().items():
                tensors[f"{i}.{name}"] = tensor.detach().cpu().contiguous()
        return cls(specs, allow_stacking, model, tensors)

    @classmethod
    def single(cls, method: str, params: dict[str, Any] | None = None) -> Recipe:
        return cls([MethodSpec(method, dict(params or {}))])

    def build_interventions(self) -> list[Intervention]:
        out = []
        for i, spec in enumerate(self.methods):
            iv = METHODS.get(spec.method).from_params(spec.params)
            prefix = f"{i}."
            own = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
            if own:
                load = getattr(iv, "load_tensors", None)
                if load is None:
                    raise ConfigError(f"methods[{i}]", f"recipe carries tensors {sorted(own)} but method "
                                      f"{spec.method!r} takes none")
                load(own)
            out.append(iv)
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "hookkit_recipe": RECIPE_VERSION,
            "methods": [{"method": s.method, "params": s.params} for s in self.methods],
            "allow_stacking": self.allow_stacking,
            "model": self.model,
        }

    def hash(self) -> str:
        """sha256 over the canonical JSON and the tensor bytes: the recipe's identity in results files."""
        h = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        for key in sorted(self.tensors):
            t = self.tensors[key]
            h.update(key.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and, when there are tensors, ``<stem>.safetensors`` beside it, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if self.tensors:
            tensor_file = path.with_suffix(".safetensors")
            tmp = tensor_file.with_name(tensor_file.name + ".tmp")
            save_file(self.tensors, str(tmp))
            os.replace(tmp, tensor_file)
            data["tensors"] = tensor_file.name
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, allow_nan=False)  # strict JSON only
            fh.write("\n")
        os.replace(tmp_name, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: Path | None = None, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise ConfigError(source, "a recipe must be a JSON object")
        version = data.get("hookkit_recipe")
        if version != RECIPE_VERSION:
            raise ConfigError(f"{source}.hookkit_recipe", f"unsupported recipe version {version!r}",
                              [RECIPE_VERSION])
        methods = data.get("methods")
        if not isinstance(methods, list) or not methods:
            raise ConfigError(f"{source}.methods", "must be a non-empty list of {method, params} objects")
        specs = []
        for i, m in enumerate(methods):
            if not isinstance(m, dict) or not isinstance(m.get("method"), str):
                raise ConfigError(f"{source}.methods[{i}]", "must be an object with a string 'method'")
            params = m.get("params", {})
            if not isinstance(params, dict):
                raise ConfigError(f"{source}.methods[{i}].params", "must be an object")
            specs.append(MethodSpec(m["method"], params))
        allow = data.get("allow_stacking", False)
        if not isinstance(allow, (bool, list)) or (isinstance(allow, list) and not all(isinstance(a, str)
                                                                                          for a in allow)):
            raise ConfigError(f"{source}.allow_stacking", "must be true/false or a list of site names")
        model = data.get("model")
        if model is not None and not isinstance(model, dict):
            raise ConfigError(f"{source}.model", "must be an object (the model fingerprint) or absent")
        tensors: dict[str, torch.Tensor] = {}
        if data.get("tensors") and not isinstance(data["tensors"], str):
            raise ConfigError(f"{source}.tensors", "must be the name of a safetensors file beside the recipe")
        if data.get("tensors"):
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            tensor_path = (base_dir or Path(".")) / data["tensors"]
            if not tensor_path.exists():
                raise ConfigError(f"{source}.tensors", f"tensor file {tensor_path} does not exist")
            try:
                tensors = load_file(str(tensor_path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ConfigError(f"{source}.tensors", f"{tensor_path} is not a valid safetensors file: {exc}") from exc
        return cls(specs, allow, model, tensors)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.exists():
            raise ConfigError("recipe", f"recipe file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError("recipe", f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, base_dir=path.parent, source=str(path.name))

    def require_model(self, fingerprint: dict[str, Any]) -> None:
        """Raise ``ConfigError`` when the recipe was made for another model (``hookkit.attach`` calls this, so
        every entry point applies the same check)."""
        mismatch = self.check_model(fingerprint)
        if mismatch:
            raise ConfigError("recipe.model", "the recipe was made for another model: " + "; ".join(mismatch))

    def check_model(self, fingerprint: dict[str, Any]) -> list[str]:
        """Differences between the recipe's model fingerprint and ``fingerprint`` (shape-relevant keys only)."""
        if not self.model:
            return []
        keys = ("family", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")
        return [f"{k}: recipe {self.model.get(k)!r} vs model {fingerprint.get(k)!r}" for k in keys
                if k in self.model and self.model.get(k) != fingerprint.get(k)]
