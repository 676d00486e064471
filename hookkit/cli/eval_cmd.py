"""``hookkit eval TASK ...``: run an evaluation task through the shared runner (``hookkit.evals.runner``).

Each task family keeps its sub-parsers in its own module and exposes ``add_<name>_parser(subparsers)``; that
function adds the task's sub-parser(s) and sets ``eval_run`` (a ``callable(args) -> int``) with ``set_defaults``.
Register a family with one line in :func:`add_arguments`.

``hookkit eval --task TASK ...`` is the same as ``hookkit eval TASK ...`` (the spelling of the issue and of
lm-eval's ``--tasks``).
"""

from __future__ import annotations

import argparse
from typing import Any

from hookkit.errors import ConfigError


class _TaskOption(argparse.Action):
    """``--task NAME ARGS...``: hands NAME and everything after it to the task sub-parsers, exactly as if NAME had
    been given as the positional TASK."""

    def __init__(self, option_strings: list[str], dest: str, *, subparsers: Any, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.subparsers = subparsers

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        self.subparsers(parser, namespace, values, option_string)


def add_arguments(p: argparse.ArgumentParser) -> None:
    subparsers = p.add_subparsers(dest="task", metavar="TASK", title="tasks")
    from hookkit.cli.eval_hallucination import add_chair_parser, add_pope_parser

    add_pope_parser(subparsers)
    add_chair_parser(subparsers)
    from hookkit.cli.eval_longctx import add_longppl_parser, add_niah_parser, add_passkey_parser  # issue 6

    add_passkey_parser(subparsers)
    add_niah_parser(subparsers)
    add_longppl_parser(subparsers)
    p.add_argument("--task", action=_TaskOption, subparsers=subparsers, nargs=argparse.PARSER, dest="task",
                   metavar="TASK", help="the task and its options (same as the positional TASK)")


def run(args: argparse.Namespace) -> int:
    task_run = getattr(args, "eval_run", None)
    if task_run is None:
        raise ConfigError("eval", "no task given: use `hookkit eval TASK ...` (see `hookkit eval --help`)")
    return int(task_run(args) or 0)


COMMAND = ("eval", "run an evaluation task (POPE, CHAIR, passkey, NIAH, long-context perplexity) and write results "
           "JSON + per-sample JSONL", add_arguments, run)
