"""``hookkit eval niah``: needle in a haystack over a length x depth grid (eval-protocols.md §6.2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hookkit.cli.common import float_list, int_list
from hookkit.cli.evaluation import TaskCommand, add_long_context_model_args, add_runner_args, fmt, gigabytes, run_eval
from hookkit.errors import ConfigError, check_int


def _one_prompt_at_a_time(args: argparse.Namespace) -> None:
    if args.batch_size != 1:
        raise ConfigError("--batch-size", "long-context tasks run one prompt at a time", [1])


def add_niah_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.evals.corpus import HAYSTACKS
    from hookkit.evals.niah import NIAH_NEEDLES
    from hookkit.evals.niah.task import NIAH_MAX_NEW_TOKENS

    add_long_context_model_args(p)
    g = p.add_argument_group("needle in a haystack")
    g.add_argument("--lengths", type=int_list, default=[2048, 4096, 8192], metavar="N[,N...]",
                   help="prompt lengths in tokens (default 2048,4096,8192)")
    g.add_argument("--depths", type=float_list, default=[0.0, 25.0, 50.0, 75.0, 100.0], metavar="P[,P...]",
                   help="needle depths in percent (default 0,25,50,75,100)")
    g.add_argument("--haystack", default="kjv", metavar="NAME|FILE",
                   help="built-in haystack (" + "; ".join(f"{name}: {h.description}" for name, h in HAYSTACKS.items())
                   + "; default kjv) or a UTF-8 text file")
    g.add_argument("--needle", default="sandwich", choices=list(NIAH_NEEDLES),
                   help="needle phrasing (default sandwich, §6.2; the others vary what is retrieved and how it is asked)")
    g.add_argument("--max-new-tokens", type=int, default=NIAH_MAX_NEW_TOKENS,
                   help=f"greedy budget (default {NIAH_MAX_NEW_TOKENS}, §6.2)")
    g.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                   help="end of turn cannot end the answer before N tokens (default 0, the protocol). Outside §6.2: "
                        "with 1, an empty answer shows whether the needle reached the answer (found but stopped) "
                        "or not; report it apart from protocol scores")
    g.add_argument("--trials", type=int, default=1, metavar="K",
                   help="trials per (length, depth) cell, each from its own seeded haystack start; needs --vary-start "
                        "when K > 1 (default 1)")
    g.add_argument("--vary-start", action="store_true",
                   help="start each trial's haystack at a seeded line instead of its beginning (§6.1 default), so "
                        "the trials of one length do not all end the context at the same haystack token")
    g.add_argument("--no-heatmap", action="store_true", help="do not draw the heatmap PNGs")
    add_runner_args(p)


def _niah_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["niah"]
    lines = [f"niah: {results['n-samples']['niah']['effective']} cells, ROUGE-1 x10 "
             f"{fmt(entry['rouge1_x10,none'], '.2f')}, substring {fmt(entry['substring_accuracy,none'], '.2f')}, "
             f"{entry['n_errors']} errors"]
    lines.append(f"{'length':>8}{'n':>4}{'ROUGE x10':>11}{'substring':>11}{'prefill s':>11}{'peak RSS GB':>13}")
    for n, c in entry["per_length,none"].items():
        lines.append(f"{n:>8}{c['n']:>4}{fmt(c['rouge1_x10'], '.2f'):>11}{fmt(c['substring_accuracy'], '.2f'):>11}"
                     f"{fmt(c['prefill_s_median'], '.1f'):>11}{gigabytes(c['peak_rss_bytes_max']):>13}")
    return lines


def run_niah(args: argparse.Namespace) -> int:
    from hookkit.errors import InputError
    from hookkit.evals.corpus import HAYSTACKS
    from hookkit.evals.niah.task import NiahTask, write_heatmaps
    from hookkit.evals.runner import OutputPaths, read_jsonl

    for d in args.depths:
        if not 0.0 <= d <= 100.0:
            raise ConfigError("--depths", f"depth {d} is not a percentage in [0, 100]")
    check_int("--min-new-tokens", args.min_new_tokens, low=0, high=args.max_new_tokens)  # before the model loads
    if args.trials < 1:
        raise ConfigError("--trials", f"{args.trials} is not a positive number of trials per cell")
    if args.trials > 1 and not args.vary_start:
        raise ConfigError("--trials", "more than one trial per cell repeats the same prompt; add --vary-start")
    haystack = args.haystack
    if haystack not in HAYSTACKS:
        try:
            haystack = Path(args.haystack).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--haystack {args.haystack}: cannot read it as UTF-8 text ({exc})") from exc

    def make_task(tokenizer: Any) -> NiahTask:
        return NiahTask(tokenizer, args.lengths, args.depths, haystack=haystack, haystack_name=args.haystack,
                        needle=args.needle, max_new_tokens=args.max_new_tokens, trials=args.trials,
                        vary_start=args.vary_start, trial_seed=args.seed, min_new_tokens=args.min_new_tokens)

    def after(task: Any, out: Path) -> list[str]:
        if args.no_heatmap:
            return []
        records, _, _ = read_jsonl(OutputPaths(out, task.name).samples)
        title = f"NIAH {args.model}, {Path(args.haystack).name} haystack, {args.needle} needle"
        return [f"heatmap: {p}" for p in write_heatmaps(records, out, title=title)]

    _one_prompt_at_a_time(args)
    return run_eval(args, make_task, _niah_summary, after, task_needs_processor=True)


NIAH = TaskCommand(
    help="needle in a haystack over a length x depth grid (KJV, pydoc or licence-text haystack, several needles): "
         "ROUGE-1 x10 and substring scores",
    description="Protocol: eval-protocols.md §6.2.", add_arguments=add_niah_arguments, run=run_niah)
