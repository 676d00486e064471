"""``hookkit eval TASK ...``: run an evaluation task through the shared runner (``hookkit.evals.runner``).

The tasks come from ``hookkit.registry.TASKS``: the built-in ones (``hookkit/cli/tasks/``) and any installed
through the ``hookkit.tasks`` entry point. Each is a ``TaskCommand``; its sub-parser gets ``eval_task`` as default.

``hookkit eval --task TASK ...`` is the same as ``hookkit eval TASK ...`` (lm-eval's ``--tasks`` spelling).
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
    from hookkit.registry import TASKS

    subparsers = p.add_subparsers(dest="task", metavar="TASK", title="tasks")
    for name, task in TASKS.items():
        description = f"{task.help}. {task.description}".strip() if task.description else task.help
        sub = subparsers.add_parser(name, help=task.help, description=description)
        task.add_arguments(sub)
        sub.set_defaults(eval_task=task)
    p.add_argument("--task", action=_TaskOption, subparsers=subparsers, nargs=argparse.PARSER, dest="task",
                   metavar="TASK", help="the task and its options (same as the positional TASK)")


def run(args: argparse.Namespace) -> int:
    task = getattr(args, "eval_task", None)
    if task is None:
        raise ConfigError("eval", "no task given: use `hookkit eval TASK ...` (see `hookkit eval --help`)")
    return int(task.run(args) or 0)


COMMAND = ("eval", "run an evaluation task (POPE, CHAIR, passkey, NIAH, long-context perplexity, plug-ins) and write "
           "results JSON + per-sample JSONL", add_arguments, run)
