"""Argument groups and helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hookkit.core.recipe import Recipe
from hookkit.errors import ConfigError


def add_model_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    p.add_argument("--model", required=default is None, default=default,
                   help="alias (see `hookkit list`), local checkpoint folder or hub id")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto (default float32)")
    p.add_argument("--device-map", default=None, help="accelerate device map, e.g. 'auto' or 'cpu'")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"],
                   help="base attention backend (hookkit keeps untouched layers on it)")


def add_method_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--method", help="method name (see `hookkit list`)", required=False)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (repeatable); values are JSON where they parse")
    p.add_argument("--recipe", help="recipe JSON file (with its safetensors beside it)")


def recipe_from_args(args: argparse.Namespace, *, required: bool = False) -> Recipe | None:
    """The recipe named by ``--recipe``, or built from ``--method``/``--param``; None for a baseline run."""
    from hookkit.methods.registry import parse_param_strings

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


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
