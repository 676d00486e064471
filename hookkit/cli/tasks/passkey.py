"""``hookkit eval passkey``: passkey retrieval at exact token lengths (eval-protocols.md §5)."""

from __future__ import annotations

import argparse
from typing import Any

from hookkit.cli.common import float_list, int_list
from hookkit.cli.evaluation import TaskCommand, add_long_context_model_args, add_runner_args, fmt, gigabytes, run_eval
from hookkit.errors import ConfigError


def _one_prompt_at_a_time(args: argparse.Namespace) -> None:
    if args.batch_size != 1:
        raise ConfigError("--batch-size", "long-context tasks run one prompt at a time", [1])


def add_passkey_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.evals.passkey.task import PASSKEY_MAX_NEW_TOKENS

    add_long_context_model_args(p)
    g = p.add_argument_group("passkey")
    g.add_argument("--lengths", type=int_list, default=[4096, 8192], metavar="N[,N...]",
                   help="prompt lengths in tokens, e.g. 4096,16k (default 4096,8192)")
    g.add_argument("--trials", type=int, default=10, help="trials per length (or per length and depth; default 10)")
    g.add_argument("--depths", type=float_list, default=None, metavar="D[,D...]",
                   help="fixed needle depths as fractions of the filler (default: sampled per trial)")
    g.add_argument("--trial-seed", type=int, default=0,
                   help="seed of the depth/key draws: numpy RandomState(trial_seed + trial + length) (default 0)")
    g.add_argument("--rng", choices=("numpy", "python"), default="numpy",
                   help="draw with numpy (LongHeads, default) or python random (Landmark)")
    g.add_argument("--max-new-tokens", type=int, default=PASSKEY_MAX_NEW_TOKENS,
                   help=f"greedy budget (default {PASSKEY_MAX_NEW_TOKENS}: ' ' + 5 digits + '.')")
    add_runner_args(p)


def passkey_table(results: dict[str, Any]) -> list[tuple[str, Any, Any, Any, Any, Any]]:
    """(cell, n, accuracy, prefill s, decode tok/s, peak RSS bytes) per cell of a passkey results dict."""
    cells = results["results"]["passkey"]["cells,none"]
    return [(cell, c["n"], c["accuracy"], c["prefill_s_median"], c["decode_tok_s_median"], c["peak_rss_bytes_max"])
            for cell, c in cells.items()]


def _passkey_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["passkey"]
    lines = [f"passkey: {results['n-samples']['passkey']['effective']} trials, accuracy "
             f"{fmt(entry['accuracy,none'], '.3f')}, {entry['n_errors']} errors"]
    lines.append(f"{'cell':<22}{'n':>4}{'accuracy':>10}{'prefill s':>11}{'decode tok/s':>14}{'peak RSS GB':>13}")
    for cell, n, acc, pre, dec, rss in passkey_table(results):
        lines.append(f"{cell:<22}{n:>4}{fmt(acc, '.2f'):>10}{fmt(pre, '.1f'):>11}{fmt(dec, '.2f'):>14}{gigabytes(rss):>13}")
    return lines


def run_passkey(args: argparse.Namespace) -> int:
    from hookkit.evals.passkey.task import PasskeyTask

    if args.trials < 1:
        raise ConfigError("--trials", f"expected a positive integer, got {args.trials}")
    for d in args.depths or ():
        if not 0.0 <= d <= 1.0:
            raise ConfigError("--depths", f"depth {d} is not a fraction in [0, 1]")

    def make_task(tokenizer: Any) -> PasskeyTask:
        return PasskeyTask(tokenizer, args.lengths, args.trials, trial_seed=args.trial_seed, depths=args.depths,
                           max_new_tokens=args.max_new_tokens, rng=args.rng)

    _one_prompt_at_a_time(args)
    return run_eval(args, make_task, _passkey_summary, task_needs_processor=True)


PASSKEY = TaskCommand(
    help="passkey retrieval at exact token lengths: accuracy, prefill s, decode tok/s, peak memory per length",
    description="Protocol: eval-protocols.md §5.", add_arguments=add_passkey_arguments, run=run_passkey)
