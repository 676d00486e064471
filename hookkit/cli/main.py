"""The ``hookkit`` command line. Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from hookkit.errors import HookkitError

Command = Callable[[argparse.Namespace], int]


def _subcommands() -> list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Command]]:
    from hookkit.cli import inspect_cmd, list_cmd

    commands = [list_cmd.COMMAND, inspect_cmd.COMMAND]
    for module_name in ("apply_cmd", "vhd_cmd", "eval_cmd", "tune_cmd", "demo_cmd", "doctor_cmd", "harness_cmd"):
        try:
            module = __import__(f"hookkit.cli.{module_name}", fromlist=["COMMAND"])
        except ModuleNotFoundError as exc:
            if exc.name != f"hookkit.cli.{module_name}":
                raise
            continue
        commands.append(module.COMMAND)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookkit",
        description="Exact, fast inference-time interventions for Hugging Face LVLMs and LLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_arguments, run in _subcommands():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except HookkitError as exc:
        print(f"hookkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hookkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
