"""``hookkit tune``: continue-tune a trainable adapter (MoH, ALoRA, LoRA) on plain-text files.

    hookkit tune --method moh --model smollm2 --data kjv --steps 200 --lr 2e-4 --output runs/moh75
    hookkit tune --method alora --model smollm2 --data notes.txt --param rank=8 --output runs/alora
    hookkit tune ... --output runs/moh75 --resume        # continue from runs/moh75/checkpoint
    hookkit.load("smollm2", adapter="runs/moh75")        # use the result (or --recipe runs/moh75/recipe.json)
"""

from __future__ import annotations

import argparse
import json
import sys

from hookkit.cli.common import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.evals.corpus import CORPORA
    from hookkit.methods.training import TrainConfig

    d = TrainConfig()
    p.add_argument("--method", required=True, help="trainable method: moh | alora | lora")
    p.add_argument("--model", required=True, help="alias (see `hookkit list`), local checkpoint folder or hub id")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text file(s), or a built-in public-domain corpus: "
                        + "; ".join(f"{k} = {v}" for k, v in CORPORA.items()))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (repeatable; JSON values), e.g. --param rank=16")
    p.add_argument("--output", required=True, help="output folder (adapter, checkpoint/, log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"blocks per step (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per block (default {d.seq_len})")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"held-out perplexity and checkpoint every N steps (default {d.eval_every})")
    p.add_argument("--eval-blocks", type=int, default=d.eval_blocks,
                   help=f"held-out blocks per evaluation, evenly spaced (default {d.eval_blocks}; 0 = all)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint interval (default: --eval-every)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"data order and dropout seed (default {d.seed})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help=f"default {d.warmup_steps}")
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant"],
                   help="learning-rate schedule after warm-up (cosine decays to 10%%)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0 = off)")
    p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction,
                   help=f"tail of the text held out for perplexity (default {d.heldout_fraction})")
    p.add_argument("--dtype", default="float32", help="base model dtype (default float32; adapters train in fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    import hookkit
    from hookkit.cli.common import parse_param_strings
    from hookkit.errors import ConfigError
    from hookkit.evals.corpus import load_corpus
    from hookkit.methods.registry import build_method
    from hookkit.methods.trainable import adapter_method_names
    from hookkit.methods.training import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    params = parse_param_strings(args.param)
    if args.method not in adapter_method_names():
        raise ConfigError("--method", f"{args.method!r} is not a trainable method", adapter_method_names())
    if args.method == "moh" and params.get("variant", "query_norm") == "query_norm" and "lora_rank" not in params:
        # The query-norm router has no parameters; MoH-LLaMA3 continue-tunes the whole model. hookkit keeps the
        # base frozen and tunes LoRA deltas on the attention projections instead (docs/methods/moh.md).
        params["lora_rank"] = 16
        print("hookkit tune: moh's query-norm router has no parameters; tuning LoRA deltas of rank 16 on "
              "q/k/v/o_proj (override with --param lora_rank=N)", file=sys.stderr)
    intervention = build_method(args.method, params)
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                         eval_every=args.eval_every, eval_blocks=args.eval_blocks or None, seed=args.seed,
                         weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, schedule=args.schedule,
                         grad_clip=args.grad_clip or None, save_every=args.save_every,
                         heldout_fraction=args.heldout_fraction)
    config.validate()
    train_text, heldout_text = load_corpus(args.data, config.heldout_fraction)
    model, tokenizer = hookkit.load(args.model, dtype=args.dtype)
    trainer = Trainer(model, tokenizer, intervention, config, args.output, train_text=train_text,
                      heldout_text=heldout_text, progress=not args.no_progress, data_sources=list(args.data))
    summary = trainer.train(resume=args.resume)
    summary["output"] = args.output
    if args.json:
        print_json(summary)
    else:
        ev = summary.get("final_eval") or {}
        ppl = f", held-out perplexity {ev['heldout_ppl']:.3f}" if ev else ""
        print(f"{args.method}: {summary['steps_done']}/{summary['steps']} steps, "
              f"{summary['trainable_parameters']:,} trainable parameters{ppl}; adapter in {args.output} "
              f"(load with hookkit.load(..., adapter={json.dumps(args.output)}))")
    return 0


COMMAND = ("tune", "continue-tune a trainable adapter (moh, alora, lora) on plain-text files", add_arguments, run)
