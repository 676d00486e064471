"""One registry pattern for hookkit's three extension points: methods, model families and eval tasks.

A ``Registry`` maps names to objects, filled three ways:

* **built-in entries as ``"module:object"`` strings**, imported on first use, so that listing names or looking up
  one method imports nothing else;
* **direct registration**, ``REGISTRY.register(name, obj)`` (or ``@REGISTRY.register(name)`` as a decorator);
* **plug-ins**: an installed distribution declares an entry point in the registry's group, e.g. in its
  ``pyproject.toml``::

      [project.entry-points."hookkit.methods"]
      my_method = "my_package.methods:MyMethod"

  Entry points are read once, the first time a registry is asked for a name it does not already hold or for its
  full list. A plug-in may not replace a built-in name (it is skipped with a warning that says why).

This module is a leaf (it imports nothing from hookkit but ``errors``), so every layer can use it: the session
(core) resolves families, recipes resolve methods, and the CLI lists all three.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from hookkit.errors import ConfigError

T = TypeVar("T")


def import_object(spec: str) -> Any:
    """``"package.module:attr.sub"`` -> the object (raises ImportError / AttributeError naming the spec)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:object', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> object, with lazy ``"module:object"`` entries and entry-point plug-ins.

    ``kind`` names the registry in errors (``method: unknown method 'x' (allowed: ...)``); ``group`` is the entry
    point group; ``check`` validates an object when it is registered or first imported.
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str] | None = None,
                 check: Callable[[str, Any], None] | None = None):
        self.kind = kind
        self.group = group
        self._check = check
        self._entries: dict[str, Any] = dict(builtins or {})  # a str is a lazy "module:object" entry
        self._builtin = frozenset(self._entries)
        self._plugins_loaded = False

    # ------------------------------------------------------------------ filling
    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is None:
            return lambda target: self.register(name, target)
        if self._check is not None and not isinstance(obj, str):
            self._check(name, obj)
        self._entries[name] = obj
        return obj

    def load_plugins(self) -> None:
        """Read the entry points of ``group`` once (installed distributions' plug-ins)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._builtin:
                warnings.warn(f"{self.group} entry point {ep.name!r} ({ep.value}) is ignored: {ep.name!r} is a "
                              f"built-in {self.kind}", RuntimeWarning, stacklevel=2)
                continue
            self._entries.setdefault(ep.name, ep.value)

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        if name not in self._entries:
            self.load_plugins()
        return name in self._entries

    def get(self, name: str) -> T:
        """The object registered as ``name`` (imported on first use); ``ConfigError`` listing the names if unknown."""
        if name not in self:
            raise ConfigError(self.kind, f"unknown {self.kind} {name!r}", self.names())
        entry = self._entries[name]
        if isinstance(entry, str):
            try:
                obj = import_object(entry)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigError(self.kind, f"{self.kind} {name!r} is registered as {entry!r}, which cannot be "
                                  f"imported: {exc}") from exc
            if self._check is not None:
                self._check(name, obj)
            self._entries[name] = entry = obj
        return entry

    def items(self) -> Iterator[tuple[str, T]]:
        """Every (name, object), importing each (used by listings and by lookups over all entries)."""
        for name in self.names():
            yield name, self.get(name)


# ---------------------------------------------------------------------------------------------- the three registries
def _check_method(name: str, cls: Any) -> None:
    import dataclasses

    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"method {name!r}: {cls!r} must be a dataclass (its fields are the method's parameters)")
    if cls.__hash__ is None:
        raise TypeError(f"method {name!r}: {cls.__name__} must be declared with @dataclass(eq=False) (per-sample "
                        "states are keyed by instance identity)")
    if getattr(cls, "name", None) != name:
        raise TypeError(f"method {name!r}: {cls.__name__}.name is {getattr(cls, 'name', None)!r}; they must match")


def _check_family(name: str, cls: Any) -> None:
    if not isinstance(cls, type) or getattr(cls, "family", None) != name:
        raise TypeError(f"family {name!r}: {cls!r} must be a FamilyAdapter subclass with family = {name!r}")


def _check_task(name: str, obj: Any) -> None:
    for attr in ("help", "add_arguments", "run"):
        if not hasattr(obj, attr):
            raise TypeError(f"task {name!r}: {obj!r} has no {attr!r} (see hookkit.cli.evaluation.TaskCommand)")


#: Intervention classes (``hookkit.methods``).
METHODS: Registry[Any] = Registry("method", "hookkit.methods", {
    "noop": "hookkit.methods.noop:Noop",
    "vhr": "hookkit.methods.vhr:VHR",
    "var": "hookkit.methods.var:VAR",
    "longheads": "hookkit.methods.longheads:LongHeads",
    "moh": "hookkit.methods.moh:MoH",
    "alora": "hookkit.methods.alora:ALoRA",
    "lora": "hookkit.methods.lora:LoRA",
}, check=_check_method)

#: Architecture family adapters (``hookkit.families``); one file per family in ``hookkit/models``.
FAMILIES: Registry[Any] = Registry("family", "hookkit.families", {
    "llama": "hookkit.models.decoders:LlamaAdapter",
    "qwen2": "hookkit.models.decoders:Qwen2Adapter",
    "mistral": "hookkit.models.decoders:MistralAdapter",
    "phi3": "hookkit.models.phi3:Phi3Adapter",
    "phi": "hookkit.models.phi:PhiAdapter",
    "llava": "hookkit.models.llava:LlavaAdapter",
    "llava_next": "hookkit.models.llava:LlavaNextAdapter",
    "qwen2_vl": "hookkit.models.qwen_vl:Qwen2VLAdapter",
    "qwen2_5_vl": "hookkit.models.qwen_vl:Qwen25VLAdapter",
    "idefics3": "hookkit.models.idefics3:Idefics3Adapter",
    "gemma3": "hookkit.models.gemma3:Gemma3Adapter",
    "instructblip": "hookkit.models.instructblip:InstructBlipAdapter",
    "llava_onevision": "hookkit.models.llava_onevision:LlavaOnevisionAdapter",
    "mistral3": "hookkit.models.mistral3:Mistral3Adapter",
    "internvl": "hookkit.models.internvl:InternVLAdapter",
}, check=_check_family)

#: ``hookkit eval`` tasks (``hookkit.tasks``): objects with ``help``, ``add_arguments(parser)`` and ``run(args)``.
TASKS: Registry[Any] = Registry("task", "hookkit.tasks", {
    "pope": "hookkit.cli.tasks.pope:POPE",
    "pope-build": "hookkit.cli.tasks.pope:POPE_BUILD",
    "chair": "hookkit.cli.tasks.chair:CHAIR",
    "passkey": "hookkit.cli.tasks.passkey:PASSKEY",
    "niah": "hookkit.cli.tasks.niah:NIAH",
    "longppl": "hookkit.cli.tasks.longppl:LONGPPL",
}, check=_check_task)
