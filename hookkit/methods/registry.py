"""The method registry (``hookkit.registry.METHODS``) as the functions method authors and the CLI use.

Built-in methods are lazy ``"module:object"`` entries of ``METHODS``; outside packages add theirs with the
``hookkit.methods`` entry point group, or call ``register_method`` on import.
"""

from __future__ import annotations

from typing import Any

from hookkit.core.intervention import Intervention
from hookkit.registry import METHODS


def register_method(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: register a method under ``cls.name``. Methods are dataclasses with ``eq=False`` (states are
    keyed by instance identity)."""
    return METHODS.register(getattr(cls, "name", None), cls)


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[Intervention]:
    return METHODS.get(name)


def method_parameters(cls: type[Intervention]) -> list[dict[str, Any]]:
    """Name, default and help of every parameter of ``cls`` (``hookkit list`` shows them)."""
    return cls.parameters()


def build_method(name: str, params: dict[str, Any] | None = None) -> Intervention:
    """Instantiate method ``name``; an unknown method or parameter name gets an error listing the allowed ones."""
    return METHODS.get(name).from_params(params)
