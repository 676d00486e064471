"""``hookkit eval passkey|niah|longppl``: the long-context evaluations on the shared runner.

``hookkit/cli/eval_cmd.py`` registers these sub-parsers (``add_passkey_parser``, ``add_niah_parser``,
``add_longppl_parser``); each sets ``eval_run``. Protocols: eval-protocols.md §5 (passkey), §6 (NIAH), §8 (results
JSON). Examples (SmolLM2, the embedded default model)::

    hookkit eval passkey --lengths 4096,16384 --trials 10 --output-path out/stock
    hookkit eval passkey --lengths 16384 --trials 10 --method longheads --output-path out/lh
    hookkit eval passkey --lengths 16384 --trials 10 --rope-scaling dynamic:2 --output-path out/ntk
    hookkit eval niah --lengths 4096,8192 --depths 0,50,100 --method longheads --output-path out/niah
    hookkit eval longppl --text book.txt --max-tokens 32768 --window 2048 --output-path out/ppl
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookkit import compat
from hookkit.cli.common import add_method_args, add_model_args, recipe_from_args
from hookkit.errors import ConfigError

ROPE_TYPES = ("dynamic", "linear", "yarn")
FAST_DTYPE = "fast"  # bf16 where the CPU computes it natively (AVX512-BF16/AMX) or on GPU, else float32


# ------------------------------------------------------------------------------------------------------------------
# shared options
# ------------------------------------------------------------------------------------------------------------------


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
        return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def rope_scaling(text: str) -> tuple[str, float]:
    """``--rope-scaling TYPE:FACTOR``, e.g. ``dynamic:2`` (transformers' dynamic NTK)."""
    m = re.fullmatch(r"([a-z_]+):([0-9.]+)", text.strip())
    if m is None or m.group(1) not in ROPE_TYPES:
        raise argparse.ArgumentTypeError(f"expected TYPE:FACTOR with TYPE in {ROPE_TYPES}, got {text!r}")
    return m.group(1), float(m.group(2))


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device_map: Any = None) -> str:
    """``fast`` -> ``bfloat16`` on GPU or on a CPU with native bf16, else ``float32`` (measured: on an AVX-512 CPU
    without BF16 a bf16 linear layer is ~4x slower than fp32)."""
    if dtype != FAST_DTYPE:
        return dtype
    import torch

    if torch.cuda.is_available() and device_map not in ("cpu", {"": "cpu"}):
        return "bfloat16"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def add_longctx_model_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p, default="smollm2")
    p.set_defaults(dtype=FAST_DTYPE)
    for action in p._actions:  # document the long-context default of --dtype
        if action.dest == "dtype":
            action.help = ("float32 | bfloat16 | float16 | auto | fast (default fast: bf16 on GPU or on CPUs with "
                           "native bf16, else float32)")
    g = p.add_argument_group("long context")
    g.add_argument("--rope-scaling", type=rope_scaling, default=None, metavar="TYPE:FACTOR",
                   help="override the model's RoPE with transformers' scaling, e.g. dynamic:2 (dynamic NTK, the "
                        "training-free baseline) or linear:2; sets config.rope_parameters at load")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often faster on a loaded machine)")
    add_method_args(p)


def add_run_args(p: argparse.ArgumentParser) -> None:
    from hookkit.cli.eval_hallucination import add_runner_args

    add_runner_args(p)


def rope_parameters(model_name: str, spec: tuple[str, float] | None) -> dict[str, Any] | None:
    """``rope_parameters`` for ``from_pretrained`` from ``--rope-scaling`` (keeps the checkpoint's rope_theta)."""
    if spec is None:
        return None
    from transformers import AutoConfig

    from hookkit.models.loading import resolve

    cfg = AutoConfig.from_pretrained(resolve(model_name).source)
    base = dict(getattr(compat.text_config(cfg), "rope_parameters", None) or {})
    if "rope_type" in base and base.get("rope_type") != "default":
        raise ConfigError("--rope-scaling", f"the model already uses rope_type {base['rope_type']!r}")
    kind, factor = spec
    params: dict[str, Any] = {"rope_type": kind, "factor": factor, "rope_theta": base.get("rope_theta", 10000.0)}
    if kind == "yarn":
        params["original_max_position_embeddings"] = compat.text_config(cfg).max_position_embeddings
    return params


def load_for_eval(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    import hookkit
    from hookkit.models.base import model_device

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads", f"expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, args.device_map)
    rope = rope_parameters(args.model, args.rope_scaling)
    kwargs = {"rope_parameters": rope} if rope is not None else {}
    model, tokenizer = hookkit.load(args.model, dtype=dtype, device_map=args.device_map,
                                    attn_implementation=args.attn_implementation, **kwargs)
    if rope is not None and getattr(compat.text_config(model.config), "rope_parameters", {}).get("rope_type") != rope[
            "rope_type"]:
        raise ConfigError("--rope-scaling", "the model ignored the rope_parameters override")
    info = {"model": args.model, "dtype": dtype, "attn_implementation": args.attn_implementation,
            "device": str(model_device(model)), "device_map": args.device_map, "rope_parameters": rope,
            "torch_threads": torch.get_num_threads(), "fingerprint": hookkit.get_model_info(model).fingerprint()}
    return model, tokenizer, info


