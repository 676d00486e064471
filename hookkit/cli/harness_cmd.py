"""``hookkit harness``: run lm-evaluation-harness or lmms-eval with the ``hookkit`` model registered.

    hookkit harness lm-eval -- --model hookkit --model_args pretrained=smollm2,method=longheads \\
        --tasks hookkit_passkey
    hookkit harness lmms-eval -- --model hookkit --model_args pretrained=tiny-llava,method=vhr --tasks hookkit_pope
    hookkit harness export-passkey --model smollm2 --lengths 4096 12288 --trials 5 --output passkey.jsonl
    hookkit harness tasks

Why an entry command: lm-eval 0.4.13 resolves ``--model`` through a static table (no plug-in entry points), so
the plug-in must be imported in the process before lm-eval's CLI parses its arguments; lmms-eval reads the
``lmms_eval.models`` entry point, but only for an installed hookkit, and it leaves model information out of its
results file, which this command adds (``results["config"]["hookkit"]``: recipe and hash). Everything after ``--``
goes to the harness's own CLI unchanged, except that hookkit's bundled task folder is added as ``--include_path``
when none is given.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hookkit.errors import ConfigError

HARNESSES = ("lm-eval", "lmms-eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="harness", metavar="HARNESS")
    for name, package in (("lm-eval", "lm-evaluation-harness (text tasks)"),
                          ("lmms-eval", "lmms-eval (image + text tasks)")):
        h = sub.add_parser(name, help=f"run {package} with --model hookkit available",
                           description=f"Run {package}'s CLI with the hookkit model registered. Arguments after "
                                       "'--' go to the harness unchanged.")
        h.add_argument("--no-bundled-tasks", action="store_true",
                       help="do not add hookkit's example task folder as --include_path")
        h.add_argument("harness_args", nargs=argparse.REMAINDER, metavar="-- HARNESS_ARGS",
                       help="the harness's own arguments, e.g. -- --model hookkit --model_args pretrained=tiny-llama "
                            "--tasks hookkit_mc")
        h.set_defaults(harness_run=_run_harness)

    e = sub.add_parser("export-passkey", help="write passkey prompts (hookkit's builder) as JSON lines for "
                                              "the hookkit_passkey task",
                       description="Passkey prompts exactly as `hookkit eval passkey` builds them (token-exact "
                                   "lengths for --model's tokenizer), as JSON lines for lm-eval's hookkit_passkey "
                                   "task (--metadata '{\"passkey_file\": PATH}').")
    e.add_argument("--model", required=True, help="alias, folder or hub id whose tokenizer sizes the prompts")
    e.add_argument("--lengths", type=int, nargs="+", required=True, metavar="TOKENS", help="prompt lengths in tokens")
    e.add_argument("--trials", type=int, default=5, help="trials per length (default 5)")
    e.add_argument("--seed", type=int, default=0, help="trial seed (LongHeads rule: seed + trial + length)")
    e.add_argument("--depths", type=float, nargs="+", default=None, metavar="D",
                   help="fixed needle depths in [0, 1] (default: sampled per trial)")
    e.add_argument("--rng", choices=("numpy", "python"), default="numpy", help="trial RNG (default numpy)")
    e.add_argument("--output", required=True, metavar="FILE", help="JSON-lines file to write")
    e.set_defaults(harness_run=_run_export_passkey)

    t = sub.add_parser("tasks", help="print hookkit's bundled task folders and task names")
    t.set_defaults(harness_run=_run_tasks)


def run(args: argparse.Namespace) -> int:
    harness_run = getattr(args, "harness_run", None)
    if harness_run is None:
        raise ConfigError("harness", "no harness given: use `hookkit harness lm-eval -- ...` or "
                          "`hookkit harness lmms-eval -- ...`", [*HARNESSES, "export-passkey", "tasks"])
    return int(harness_run(args) or 0)


COMMAND = ("harness", "run lm-evaluation-harness / lmms-eval tasks on a model with a hookkit intervention "
           "(--model hookkit)", add_arguments, run)


# ------------------------------------------------------------------------------------------------ harness runs
def harness_argv(args: list[str], harness: str, *, bundled_tasks: bool = True) -> list[str]:
    """The harness's argv: a leading ``--`` dropped, the bundled task folder added unless an include path is given
    (lm-eval and lmms-eval take a single ``--include_path``)."""
    from hookkit.integrations.tasks import tasks_dir

    argv = list(args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    given = any(a == "--include_path" or a.startswith("--include_path=") for a in argv)
    if bundled_tasks and not given and argv and not {"-h", "--help"} & set(argv):
        argv += ["--include_path", str(tasks_dir(harness))]
    return argv


@contextlib.contextmanager
def _sys_argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _exit_code(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except SystemExit as exc:  # both CLIs exit on argument errors and after some subcommands
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _run_harness(args: argparse.Namespace) -> int:
    argv = harness_argv(args.harness_args, args.harness, bundled_tasks=not args.no_bundled_tasks)
    if not argv:
        raise ConfigError("harness_args", f"nothing to run: give the harness's arguments after '--', e.g. "
                          f"`hookkit harness {args.harness} -- --model hookkit --model_args pretrained=tiny-llama "
                          f"--tasks ...`")
    if args.harness == "lm-eval":
        return run_lm_eval(argv)
    return run_lmms_eval(argv)


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's CLI (``lm-eval ...``) in this process with ``--model hookkit`` registered."""
    from lm_eval.__main__ import cli_evaluate

    import hookkit.integrations.lm_eval  # noqa: F401  (registers the model)

    with _sys_argv(["lm-eval", *argv]):
        return _exit_code(cli_evaluate)


