"""Benchmark of issue 5 (MoH and ALoRA) on SmolLM2-135M-Instruct, CPU, fp32. Results: bench/results/moh_alora*.json.

    python bench/moh_alora.py moh-quality   --steps 200    # held-out perplexity: dense / MoH-75% before & after / naive drop
    python bench/moh_alora.py alora-vs-lora --steps 200    # same rank, task 'kjv-refs': perplexity + trainable params
    python bench/moh_alora.py moh-speed     --reps 7       # decode tokens/s: dense vs MoH-75% masked vs with head skipping

Every number is measured by this script; nothing is hard-coded. Training runs write their adapters, checkpoints
and logs under runs/bench_moh_alora/ (git-ignored). Timings are medians over interleaved repetitions (the machine
is shared), with the per-repetition paired ratios reported as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hookkit  # noqa: E402
from hookkit import compat  # noqa: E402
from hookkit.evals.corpus import load_corpus  # noqa: E402
from hookkit.methods.alora import ALoRA  # noqa: E402
from hookkit.methods.lora import LoRA  # noqa: E402
from hookkit.methods.moh import MoH  # noqa: E402
from hookkit.methods.training import TrainConfig, Trainer, heldout_perplexity, tokenize_blocks  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench_moh_alora"
ATTN_TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "gpu": torch.cuda.is_available(),
            "loadavg_at_start": os.getloadavg()}


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def eval_with(model: Any, blocks: torch.Tensor, iv: Any | None, batch_size: int) -> dict[str, float]:
    if iv is None:
        return heldout_perplexity(model, blocks, batch_size)
    with hookkit.attach(model, iv):
        if hasattr(iv, "adapter_module") and iv.is_built:
            iv.adapter_module.eval()
        return heldout_perplexity(model, blocks, batch_size)


def train(model: Any, tok: Any, iv: Any, cfg: TrainConfig, name: str, data: list[str], resume: bool) -> dict:
    train_text, heldout_text = load_corpus(data, cfg.heldout_fraction)
    out = RUNS / name
    trainer = Trainer(model, tok, iv, cfg, out, train_text=train_text, heldout_text=heldout_text,
                      data_sources=data)
    has_ckpt = (out / "checkpoint" / "trainer_state.json").exists()
    summary = trainer.train(resume=resume and has_ckpt)
    summary["output"] = str(out.relative_to(ROOT))
    summary["log"] = str((out / "log.jsonl").relative_to(ROOT))
    return summary


def attach_curves(rows: dict[str, Any]) -> None:
    """Copy each trained row's held-out evaluations and its training loss every 10 steps from its log.jsonl
    (runs/ is git-ignored, the result file is not)."""
    for row in rows.values():
        log_path = ROOT / row.get("training", {}).get("log", "-")
        if not log_path.is_file():
            continue
        records = [json.loads(line) for line in log_path.read_text().splitlines() if line]
        row["training"]["heldout_curve"] = [{"step": r["step"], "heldout_ppl": r["heldout_ppl"]}
                                            for r in records if "heldout_ppl" in r]
        row["training"]["loss_every_10_steps"] = [{"step": r["step"], "loss": round(r["loss"], 4)}
                                                  for r in records if "loss" in r and r["step"] % 10 == 0]


# ---------------------------------------------------------------------------------------------- quality
def moh_quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, tok = hookkit.load("smollm2", dtype="float32")
    info = hookkit.get_model_info(model)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                      eval_every=args.eval_every, eval_blocks=args.eval_blocks, seed=args.seed,
                      warmup_steps=args.warmup)
    train_text, heldout_text = load_corpus(["kjv"], cfg.heldout_fraction)
    heldout = tokenize_blocks(tok, heldout_text, cfg.seq_len)
    index = torch.linspace(0, len(heldout) - 1, min(args.eval_blocks, len(heldout))).round().long().unique()
    blocks = heldout[index]
    path = RESULTS / "moh_alora_quality.json"
    result: dict[str, Any] = {
        "benchmark": "MoH-75% on SmolLM2-135M-Instruct, KJV corpus (hookkit/evals/data/kjv.txt.gz)",
        "command": " ".join(sys.argv), "machine": machine(), "train_config": vars(cfg),
        "heldout": {"blocks": len(blocks), "seq_len": cfg.seq_len, "tokens_predicted": len(blocks) * (cfg.seq_len - 1),
                    "split": "split_train_heldout(kjv, 0.05): Colossians 2 -> Revelation 22; evenly spaced blocks"},
        "moh_budget": {str(k): vars(v) for k, v in list(MoH().budgets(info).items())[:1]},
        "rows": {},
    }
    if path.exists() and args.resume:
        result["rows"] = json.loads(path.read_text()).get("rows", {})

    def record(name: str, description: str, row: dict[str, Any]) -> None:
        result["rows"][name] = {"description": description, **row}
        write(path, result)
        print(f"{name}: {row.get('heldout_ppl')}", flush=True)

    lora = {"lora_rank": args.rank, "lora_targets": ATTN_TARGETS}
    plan = [
        ("dense", "stock SmolLM2 (all 9 heads)", None, None),
        ("moh75_before", "MoH-75% query-norm router (shared heads 0-3, top-3 of 4-8), no tuning", MoH(), None),
        ("naive_drop", "heads 7-8 of every layer removed (7/9 active, same budget), no tuning",
         MoH(shared=7, routed=0), None),
        ("moh75_tuned", f"MoH-75% + LoRA r{args.rank} on q/k/v/o, tuned {args.steps} steps",
         MoH(**lora), "moh75"),
        ("dense_lora_tuned", f"dense + LoRA r{args.rank} on q/k/v/o, tuned {args.steps} steps (control: same "
         "data and budget)", LoRA(rank=args.rank, target_modules=ATTN_TARGETS, dropout=0.0), "dense_lora"),
    ]
    if args.tune_naive:
        plan.append(("naive_drop_tuned", f"heads 7-8 removed + LoRA r{args.rank} on q/k/v/o, tuned {args.steps} "
                     "steps", MoH(shared=7, routed=0, **lora), "naive_drop"))
    for name, desc, iv, run_name in plan:
        if name in result["rows"] and args.resume:
            continue
        row: dict[str, Any] = {}
        if run_name is not None:
            t0 = time.time()
            row["training"] = train(model, tok, iv, cfg, run_name, ["kjv"], resume=args.resume)
            row["training"]["wall_s"] = round(time.time() - t0, 1)
            row["trainable_parameters"] = iv.num_trainable_parameters()
        row.update(eval_with(model, blocks, iv, cfg.batch_size))
        record(name, desc, row)
    rows = result["rows"]
    attach_curves(rows)
    if "dense" in rows:
        base = rows["dense"]["heldout_ppl"]
        result["ratios_vs_dense"] = {k: round(v["heldout_ppl"] / base, 4) for k, v in rows.items()}
    write(path, result)


# ---------------------------------------------------------------------------------------------- ALoRA vs LoRA
def alora_vs_lora(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, tok = hookkit.load("smollm2", dtype="float32")
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                      eval_every=args.eval_every, eval_blocks=args.eval_blocks, seed=args.seed,
                      warmup_steps=args.warmup)
    data = ["kjv-refs"]
    _, heldout_text = load_corpus(data, cfg.heldout_fraction)
    heldout = tokenize_blocks(tok, heldout_text, cfg.seq_len)
    index = torch.linspace(0, len(heldout) - 1, min(args.eval_blocks, len(heldout))).round().long().unique()
    blocks = heldout[index]
    path = RESULTS / "moh_alora_alora_vs_lora.json"
    result: dict[str, Any] = {
        "benchmark": "ALoRA (reconstruction, variant A) vs LoRA at equal rank on SmolLM2-135M-Instruct",
        "task": "kjv-refs: KJV verses as 'Book C:V text' lines (reference numbering must be tracked across lines); "
                "held-out = Colossians 2 -> Revelation 22",
        "command": " ".join(sys.argv), "machine": machine(), "train_config": vars(cfg),
        "heldout": {"blocks": len(blocks), "seq_len": cfg.seq_len, "tokens_predicted": len(blocks) * (cfg.seq_len - 1)},
        "rows": {},
    }
    if path.exists() and args.resume:
        result["rows"] = json.loads(path.read_text()).get("rows", {})
    common = {"rank": args.rank, "target_modules": ["self_attn.q_proj", "self_attn.v_proj"], "dropout": 0.05}
    plan = [("base", "SmolLM2 without adapter", None, None),
            ("lora", f"LoRA r{args.rank} on q/v", LoRA(**common), "lora_refs"),
            ("alora", f"ALoRA r{args.rank} on q/v, {args.heads} adapter heads, variant A (residual)",
             ALoRA(num_heads=args.heads, **common), "alora_refs")]
    for name, desc, iv, run_name in plan:
        if name in result["rows"] and args.resume:
            continue
        row: dict[str, Any] = {"description": desc}
        if run_name is not None:
            t0 = time.time()
            row["training"] = train(model, tok, iv, cfg, run_name, data, resume=args.resume)
            row["training"]["wall_s"] = round(time.time() - t0, 1)
            row["trainable_parameters"] = iv.num_trainable_parameters()
        row.update(eval_with(model, blocks, iv, cfg.batch_size))
        result["rows"][name] = row
        write(path, result)
        print(f"{name}: {row['heldout_ppl']}", flush=True)
    attach_curves(result["rows"])
    write(path, result)


# ---------------------------------------------------------------------------------------------- speed
def _decode_run(model: Any, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy decode ``new_tokens`` after a prefill of ``ids``; returns decode tokens/s (prefill not timed)."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        past, nxt = compat.cache_from_output(out), out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, **compat.with_cache(model, past), use_cache=True)
            past, nxt = compat.cache_from_output(out), out.logits[:, -1:].argmax(-1)
        dt = time.perf_counter() - t0
    return ids.shape[0] * new_tokens / dt


def _attention_micro(info: Any, ctx: int, reps: int) -> dict[str, Any]:
    """Time one layer's decode attention call: stock sdpa vs MoH's sparse-head path, same kept heads."""
    from hookkit.methods.moh import sparse_head_attention

    module = info.attentions[0]
    h, hkv, d = info.num_heads, info.num_kv_heads, info.head_dim
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, h, 1, d, generator=g)
    k, v = torch.randn(1, hkv, ctx, d, generator=g), torch.randn(1, hkv, ctx, d, generator=g)
    keep = torch.zeros(h, dtype=torch.bool)
    keep[:4] = True
    keep[[4, 6, 8]] = True  # a typical MoH-75% pattern: shared 0-3 + 3 routed heads

    class Call:  # the fields sparse_head_attention reads
        query, key, value, attention_mask, scaling, n_rep = q, k, v, None, d ** -0.5, h // hkv

    times: dict[str, list[float]] = {"dense_sdpa": [], "sparse_heads": []}
    with torch.no_grad():
        for _ in range(reps):
            for name in times:
                t0 = time.perf_counter()
                for _ in range(50):
                    if name == "dense_sdpa":
                        compat.sdpa_attention(module, q, k, v, None, scaling=d ** -0.5)
                    else:
                        sparse_head_attention(Call, keep)
                times[name].append((time.perf_counter() - t0) / 50 * 1e6)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"context": ctx, "kept_heads": int(keep.sum()), "median_us": med,
            "sparse_over_dense": round(med["sparse_heads"] / med["dense_sdpa"], 3), "runs_us": times}


def moh_speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model, tok = hookkit.load("smollm2", dtype="float32")
    info = hookkit.get_model_info(model)
    _, heldout_text = load_corpus(["kjv"])
    all_ids = tok(heldout_text[:200_000], return_tensors="pt").input_ids
    configs = {"dense": None, "moh75_masked": MoH(), "moh75_skip": MoH(skip_heads=True)}
    result: dict[str, Any] = {
        "benchmark": "decode tokens/s, SmolLM2-135M-Instruct fp32, greedy, KV cache, prefill not timed",
        "command": " ".join(sys.argv), "machine": machine(), "new_tokens": args.new_tokens, "reps": args.reps,
        "configs": {"dense": "stock model", "moh75_masked": "MoH-75% query-norm, gates applied after dense "
                    "attention (like the released code)", "moh75_skip": "MoH-75% with skip_heads=True"},
        "settings": [],
    }
    path = RESULTS / "moh_alora_speed.json"
    for batch, ctx in [tuple(map(int, s.split("x"))) for s in args.settings]:
        ids = torch.stack([all_ids[0, i * ctx:(i + 1) * ctx] for i in range(batch)])
        runs: dict[str, list[float]] = {n: [] for n in configs}
        kept: list[float] = []
        for rep in range(args.reps + 1):  # rep 0 is a warm-up, not recorded
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))
            for name in order:
                iv = configs[name]
                if iv is None:
                    tps = _decode_run(model, ids, args.new_tokens)
                else:
                    with hookkit.attach(model, iv) as session:
                        tps = _decode_run(model, ids, args.new_tokens)
                        if name == "moh75_skip":
                            gates = session.states[iv]["gates"]
                            kept.append(statistics.mean(float((g != 0).flatten(0, -2).any(0).float().mean())
                                                        for g in gates.values()))
                if rep:
                    runs[name].append(tps)
            print(f"batch {batch} ctx {ctx} rep {rep}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in runs.items()
                                                                      if v), flush=True)
        med = {n: statistics.median(v) for n, v in runs.items()}
        paired = {n: statistics.median(a / b for a, b in zip(runs[n], runs["dense"])) for n in runs if n != "dense"}
        paired["skip_vs_masked"] = statistics.median(a / b for a, b in zip(runs["moh75_skip"], runs["moh75_masked"]))
        result["settings"].append({
            "batch": batch, "context": ctx, "median_tok_s": med,
            "ratio_of_medians_vs_dense": {n: round(med[n] / med["dense"], 3) for n in med},
            "median_paired_ratio": {n: round(v, 3) for n, v in paired.items()},
            "fraction_of_query_heads_computed_last_step": round(statistics.mean(kept), 4) if kept else None,
            "runs_tok_s": runs, "loadavg_after": os.getloadavg()})
        write(path, result)
    result["attention_micro"] = [_attention_micro(info, c, args.reps) for c in (2048, 8192)]
    write(path, result)


# ---------------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace) -> None:
    """Markdown tables of the three result files (pasted into docs/benchmarks.md)."""
    out = []
    q = RESULTS / "moh_alora_quality.json"
    if q.exists():
        data = json.loads(q.read_text())
        rows = data["rows"]
        base = rows["dense"]["heldout_ppl"]
        out += ["| model | held-out ppl | vs dense | trainable params | training wall time |", "|---|---|---|---|---|"]
        for name, r in rows.items():
            t = r.get("training", {})
            out.append(f"| {r['description']} (`{name}`) | {r['heldout_ppl']:.2f} | {r['heldout_ppl'] / base:.3f}x | "
                       f"{r.get('trainable_parameters', 0):,} | {t.get('wall_s', 0) / 60:.0f} min |"
                       if t else f"| {r['description']} (`{name}`) | {r['heldout_ppl']:.2f} | "
                       f"{r['heldout_ppl'] / base:.3f}x | 0 | - |")
        out.append("")
    a = RESULTS / "moh_alora_alora_vs_lora.json"
    if a.exists():
        data = json.loads(a.read_text())
        rows = data["rows"]
        out += ["| adapter | held-out ppl | trainable params | training wall time |", "|---|---|---|---|"]
        for name, r in rows.items():
            t = r.get("training", {})
            out.append(f"| {r['description']} (`{name}`) | {r['heldout_ppl']:.3f} | "
                       f"{r.get('trainable_parameters', 0):,} | " + (f"{t['wall_s'] / 60:.0f} min |" if t else "- |"))
        out.append("")
    s = RESULTS / "moh_alora_speed.json"
    if s.exists():
        data = json.loads(s.read_text())
        out += ["| batch x context | dense tok/s | MoH-75% masked tok/s | MoH-75% skip tok/s | masked/dense | "
                "skip/dense | skip/masked (paired) | query heads computed |", "|---|---|---|---|---|---|---|---|"]
        for st in data["settings"]:
            m, r, p = st["median_tok_s"], st["ratio_of_medians_vs_dense"], st["median_paired_ratio"]
            out.append(f"| {st['batch']} x {st['context']} | {m['dense']:.2f} | {m['moh75_masked']:.2f} | "
                       f"{m['moh75_skip']:.2f} | {r['moh75_masked']:.3f} | {r['moh75_skip']:.3f} | "
                       f"{p['skip_vs_masked']:.3f} | {st['fraction_of_query_heads_computed_last_step']:.3f} |")
        out.append("")
        for mic in data.get("attention_micro", []):
            out.append(f"- attention call alone, context {mic['context']}, {mic['kept_heads']}/9 heads: dense sdpa "
                       f"{mic['median_us']['dense_sdpa']:.0f} µs, sparse heads {mic['median_us']['sparse_heads']:.0f} "
                       f"µs (ratio {mic['sparse_over_dense']:.2f})")
    print("\n".join(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("moh-quality", "alora-vs-lora"):
        s = sub.add_parser(name)
        s.add_argument("--steps", type=int, default=200)
        s.add_argument("--lr", type=float, default=3e-4)
        s.add_argument("--batch-size", type=int, default=4)
        s.add_argument("--seq-len", type=int, default=256)
        s.add_argument("--eval-every", type=int, default=50)
        s.add_argument("--eval-blocks", type=int, default=64)
        s.add_argument("--warmup", type=int, default=10)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--rank", type=int, default=16 if name == "moh-quality" else 8)
        s.add_argument("--resume", action="store_true", help="keep finished rows and resume training checkpoints")
        s.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared machine)")
        if name == "moh-quality":
            s.add_argument("--tune-naive", action="store_true", help="also tune the naive-drop model")
        else:
            s.add_argument("--heads", type=int, default=2)
    s = sub.add_parser("moh-speed")
    s.add_argument("--reps", type=int, default=7)
    s.add_argument("--new-tokens", type=int, default=32)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--settings", nargs="+", default=["1x512", "1x2048", "4x512"], help="BATCHxCONTEXT")
    sub.add_parser("report", help="print the markdown tables of the result files")
    args = p.parse_args()
    {"moh-quality": moh_quality, "alora-vs-lora": alora_vs_lora, "moh-speed": moh_speed, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
