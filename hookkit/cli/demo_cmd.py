"""``hookkit demo``: two small end-to-end jobs that print a table.

``--task passkey`` (default): stock SmolLM2 vs LongHeads on passkey retrieval beyond the trained length.
``--task hallucination``: stock vs VHR vs VAR on POPE-adversarial with the embedded scenes-llava LVLM
(:mod:`hookkit.cli.demo_hallucination`).

The embedded SmolLM2-135M-Instruct is trained to 8192 tokens; with stock attention it cannot read a 12k-token
passkey prompt (0/10 in transformers-v5.md §9.1). The demo runs the same seeded trials with the stock model and
with ``longheads`` (defaults: 256-token chunks, 4096 tokens per head) and prints accuracy, prefill seconds,
decode tokens/s and peak memory for each. A few trials take a few minutes on two CPU cores.

    hookkit demo                       # 12k tokens, 2 trials each
    hookkit demo --length 16k --trials 3 --dtype bfloat16 --output-path out/demo
    hookkit demo --task hallucination  # scenes-llava, 30 images, 180 POPE-adversarial questions per method
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from hookkit import compat
from hookkit.cli.common import int_list, parse_param_strings, print_table
from hookkit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.cli.demo_hallucination import add_hallucination_arguments
    from hookkit.models.loading import FAST_DTYPE

    p.add_argument("--task", choices=("passkey", "hallucination"), default="passkey",
                   help="passkey (default): stock vs LongHeads beyond SmolLM2's trained length; hallucination: "
                   "stock vs VHR vs VAR on POPE-adversarial with scenes-llava")
    p.add_argument("--model", default=None,
                   help="model alias or folder (default smollm2 for passkey, scenes-llava for hallucination)")
    p.add_argument("--dtype", default=FAST_DTYPE,
                   help="fast (default: bf16 on GPU or on CPUs with native bf16, else float32) | float32 | bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output-path", default=None, metavar="DIR",
                   help="also write results JSON + per-sample JSONL (one sub-folder per method)")
    g = p.add_argument_group("--task passkey")
    g.add_argument("--length", type=int_list, default=[12288], metavar="N",
                   help="passkey prompt length in tokens (default 12288 = 12k, beyond the trained 8192)")
    g.add_argument("--trials", type=int, default=2, help="trials per method (default 2)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="LongHeads parameter (repeatable), e.g. --param atten_length=2048")
    g.add_argument("--trial-seed", type=int, default=0, help="seed of the depth/key draws (default 0)")
    add_hallucination_arguments(p.add_argument_group("--task hallucination"))


def _row(name: str, recs: list[dict[str, Any]]) -> tuple[str, str, str, str, str, str]:
    from hookkit.evals.results import cell_summary

    c = cell_summary(recs)
    correct = sum(bool(r["correct"]) for r in recs)
    rss = c["peak_rss_bytes_max"]
    return (name, f"{correct}/{len(recs)}", f"{c['prefill_s_median']:.1f}",
            "-" if c["decode_tok_s_median"] is None else f"{c['decode_tok_s_median']:.2f}",
            "-" if rss is None else f"{rss / 1e9:.2f}", ", ".join(r["continuation"].strip()[:14] or "''" for r in recs))


def run(args: argparse.Namespace) -> int:
    if args.task == "hallucination":
        from hookkit.cli.demo_hallucination import run_hallucination

        return run_hallucination(args)
    return run_passkey(args)


def run_passkey(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    import hookkit
    from hookkit.evals.passkey.task import PasskeyTask
    from hookkit.methods.registry import build_method
    from hookkit.models.loading import resolve_dtype

    if args.trials < 1:
        raise ConfigError("--trials", f"expected a positive integer, got {args.trials}")
    if len(args.length) != 1:
        raise ConfigError("--length", "give one length")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    length = args.length[0]
    args.model = args.model or "smollm2"
    method = build_method("longheads", parse_param_strings(args.param))  # bad names fail before the model loads
    model, tokenizer = hookkit.load(args.model, dtype=dtype)  # prints the install command if SmolLM2 is missing
    trained = getattr(compat.text_config(model.config), "max_position_embeddings", None)
    print(f"hookkit demo: passkey retrieval at {length} tokens on {args.model} ({dtype}, trained to {trained} "
          f"tokens, {torch.get_num_threads()} threads), {args.trials} trials per method")
    task = PasskeyTask(tokenizer, [length], args.trials, trial_seed=args.trial_seed)
    task.model = model
    rows = []
    t0 = time.perf_counter()
    for name, iv in (("stock", None), ("longheads", method)):
        if args.output_path:
            rows.append(_row(name, _run_with_runner(task, model, iv, name, args, dtype)))
            continue
        recs = []
        with hookkit.attach(model, iv) if iv is not None else contextlib.nullcontext():
            for sample in tqdm(task.samples(), desc=name, unit="trial", dynamic_ncols=True):
                recs.append(task.predict_one(sample))
        rows.append(_row(name, recs))
    print_table(("method", "passkey", "prefill s", "decode tok/s", "peak RSS GB", "answers"), rows)
    print(f"\nlonghead settings: {method.describe()}; total {time.perf_counter() - t0:.0f} s. Peak RSS is the whole "
          "process (model weights included), sampled during each trial.")
    return 0


def _run_with_runner(task: Any, model: Any, iv: Any, name: str, args: argparse.Namespace,
                     dtype: str) -> list[dict[str, Any]]:
    from pathlib import Path

    import hookkit
    from hookkit.core.recipe import Recipe
    from hookkit.evals.results import intervention_record
    from hookkit.evals.runner import OutputPaths, evaluate, read_jsonl

    out = Path(args.output_path) / name
    intervention = intervention_record(Recipe.from_interventions([iv]) if iv is not None else None, model)
    info = {"model": args.model, "dtype": dtype, "device": "cpu"}
    with hookkit.attach(model, iv) if iv is not None else contextlib.nullcontext():
        evaluate(task, output_dir=out, model_info=info, intervention=intervention, seed=args.trial_seed,
                 resume=True, cli_args={k: v for k, v in vars(args).items() if not callable(v)})
    records, _, _ = read_jsonl(OutputPaths(out, task.name).samples)
    return records


COMMAND = ("demo", "stock vs LongHeads passkey at 12k tokens on SmolLM2, or (--task hallucination) stock vs VHR "
           "vs VAR on POPE with scenes-llava (prints a table)",
           add_arguments, run)
