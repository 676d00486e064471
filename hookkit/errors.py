"""hookkit's exceptions. Every message names the offending field and, where there is a finite set, the allowed values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class HookkitError(Exception):
    """Base class of every error hookkit raises on purpose."""


class ConfigError(HookkitError, ValueError):
    """A parameter, recipe field or CLI argument is invalid."""

    def __init__(self, field: str, message: str, allowed: Iterable[Any] | str | None = None):
        self.field = field
        self.allowed = allowed
        text = f"{field}: {message}"
        if allowed is not None:
            shown = allowed if isinstance(allowed, str) else ", ".join(repr(a) for a in allowed)
            text += f" (allowed: {shown})"
        super().__init__(text)


class UnsupportedModelError(HookkitError):
    """hookkit cannot find what it needs in this model, or a method does not apply to it."""


class AttachError(HookkitError, RuntimeError):
    """Attaching or detaching failed; the model is left exactly as it was before the attach."""


class InputError(HookkitError, ValueError):
    """A prompt, image or data file is missing, unreadable or malformed."""


def check_range(field: str, value: float, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Raise ``ConfigError`` naming ``field`` unless ``value`` lies in the interval."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected a number, got {value!r}") from None
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok or value != value:  # NaN fails every comparison
        lo = "(-inf" if low is None else f"{'[' if low_inclusive else '('}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{']' if high_inclusive else ')'}"
        raise ConfigError(field, f"{value:g} is out of range", f"{lo}, {hi}")
    return value
