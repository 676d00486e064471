"""Method registry: name -> intervention class, with parameter introspection for ``hookkit list``."""

from __future__ import annotations

import dataclasses
from typing import Any

from hookkit.core.intervention import Intervention
from hookkit.errors import ConfigError

_METHODS: dict[str, type[Intervention]] = {}


def register_method(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator. Methods are dataclasses with ``eq=False`` (states are keyed by instance identity)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass (its fields are the method's parameters)")
    if cls.__hash__ is None:
        raise TypeError(f"{cls.__name__} must be declared with @dataclass(eq=False)")
    _METHODS[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    # The method modules register themselves on import.
    import hookkit.methods  # noqa: F401


def method_names() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)


def get_method(name: str) -> type[Intervention]:
    _ensure_loaded()
    if name not in _METHODS:
        raise ConfigError("method", f"unknown method {name!r}", sorted(_METHODS))
    return _METHODS[name]


def method_parameters(cls: type[Intervention]) -> list[dict[str, Any]]:
    """Name, default and help of every parameter (from the dataclass fields and their ``metadata['help']``)."""
    params = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        params.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
    return params


def build_method(name: str, params: dict[str, Any] | None = None) -> Intervention:
    """Instantiate method ``name``; unknown parameter names get an error listing the allowed ones."""
    cls = get_method(name)
    params = dict(params or {})
    allowed = [p["name"] for p in method_parameters(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", "unknown parameter", allowed)
    return cls(**params)


def parse_param_strings(items: list[str] | None) -> dict[str, Any]:
    """CLI ``--param k=v`` values: JSON when it parses (numbers, lists, true/false/null), else the raw string."""
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--param", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
