"""What every ``hookkit eval`` task shares: option groups, model loading, and the attach-evaluate-report run.

A task is a ``TaskCommand`` (help text, ``add_arguments(parser)``, ``run(args)``) listed in
``hookkit.registry.TASKS``; the built-in ones live in ``hookkit/cli/tasks/``. An outside package adds a task with
the ``hookkit.tasks`` entry point, building its ``run`` from the pieces here (``run_eval``), so its results get the
shared schema, resume and atomic per-sample logs for free.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookkit import compat
from hookkit.cli.common import add_method_args, add_model_args, limit_arg, positive_int, recipe_from_args
from hookkit.errors import ConfigError


@dataclass(frozen=True)
class TaskCommand:
    """One ``hookkit eval NAME`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


# ------------------------------------------------------------------------------------------------ option groups
def add_runner_args(p: argparse.ArgumentParser) -> None:
    """Output, sample selection, seeding, batching and resume options of :func:`hookkit.evals.runner.evaluate`."""
    g = p.add_argument_group("run")
    g.add_argument("--output-path", required=True, metavar="DIR",
                   help="output folder: results_<task>.json, samples_<task>.jsonl, run_<task>.manifest.json")
    g.add_argument("--limit", type=limit_arg, default=None, metavar="N",
                   help="evaluate only the first N samples (or a fraction in (0, 1))")
    g.add_argument("--seed", type=int, default=1234, help="python/numpy/torch seed, reseeded per batch (default 1234)")
    g.add_argument("--batch-size", type=positive_int, default=1,
                   help="samples per generate call, left-padded (default 1)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --output-path (same model, data, recipe and settings)")
    g.add_argument("--retry-errors", action="store_true", help="with --resume: re-run samples that ended in an error")
    g.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")


def add_generation_args(p: argparse.ArgumentParser, *, max_new_tokens: int, why: str) -> None:
    """Decoding options; greedy by default."""
    g = p.add_argument_group("decoding (greedy unless --do-sample)")
    g.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                   help=f"generation budget (default {max_new_tokens}: {why})")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding (e.g. VCD's protocol)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --do-sample)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling p (with --do-sample)")
    g.add_argument("--num-beams", type=positive_int, default=None, help="beam search width (default 1)")


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``model.generate`` keyword arguments from :func:`add_generation_args` options (max_new_tokens apart)."""
    if not args.do_sample and (args.temperature is not None or args.top_p is not None):
        raise ConfigError("--temperature/--top-p", "only apply with --do-sample")
    out: dict[str, Any] = {"do_sample": bool(args.do_sample)}
    if args.temperature is not None:
        out["temperature"] = args.temperature
    if args.top_p is not None:
        out["top_p"] = args.top_p
    if args.num_beams is not None:
        out["num_beams"] = args.num_beams
    return out


# ------------------------------------------------------------------------------------------------ long context
ROPE_TYPES = ("dynamic", "linear", "yarn")


def rope_scaling(text: str) -> tuple[str, float]:
    """``--rope-scaling TYPE:FACTOR``, e.g. ``dynamic:2`` (transformers' dynamic NTK)."""
    import re

    m = re.fullmatch(r"([a-z_]+):([0-9.]+)", text.strip())
    if m is None or m.group(1) not in ROPE_TYPES:
        raise argparse.ArgumentTypeError(f"expected TYPE:FACTOR with TYPE in {ROPE_TYPES}, got {text!r}")
    return m.group(1), float(m.group(2))


def add_long_context_model_args(p: argparse.ArgumentParser) -> None:
    """Model options of the long-context tasks: SmolLM2 and ``--dtype fast`` by default, RoPE scaling, threads."""
    from hookkit.models.loading import FAST_DTYPE

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


def rope_parameters(model_name: str, spec: tuple[str, float] | None) -> dict[str, Any] | None:
    """``rope_parameters`` for ``from_pretrained`` from ``--rope-scaling`` (keeps the checkpoint's rope_theta)."""
    if spec is None:
        return None
    from transformers import AutoConfig

    from hookkit.models.loading import resolve

    cfg = compat.text_config(AutoConfig.from_pretrained(resolve(model_name).source))
    base = dict(getattr(cfg, "rope_parameters", None) or {})
    if "rope_type" in base and base.get("rope_type") != "default":
        raise ConfigError("--rope-scaling", f"the model already uses rope_type {base['rope_type']!r}")
    kind, factor = spec
    params: dict[str, Any] = {"rope_type": kind, "factor": factor, "rope_theta": base.get("rope_theta", 10000.0)}
    if kind == "yarn":
        params["original_max_position_embeddings"] = cfg.max_position_embeddings
    return params


# ------------------------------------------------------------------------------------------------ loading
def load_for_eval(args: argparse.Namespace, state: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model on this process's device (one GPU per process under ``accelerate launch``); returns
    ``(model, processor, model_info)`` with what the results record about the model."""
    import torch

    import hookkit
    from hookkit.models.base import model_device
    from hookkit.models.loading import resolve_dtype

    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads", f"expected a positive integer, got {threads}")
        torch.set_num_threads(threads)
    if args.device_map is None and torch.cuda.is_available():
        args.device_map = {"": str(state.device)}
    dtype = resolve_dtype(args.dtype, args.device_map)
    rope = rope_parameters(args.model, getattr(args, "rope_scaling", None))
    kwargs = {"rope_parameters": rope} if rope is not None else {}
    model, processor = hookkit.load(args.model, dtype=dtype, device_map=args.device_map,
                                    attn_implementation=args.attn_implementation, **kwargs)
    if rope is not None and (getattr(compat.text_config(model.config), "rope_parameters", None) or {}).get(
            "rope_type") != rope["rope_type"]:
        raise ConfigError("--rope-scaling", "the model ignored the rope_parameters override")
    effective_attn = compat.attn_implementation(compat.text_config(model.config))  # what "default" resolved to
    info = {"model": args.model, "dtype": dtype, "attn_implementation": args.attn_implementation or effective_attn,
            "device": str(model_device(model)), "device_map": args.device_map}
    if hasattr(args, "rope_scaling"):
        info.update({"rope_parameters": rope, "torch_threads": torch.get_num_threads()})
    info["fingerprint"] = hookkit.get_model_info(model).fingerprint()
    return model, processor, info


# ------------------------------------------------------------------------------------------------ the run
def run_eval(args: argparse.Namespace, make_task: Callable[[Any], Any],
             summarize: Callable[[dict[str, Any]], list[str]],
             after: Callable[[Any, Path], list[str]] | None = None, *, task_needs_processor: bool = False) -> int:
    """Build the task, load the model, attach the recipe (if any), evaluate, print a summary on the main process.

    ``make_task`` gets the generation keyword arguments (tasks that decode with ``generate``), or the processor
    when ``task_needs_processor`` (long-context tasks tokenise their own prompts). Tasks that do not need the
    processor are built *before* the model loads, so a typo in a data path fails in a second rather than after
    loading a 7B checkpoint. The recipe is checked against the model by ``hookkit.attach`` itself.
    """
    import hookkit
    from hookkit.evals.results import intervention_record
    from hookkit.evals.runner import evaluate, get_state

    state = get_state()
    recipe = recipe_from_args(args)
    task = None if task_needs_processor else make_task(generation_kwargs(args))
    model, processor, model_info = load_for_eval(args, state)
    if task is None:
        task = make_task(processor)
    task.model, task.processor = model, processor
    cli_args = {k: v for k, v in vars(args).items() if not callable(v) and not isinstance(v, TaskCommand)}
    with hookkit.attach(model, recipe) if recipe is not None else contextlib.nullcontext() as session:
        if session is not None:  # unsupported generation modes fail now, before a run folder exists
            session.check_generation(dict(getattr(task, "generate_kwargs", None) or {}))
        intervention = intervention_record(recipe, model)
        try:
            results = evaluate(task, output_dir=args.output_path, model_info=model_info, intervention=intervention,
                               limit=args.limit, seed=args.seed, resume=args.resume, batch_size=args.batch_size,
                               progress=not args.no_progress, cli_args=cli_args,
                               retry_errors=args.retry_errors, state=state)
        except FileExistsError as exc:
            raise ConfigError("--output-path", str(exc)) from None
        except ValueError as exc:
            if str(exc).startswith("cannot resume"):  # the runner's manifest check: a different run lives there
                raise ConfigError("--resume", str(exc)) from None
            raise
    if state.is_main_process:
        out = Path(args.output_path)
        for line in summarize(results):
            print(line)
        if after is not None:
            for line in after(task, out):
                print(line)
        print(f"results: {out / f'results_{task.name}.json'}")
    return 0


def fmt(value: Any, spec: str) -> str:
    """A number formatted with ``spec``, or ``-`` for None/NaN/non-numbers (summary tables)."""
    return "-" if not isinstance(value, (int, float)) or value != value else format(value, spec)


def gigabytes(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) or value != value else f"{value / 1e9:.2f}"
