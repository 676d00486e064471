"""``hookkit eval longppl``: perplexity per window of a long text."""

from __future__ import annotations

import argparse
from typing import Any

from hookkit.cli.common import int_list, offsets_list
from hookkit.cli.evaluation import TaskCommand, add_long_context_model_args, add_runner_args, fmt, gigabytes, run_eval
from hookkit.errors import ConfigError


def _one_prompt_at_a_time(args: argparse.Namespace) -> None:
    if args.batch_size != 1:
        raise ConfigError("--batch-size", "long-context tasks run one prompt at a time", [1])


def add_longppl_arguments(p: argparse.ArgumentParser) -> None:
    add_long_context_model_args(p)
    g = p.add_argument_group("long-context perplexity")
    g.add_argument("--text", metavar="FILE", help="UTF-8 text file (default: the shipped KJV)")
    g.add_argument("--max-tokens", type=int_list, default=[32768], metavar="N",
                   help="tokens per sample (default 32768)")
    g.add_argument("--window", type=int, default=2048, help="window size in tokens (default 2048)")
    g.add_argument("--starts", type=offsets_list, default=[0], metavar="T[,T...]",
                   help="start offsets in tokens, one sample each (default 0)")
    g.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="truncated-context reference: each window in its own forward over at most N tokens ending "
                        "with it (a multiple of --window; default: one forward over the whole sample)")
    add_runner_args(p)


def _longppl_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["longppl"]
    lines = [f"longppl: {results['n-samples']['longppl']['effective']} samples, overall ppl "
             f"{fmt(entry['ppl,none'], '.3f')}, forward {fmt(entry['forward_s_median,none'], '.1f')} s, peak RSS "
             f"{gigabytes(entry['peak_rss_bytes_max,none'])} GB"]
    lines.append(f"{'window':>14}{'tokens':>8}{'ppl':>12}")
    for w in entry["windows,none"]:
        lines.append(f"{w['start']:>6}-{w['end']:<7}{w['tokens']:>8}{fmt(w['ppl'], '.3f'):>12}")
    return lines


def run_longppl(args: argparse.Namespace) -> int:
    from hookkit.evals.longppl import LongPPLTask

    if len(args.max_tokens) != 1:
        raise ConfigError("--max-tokens", "give one length")
    starts = args.starts
    mc = args.max_context
    if mc is not None and (mc < args.window or mc % args.window):
        raise ConfigError("--max-context", f"{mc} is not a multiple of --window {args.window}",
                          f"{args.window}, {2 * args.window}, ...")

    def make_task(tokenizer: Any) -> LongPPLTask:
        kwargs = {"max_tokens": args.max_tokens[0], "window": args.window, "starts": starts, "max_context": mc}
        if args.text:
            return LongPPLTask.from_file(tokenizer, args.text, **kwargs)
        return LongPPLTask(tokenizer, **kwargs)

    _one_prompt_at_a_time(args)
    return run_eval(args, make_task, _longppl_summary, task_needs_processor=True)


LONGPPL = TaskCommand(
    help="perplexity per window of a long text (one forward per sample): where does the model break?",
    add_arguments=add_longppl_arguments, run=run_longppl)
