"""``hookkit demo``: stock SmolLM2 vs LongHeads on passkey retrieval beyond the trained length, as a table.

The embedded SmolLM2-135M-Instruct is trained to 8192 tokens; with stock attention it cannot read a 12k-token
passkey prompt (0/10 in transformers-v5.md §9.1). The demo runs the same seeded trials with the stock model and
with ``longheads`` (defaults: 256-token chunks, 4096 tokens per head) and prints accuracy, prefill seconds,
decode tokens/s and peak memory for each. A few trials take a few minutes on two CPU cores.

    hookkit demo                       # 12k tokens, 2 trials each
    hookkit demo --length 16k --trials 3 --dtype bfloat16 --output-path out/demo
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from hookkit import compat
from hookkit.cli.common import int_list, parse_param_strings
from hookkit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.models.loading import FAST_DTYPE

    p.add_argument("--model", default="smollm2", help="model alias or folder (default smollm2, embedded)")
    p.add_argument("--length", type=int_list, default=[12288], metavar="N",
                   help="passkey prompt length in tokens (default 12288 = 12k, beyond the trained 8192)")
    p.add_argument("--trials", type=int, default=2, help="trials per method (default 2)")
    p.add_argument("--dtype", default=FAST_DTYPE,
                   help="fast (default: bf16 on GPU or on CPUs with native bf16, else float32) | float32 | bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="LongHeads parameter (repeatable), e.g. --param atten_length=2048")
    p.add_argument("--trial-seed", type=int, default=0, help="seed of the depth/key draws (default 0)")
    p.add_argument("--output-path", default=None, metavar="DIR",
                   help="also write results JSON + per-sample JSONL (stock/ and longheads/ sub-folders)")


def _row(name: str, recs: list[dict[str, Any]]) -> tuple[str, str, str, str, str, str]:
    from hookkit.evals.passkey_task import cell_summary

    c = cell_summary(recs)
    correct = sum(bool(r["correct"]) for r in recs)
    rss = c["peak_rss_bytes_max"]
    return (name, f"{correct}/{len(recs)}", f"{c['prefill_s_median']:.1f}",
            "-" if c["decode_tok_s_median"] is None else f"{c['decode_tok_s_median']:.2f}",
            "-" if rss is None else f"{rss / 1e9:.2f}", ", ".join(r["continuation"].strip()[:14] or "''" for r in recs))


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    import hookkit
    from hookkit.evals.passkey_task import PasskeyTask
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
    head = ("method", "passkey", "prefill s", "decode tok/s", "peak RSS GB", "answers")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"\nlonghead settings: {method.describe()}; total {time.perf_counter() - t0:.0f} s. Peak RSS is the whole "
          "process (model weights included), sampled during each trial.")
    return 0


def _run_with_runner(task: Any, model: Any, iv: Any, name: str, args: argparse.Namespace,
                     dtype: str) -> list[dict[str, Any]]:
    from pathlib import Path

    import hookkit
    from hookkit.core.recipe import Recipe
    from hookkit.evals.runner import OutputPaths, evaluate, read_jsonl

    out = Path(args.output_path) / name
    intervention = None
    if iv is not None:
        recipe = Recipe.from_interventions([iv])
        intervention = {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash()}
    info = {"model": args.model, "dtype": dtype, "device": "cpu"}
    with hookkit.attach(model, iv) if iv is not None else contextlib.nullcontext():
        evaluate(task, output_dir=out, model_info=info, intervention=intervention, seed=args.trial_seed,
                 resume=True, cli_args={k: v for k, v in vars(args).items() if not callable(v)})
    records, _, _ = read_jsonl(OutputPaths(out, task.name).samples)
    return records


COMMAND = ("demo", "stock vs LongHeads passkey retrieval at 12k tokens on the embedded SmolLM2 (prints a table)",
           add_arguments, run)
