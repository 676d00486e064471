"""hookkit's exceptions. Every message names the offending field and, where there is a finite set, the allowed values."""

from __future__ import annotations

import math
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
    """Raise ``ConfigError`` naming ``field`` unless ``value`` is a finite number in the interval.

    Booleans are not numbers here (``alpha=true`` is a mistake, not 1.0), and neither are infinities or NaN:
    an open bound such as ``(0, inf)`` excludes infinity itself.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(field, f"{value} is not a finite number")
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "(-inf" if low is None else f"{'[' if low_inclusive else '('}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{']' if high_inclusive else ')'}"
        raise ConfigError(field, f"{value:g} is out of range", f"{lo}, {hi}")
    return value


def check_int(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Raise ``ConfigError`` naming ``field`` unless ``value`` is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {value!r}", _interval(low, high))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(field, f"{value} is out of range", _interval(low, high))
    return value


def check_int_list(field: str, values: Any, *, low: int | None = None, high: int | None = None,
                   allow_empty: bool = False, unique: bool = True) -> list[int]:
    """A list of integers in ``[low, high]`` (no bools, no repeats unless ``unique=False``), else ``ConfigError``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ConfigError(field, f"expected a list of integers, got {values!r}", _interval(low, high))
    if not values and not allow_empty:
        raise ConfigError(field, "must not be empty", _interval(low, high))
    for v in values:
        check_int(field, v, low=low, high=high)
    if unique and len(set(values)) != len(values):
        raise ConfigError(field, f"repeated entries in {list(values)!r}")
    return list(values)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, f"expected true or false, got {value!r}", [True, False])
    return value


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if not isinstance(value, (str, int, float, bool, type(None))) or value not in choices:
        raise ConfigError(field, f"unknown value {value!r}", choices)
    return value


def _interval(low: int | None, high: int | None) -> str | None:
    if low is None and high is None:
        return None
    if high is None:
        return f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"{low}..{high}"