def run_lmms_eval(argv: list[str]) -> int:
    """lmms-eval's CLI (``lmms-eval ...``) in this process with ``--model hookkit`` registered and the hookkit
    block added to the results."""
    from hookkit.integrations import lmms_eval as plugin

    plugin.register()
    import lmms_eval.evaluator as evaluator
    from lmms_eval.cli.dispatch import main

    original = evaluator.simple_evaluate

    def simple_evaluate(*a: Any, **kw: Any) -> Any:
        return plugin.add_provenance(original(*a, **kw))

    evaluator.simple_evaluate = simple_evaluate
    try:
        with _sys_argv(["lmms-eval", *argv]):
            return _exit_code(main)
    finally:
        evaluator.simple_evaluate = original


# ------------------------------------------------------------------------------------------------ helpers
def _run_export_passkey(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from hookkit.integrations.tasks import export_passkey
    from hookkit.models.loading import resolve

    if args.trials < 1:
        raise ConfigError("--trials", f"must be >= 1, got {args.trials}")
    if any(n < 1 for n in args.lengths):
        raise ConfigError("--lengths", f"must be positive, got {args.lengths}")
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model).source)
    path = export_passkey(tokenizer, args.output, lengths=args.lengths, trials=args.trials, seed=args.seed,
                          depths=args.depths, rng=args.rng, tokenizer_name=args.model)
    n = len(args.lengths) * args.trials * (len(args.depths) if args.depths else 1)
    print(f"wrote {n} passkey prompts to {path}")
    print(f"run: hookkit harness lm-eval -- --model hookkit --model_args pretrained={args.model},max_length="
          f"{max(args.lengths) + 64} --tasks hookkit_passkey --metadata '{{\"passkey_file\": \"{path.resolve()}\"}}'")
    return 0


def _run_tasks(args: argparse.Namespace) -> int:
    from hookkit.integrations.tasks import tasks_dir

    for harness in HARNESSES:
        folder = tasks_dir(harness)
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        print(f"{harness:<10} {folder}")
        for name in names:
            print(f"           {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hookkit.cli.harness_cmd ...``: the command on its own (same as ``hookkit harness ...``)."""
    from hookkit.errors import HookkitError

    parser = argparse.ArgumentParser(prog="hookkit harness", description=COMMAND[1])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except HookkitError as exc:
        print(f"hookkit harness: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