def run_eval(args: argparse.Namespace, make_task: Callable[[Any], Any],
             summarize: Callable[[dict[str, Any], Any], list[str]],
             after: Callable[[Any, Path], list[str]] | None = None) -> int:
    """Load, attach the recipe (if any), evaluate on the shared runner, print a summary."""
    import hookkit
    from hookkit.cli.eval_hallucination import intervention_record
    from hookkit.evals.runner import evaluate, get_state

    if args.batch_size != 1:
        raise ConfigError("--batch-size", "long-context tasks run one prompt at a time", [1])
    state = get_state()
    recipe = recipe_from_args(args)
    model, tokenizer, model_info = load_for_eval(args)
    task = make_task(tokenizer)
    task.model = model
    intervention = intervention_record(recipe, model)
    cli = {k: v for k, v in vars(args).items() if not callable(v)}
    with hookkit.attach(model, recipe) if recipe is not None else contextlib.nullcontext():
        try:
            results = evaluate(task, output_dir=args.output_path, model_info=model_info, intervention=intervention,
                               limit=args.limit, seed=args.seed, resume=args.resume, batch_size=1,
                               progress=not args.no_progress, cli_args=cli, retry_errors=args.retry_errors,
                               state=state)
        except FileExistsError as exc:
            raise ConfigError("--output-path", str(exc)) from None
        except ValueError as exc:
            if str(exc).startswith("cannot resume"):
                raise ConfigError("--resume", str(exc)) from None
            raise
    if state.is_main_process:
        out = Path(args.output_path)
        for line in summarize(results, task):
            print(line)
        if after is not None:
            for line in after(task, out):
                print(line)
        print(f"results: {out / f'results_{task.name}.json'}")
    return 0


def _gb(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) or value != value else f"{value / 1e9:.2f}"


def _f(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, (int, float)) or value != value else format(value, fmt)


# ------------------------------------------------------------------------------------------------------------------
# passkey
# ------------------------------------------------------------------------------------------------------------------


def add_passkey_parser(subparsers: Any) -> None:
    """``hookkit eval passkey``."""
    from hookkit.evals.passkey_task import PASSKEY_MAX_NEW_TOKENS

    help_text = "passkey retrieval at exact token lengths: accuracy, prefill s, decode tok/s, peak memory per length"
    p = subparsers.add_parser("passkey", help=help_text, description=help_text + ". Protocol: eval-protocols.md §5.")
    add_longctx_model_args(p)
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
    add_run_args(p)
    p.set_defaults(eval_run=run_passkey)


def passkey_table(results: dict[str, Any]) -> list[tuple[str, Any, Any, Any, Any, Any]]:
    """(cell, n, accuracy, prefill s, decode tok/s, peak RSS bytes) per cell of a passkey results dict."""
    cells = results["results"]["passkey"]["cells,none"]
    return [(cell, c["n"], c["accuracy"], c["prefill_s_median"], c["decode_tok_s_median"], c["peak_rss_bytes_max"])
            for cell, c in cells.items()]


def _passkey_summary(results: dict[str, Any], task: Any) -> list[str]:
    entry = results["results"]["passkey"]
    lines = [f"passkey: {results['n-samples']['passkey']['effective']} trials, accuracy "
             f"{_f(entry['accuracy,none'], '.3f')}, {entry['n_errors']} errors"]
    lines.append(f"{'cell':<22}{'n':>4}{'accuracy':>10}{'prefill s':>11}{'decode tok/s':>14}{'peak RSS GB':>13}")
    for cell, n, acc, pre, dec, rss in passkey_table(results):
        lines.append(f"{cell:<22}{n:>4}{_f(acc, '.2f'):>10}{_f(pre, '.1f'):>11}{_f(dec, '.2f'):>14}{_gb(rss):>13}")
    return lines


def run_passkey(args: argparse.Namespace) -> int:
    from hookkit.evals.passkey_task import PasskeyTask

    if args.trials < 1:
        raise ConfigError("--trials", f"expected a positive integer, got {args.trials}")
    for d in args.depths or ():
        if not 0.0 <= d <= 1.0:
            raise ConfigError("--depths", f"depth {d} is not a fraction in [0, 1]")

    def make_task(tokenizer: Any) -> PasskeyTask:
        return PasskeyTask(tokenizer, args.lengths, args.trials, trial_seed=args.trial_seed, depths=args.depths,
                           max_new_tokens=args.max_new_tokens, rng=args.rng)

    return run_eval(args, make_task, _passkey_summary)


