"""Argument groups and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError


def add_model_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    p.add_argument("--model", required=default is None, default=default,
                   help="alias (see `hookkit list`), local checkpoint folder or hub id")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto (default float32)")
    p.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' or 'cpu'")
    p.add_argument("--attn-implementation", default=None, choices=["sdpa", "eager"],
                   help="base attention backend (hookkit keeps untouched layers on it); default: sdpa where the "
                        "architecture has it, else eager")


def add_method_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--method", help="method name (see `hookkit list`)", required=False)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (repeatable); values are JSON where they parse")
    p.add_argument("--recipe", help="recipe JSON file (with its safetensors beside it)")


def recipe_from_args(args: argparse.Namespace, *, required: bool = False) -> Recipe | None:
    """The recipe named by ``--recipe``, or built from ``--method``/``--param``; None for a baseline run."""
    if args.recipe and args.method:
        raise ConfigError("--recipe", "give either --recipe or --method, not both")
    if args.recipe:
        if args.param:
            raise ConfigError("--param", "parameters come from the recipe file when --recipe is given")
        recipe = Recipe.load(args.recipe)
    elif args.method:
        recipe = Recipe.single(args.method, parse_param_strings(args.param))
    else:
        recipe = None
    if recipe is not None:
        recipe.build_interventions()  # unknown methods or parameter names fail now, before any model loads
        return recipe
    if args.param:
        raise ConfigError("--param", "given without --method")
    if required:
        raise ConfigError("--method", "a method (or --recipe) is required")
    return None


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import hookkit

    return hookkit.load(args.model, dtype=args.dtype, device_map=args.device_map,
                        attn_implementation=args.attn_implementation)


def print_json(obj: Any, indent: int | None = 2) -> None:
    """Strict JSON on stdout (non-finite numbers become the strings "NaN"/"Infinity", as in results files)."""
    from hookkit.evals.files import to_jsonable

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        try:
            return to_jsonable(value)
        except TypeError:
            return str(value)

    print(json.dumps(plain(obj), indent=indent, allow_nan=False, default=str))


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a plain left-aligned text table (a blank line, the header, one line per row)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def parse_param_strings(items: list[str] | None) -> dict[str, Any]:
    """``--param k=v`` values: JSON when it parses (numbers, lists, true/false/null), else the raw string."""
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


# ------------------------------------------------------------------------------------------------ argument types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def limit_arg(text: str) -> int | float:
    """``--limit``: an int (first N samples) or a fraction in (0, 1), as lm-eval."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int or a fraction in (0, 1), got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"a fractional --limit must lie in (0, 1), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--limit must be >= 0, got {text!r}")
    return value


def int_list(text: str, minimum: int = 1) -> list[int]:
    """``"4096,8192"`` or ``"4k,16k"`` -> ``[4096, 8192]`` / ``[4096, 16384]``."""
    out = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)([kK]?)", item)
        if m is None:
            raise argparse.ArgumentTypeError(f"expected integers like 4096 or 16k, got {item!r}")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not out or any(v < minimum for v in out):
        raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
    return out


def offsets_list(text: str) -> list[int]:
    return int_list(text, minimum=0)


def float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers separated by commas, got {text!r}")
    return values