# ------------------------------------------------------------------------------------------------------------------
# NIAH
# ------------------------------------------------------------------------------------------------------------------


def add_niah_parser(subparsers: Any) -> None:
    """``hookkit eval niah``."""
    from hookkit.evals.niah_task import NIAH_MAX_NEW_TOKENS

    help_text = "needle in a haystack over a length x depth grid (KJV haystack): ROUGE-1 x10 and substring scores"
    p = subparsers.add_parser("niah", help=help_text, description=help_text + ". Protocol: eval-protocols.md §6.2.")
    add_longctx_model_args(p)
    g = p.add_argument_group("needle in a haystack")
    g.add_argument("--lengths", type=int_list, default=[2048, 4096, 8192], metavar="N[,N...]",
                   help="prompt lengths in tokens (default 2048,4096,8192)")
    g.add_argument("--depths", type=float_list, default=[0.0, 25.0, 50.0, 75.0, 100.0], metavar="P[,P...]",
                   help="needle depths in percent (default 0,25,50,75,100)")
    g.add_argument("--haystack", metavar="FILE", help="UTF-8 haystack text (default: the shipped KJV)")
    g.add_argument("--max-new-tokens", type=int, default=NIAH_MAX_NEW_TOKENS,
                   help=f"greedy budget (default {NIAH_MAX_NEW_TOKENS}, §6.2)")
    g.add_argument("--no-heatmap", action="store_true", help="do not draw the heatmap PNGs")
    add_run_args(p)
    p.set_defaults(eval_run=run_niah)


def _niah_summary(results: dict[str, Any], task: Any) -> list[str]:
    entry = results["results"]["niah"]
    lines = [f"niah: {results['n-samples']['niah']['effective']} cells, ROUGE-1 x10 "
             f"{_f(entry['rouge1_x10,none'], '.2f')}, substring {_f(entry['substring_accuracy,none'], '.2f')}, "
             f"{entry['n_errors']} errors"]
    lines.append(f"{'length':>8}{'n':>4}{'ROUGE x10':>11}{'substring':>11}{'prefill s':>11}{'peak RSS GB':>13}")
    for n, c in entry["per_length,none"].items():
        lines.append(f"{n:>8}{c['n']:>4}{_f(c['rouge1_x10'], '.2f'):>11}{_f(c['substring_accuracy'], '.2f'):>11}"
                     f"{_f(c['prefill_s_median'], '.1f'):>11}{_gb(c['peak_rss_bytes_max']):>13}")
    return lines


def run_niah(args: argparse.Namespace) -> int:
    from hookkit.errors import InputError
    from hookkit.evals.niah_task import NiahTask, write_heatmaps
    from hookkit.evals.runner import OutputPaths, read_jsonl

    for d in args.depths:
        if not 0.0 <= d <= 100.0:
            raise ConfigError("--depths", f"depth {d} is not a percentage in [0, 100]")
    haystack = None
    if args.haystack:
        try:
            haystack = Path(args.haystack).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--haystack {args.haystack}: cannot read it as UTF-8 text ({exc})") from exc

    def make_task(tokenizer: Any) -> NiahTask:
        return NiahTask(tokenizer, args.lengths, args.depths, haystack=haystack, haystack_name=args.haystack,
                        max_new_tokens=args.max_new_tokens)

    def after(task: Any, out: Path) -> list[str]:
        if args.no_heatmap:
            return []
        records, _, _ = read_jsonl(OutputPaths(out, task.name).samples)
        return [f"heatmap: {p}" for p in write_heatmaps(records, out, title=f"NIAH {args.model}")]

    return run_eval(args, make_task, _niah_summary, after)


# ------------------------------------------------------------------------------------------------------------------
# long-context perplexity
# ------------------------------------------------------------------------------------------------------------------


def add_longppl_parser(subparsers: Any) -> None:
    """``hookkit eval longppl``."""
    help_text = "perplexity per window of a long text (one forward per sample): where does the model break?"
    p = subparsers.add_parser("longppl", help=help_text, description=help_text)
    add_longctx_model_args(p)
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
    add_run_args(p)
    p.set_defaults(eval_run=run_longppl)


def _longppl_summary(results: dict[str, Any], task: Any) -> list[str]:
    entry = results["results"]["longppl"]
    lines = [f"longppl: {results['n-samples']['longppl']['effective']} samples, overall ppl "
             f"{_f(entry['ppl,none'], '.3f')}, forward {_f(entry['forward_s_median,none'], '.1f')} s, peak RSS "
             f"{_gb(entry['peak_rss_bytes_max,none'])} GB"]
    lines.append(f"{'window':>14}{'tokens':>8}{'ppl':>12}")
    for w in entry["windows,none"]:
        lines.append(f"{w['start']:>6}-{w['end']:<7}{w['tokens']:>8}{_f(w['ppl'], '.3f'):>12}")
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

    return run_eval(args, make_task, _longppl_summary)
