"""Gate evaluation of scenes-llava runs with hookkit's own POPE and CHAIR runners, plus bootstrap CIs.

    nice -n 5 python bench/eval_scenes.py --run /work/scratch_scenes/runs/control \\
        --run /work/scratch_scenes/runs/biased --out /work/scratch_scenes/eval

For every run folder written by ``bench/train_scenes.py`` (its ``weights/`` and ``data/``):

1. build the checkpoint folder (:func:`hookkit.models.scenes_llava.build_checkpoint`) and load nothing else;
2. ``hookkit eval pope --build-from-annotations`` on the run's i.i.d. test split: the stock builder's random /
   popular / adversarial splits (the control's random split is the "does it see" gate);
3. ``hookkit eval pope --data`` on the co-occurrence-breaking split with the files of
   :func:`hookkit.evals.scenes.build_prior_pope` (negatives: the absent partner vs. an absent non-partner of a
   present shape); both runs answer the same questions on the same images;
4. ``hookkit eval chair`` (scenes synonym table) on the test split (caption object recall gate) and on the break
   split (does the caption name the absent partner?);
5. with ``--hard-break N``: step 3 again on N break scenes with small objects and stronger noise (weak evidence).

Then ``OUT/gate.json`` + ``OUT/gate.md``: accuracies and false-yes rates with 95 % bootstrap CIs over images
(questions of one image are resampled together), paired differences, and the gate verdicts:

* control: POPE random-split accuracy >= 0.90 and caption object recall >= 0.85;
* biased: on the break split, false-yes rate on the absent partner above the rate on absent non-partners and
  above the control's partner rate, both differences with a 95 % CI above 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hookkit.evals.chair import ChairVocab, caption_to_objects
from hookkit.evals.pope import write_pope_jsonl
from hookkit.evals.scenes import SYNONYMS_PATH, SceneConfig, build_prior_pope, generate_split, partner_of


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def hookkit_cli(args: list[str], threads: int, log_path: Path) -> None:
    """Run ``python -m hookkit.cli.main`` with ``threads`` OpenMP threads; its output goes to ``log_path``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "hookkit.cli.main", *args]
    log("$ hookkit " + " ".join(args))
    with open(log_path, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"hookkit exited with {rc}; see {log_path}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- statistics
def bootstrap(groups: dict[Any, list[float]], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of all values and a percentile 95 % CI, resampling whole groups (images) with replacement."""
    keys = sorted(groups)
    values = [v for k in keys for v in groups[k]]
    if not values:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "groups": 0}
    rng = random.Random(seed)
    sums = [(sum(groups[k]), len(groups[k])) for k in keys]
    stats = []
    for _ in range(n_boot):
        s = c = 0.0
        for _k in keys:
            gs, gc = sums[rng.randrange(len(keys))]
            s += gs
            c += gc
        stats.append(s / c if c else float("nan"))
    stats.sort()
    return {"mean": sum(values) / len(values), "lo": stats[int(0.025 * n_boot)], "hi": stats[int(0.975 * n_boot) - 1],
            "n": len(values), "groups": len(keys)}


def paired_difference(a: dict[Any, list[float]], b: dict[Any, list[float]], n_boot: int = 2000, seed: int = 0
                      ) -> dict[str, float]:
    """mean(a) - mean(b) with a 95 % CI, resampling the shared groups (images) together."""
    keys = sorted(set(a) & set(b))
    rng = random.Random(seed)

    def diff(sample: list[Any]) -> float:
        sa = sum(sum(a[k]) for k in sample) / max(1, sum(len(a[k]) for k in sample))
        sb = sum(sum(b[k]) for k in sample) / max(1, sum(len(b[k]) for k in sample))
        return sa - sb

    stats = sorted(diff([keys[rng.randrange(len(keys))] for _ in keys]) for _ in range(n_boot))
    return {"diff": diff(keys), "lo": stats[int(0.025 * n_boot)], "hi": stats[int(0.975 * n_boot) - 1],
            "groups": len(keys)}


def by_image(records: list[dict[str, Any]], value: Any) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = {}
    for r in records:
        v = value(r)
        if v is not None:
            out.setdefault(r["image"], []).append(float(v))
    return out


# ---------------------------------------------------------------------------------------------- per run
def evaluate_run(run: Path, out: Path, prior_files: dict[str, Path], break_images: Path, args: argparse.Namespace
                 ) -> dict[str, Any]:
    from hookkit.models.scenes_llava import build_checkpoint

    name = run.name
    res_dir = out / name
    res_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoints" / name
    if not (ckpt / "config.json").exists():
        log(f"building checkpoint {ckpt}")
        build_checkpoint(run / "weights", ckpt, {"run": str(run)})
    data = run / "data"
    common = ["--model", str(ckpt), "--dtype", args.dtype, "--batch-size", str(args.batch_size), "--resume",
              "--no-progress"]
    cli_log = res_dir / "hookkit_cli.log"
    if not (res_dir / "pope_test" / "results_pope.json").exists():
        hookkit_cli(["eval", "pope", *common, "--build-from-annotations", str(data / "instances_test.json"),
                     "--images", str(data / "images_test"), "--build-num-images", str(args.pope_images),
                     "--build-min-objects", "3", "--build-seed", "0", "--output-path", str(res_dir / "pope_test")],
                    args.threads, cli_log)
    if not (res_dir / "pope_break" / "results_pope.json").exists():
        hookkit_cli(["eval", "pope", *common, "--data", *[str(p) for p in prior_files.values()],
                     "--images", str(break_images), "--output-path", str(res_dir / "pope_break")],
                    args.threads, cli_log)
    if args.hard_break and not (res_dir / "pope_hardbreak" / "results_pope.json").exists():
        hookkit_cli(["eval", "pope", *common, "--data", *[str(p) for p in args.hard_files.values()],
                     "--images", str(args.hard_images), "--output-path", str(res_dir / "pope_hardbreak")],
                    args.threads, cli_log)
    for split, images in (("test", data / "images_test"), ("break", break_images)):
        if not (res_dir / f"chair_{split}" / "results_chair.json").exists():
            inst = data / f"instances_{split}.json" if split == "test" else args.break_instances
            caps = data / f"captions_{split}.json" if split == "test" else args.break_captions
            hookkit_cli(["eval", "chair", *common, "--images", str(images), "--instances", str(inst),
                         "--captions", str(caps), "--synonyms", str(SYNONYMS_PATH), "--num-images",
                         str(args.chair_images), "--image-seed", "0", "--max-new-tokens", str(args.caption_tokens),
                         "--output-path", str(res_dir / f"chair_{split}")], args.threads, cli_log)
    return summarise_run(res_dir, args)


def summarise_run(res_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    test = read_jsonl(res_dir / "pope_test" / "samples_pope.jsonl")
    for split in ("random", "popular", "adversarial"):
        rows = [r for r in test if r.get("split") == split and "pred" in r]
        summary[f"pope_test_{split}_accuracy"] = bootstrap(by_image(rows, lambda r: r["correct"]))
        summary[f"pope_test_{split}_false_yes"] = bootstrap(
            by_image(rows, lambda r: (r["pred"] == "yes") if r["label"] == "no" else None))
        summary[f"pope_test_{split}_yes_ratio"] = sum(r["pred"] == "yes" for r in rows) / max(1, len(rows))
    for name in ("break", "hardbreak"):
        if not (res_dir / f"pope_{name}" / "samples_pope.jsonl").exists():
            continue
        brk = read_jsonl(res_dir / f"pope_{name}" / "samples_pope.jsonl")
        for split in ("random", "adversarial"):
            rows = [r for r in brk if r.get("split") == split and "pred" in r]
            summary[f"pope_{name}_{split}_accuracy"] = bootstrap(by_image(rows, lambda r: r["correct"]))
            summary[f"pope_{name}_{split}_false_yes"] = bootstrap(
                by_image(rows, lambda r: (r["pred"] == "yes") if r["label"] == "no" else None))
            summary[f"pope_{name}_{split}_true_yes"] = bootstrap(
                by_image(rows, lambda r: (r["pred"] == "yes") if r["label"] == "yes" else None))
    vocab = ChairVocab.from_file(SYNONYMS_PATH)
    for split in ("test", "break"):
        res = json.loads((res_dir / f"chair_{split}" / "results_chair.json").read_text())
        entry = res["results"]["chair"]
        summary[f"chair_{split}"] = {k: entry.get(f"{k},none") for k in ("CHAIR_s", "CHAIR_i", "recall", "avg_len")}
        samples = read_jsonl(res_dir / f"chair_{split}" / "samples_chair.jsonl")
        recall_groups = {}
        partner_named: dict[Any, list[float]] = {}
        other_named: dict[Any, list[float]] = {}
        for s in samples:
            caption = s.get("caption") or s.get("output") or s.get("answer") or ""
            gt = set(s.get("gt_objects") or [])
            if not gt:
                continue
            named = set(caption_to_objects(caption, vocab).node_words)
            recall_groups[s["image_id"]] = [float(o in named) for o in sorted(gt)]
            partners = {partner_of(o) for o in gt} - {None} - gt
            others = set(vocab.node_words) - gt - partners
            partner_named[s["image_id"]] = [float(p in named) for p in sorted(partners)]
            other_named[s["image_id"]] = [float(o in named) for o in sorted(others)]
        summary[f"caption_recall_{split}"] = bootstrap(recall_groups)
        summary[f"caption_absent_partner_named_{split}"] = bootstrap(partner_named)
        summary[f"caption_absent_other_named_{split}"] = bootstrap(other_named)
    return summary


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} [{stat['lo']:.3f}, {stat['hi']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="run folder of bench/train_scenes.py (repeatable)")
    p.add_argument("--control", default="control", help="name of the control run folder (default control)")
    p.add_argument("--biased", default="biased", help="name of the biased run folder (default biased)")
    p.add_argument("--out", required=True)
    p.add_argument("--pope-images", type=int, default=100, help="images of the stock-builder POPE on the test split")
    p.add_argument("--chair-images", type=int, default=150)
    p.add_argument("--caption-tokens", type=int, default=64, help="max new tokens of a caption (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hard-break", type=int, default=0, metavar="N",
                   help="also probe the prior on N break-split scenes with small objects (11-16 %% of the side) and "
                        "stronger noise: weak visual evidence (a diagnostic, not part of the gate)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [Path(r) for r in args.run]
    t0 = time.time()

    # One break split for every run: the runs generate it with the same seed; check, then share it.
    first = runs[0] / "data"
    for run in runs[1:]:
        if (run / "data" / "instances_break.json").read_bytes() != (first / "instances_break.json").read_bytes():
            raise SystemExit(f"{run} has a different break split than {runs[0]}")
    args.break_instances = first / "instances_break.json"
    args.break_captions = first / "captions_break.json"
    prior = build_prior_pope(args.break_instances, seed=0)
    prior_dir = out / "prior_questions"
    prior_files = {split: prior_dir / f"scenes_pope_{split}.json" for split in prior}
    for split, path in prior_files.items():
        if not path.exists():
            write_pope_jsonl(prior[split], path)

    if args.hard_break:
        hard_dir = out / "hard_break"
        cfg = SceneConfig(mode="break", min_obj=0.11, max_obj=0.16, noise=16.0)
        if not (hard_dir / "instances_hardbreak.json").exists():
            generate_split(hard_dir, "hardbreak", args.hard_break, seed=7, cfg=cfg, first_id=3_000_001)
        hard = build_prior_pope(hard_dir / "instances_hardbreak.json", seed=0)
        args.hard_files = {split: hard_dir / f"scenes_hardpope_{split}.json" for split in hard}
        for split, path in args.hard_files.items():
            if not path.exists():
                write_pope_jsonl(hard[split], path)
        args.hard_images = hard_dir / "images_hardbreak"

    results = {}
    for run in runs:
        results[run.name] = evaluate_run(run, out, prior_files, first / "images_break", args)
    gate: dict[str, Any] = {"results": results, "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                                             "python": platform.python_version()},
                            "command": " ".join(sys.argv), "wall_s": round(time.time() - t0, 1)}
    c, b = results.get(args.control), results.get(args.biased)
    if c is not None:
        gate["control_sees"] = {
            "pope_random_accuracy": c["pope_test_random_accuracy"],
            "caption_recall": c["caption_recall_test"],
            "pass": c["pope_test_random_accuracy"]["mean"] >= 0.90 and c["caption_recall_test"]["mean"] >= 0.85}
    if b is not None and c is not None:
        def fy(name: str, split: str, folder: str = "pope_break") -> dict[Any, list[float]]:
            rows = [r for r in read_jsonl(out / name / folder / "samples_pope.jsonl")
                    if r.get("split") == split and r["label"] == "no" and "pred" in r]
            return by_image(rows, lambda r: r["pred"] == "yes")

        adv_vs_rand = paired_difference(fy(args.biased, "adversarial"), fy(args.biased, "random"))
        biased_vs_control = paired_difference(fy(args.biased, "adversarial"), fy(args.control, "adversarial"))
        control_adv_vs_rand = paired_difference(fy(args.control, "adversarial"), fy(args.control, "random"))
        gate["prior_bites"] = {
            "biased_false_yes_partner": b["pope_break_adversarial_false_yes"],
            "biased_false_yes_other": b["pope_break_random_false_yes"],
            "control_false_yes_partner": c["pope_break_adversarial_false_yes"],
            "control_false_yes_other": c["pope_break_random_false_yes"],
            "biased_partner_minus_other": adv_vs_rand,
            "biased_minus_control_partner": biased_vs_control,
            "control_partner_minus_other": control_adv_vs_rand,
            "pass": adv_vs_rand["lo"] > 0 and biased_vs_control["lo"] > 0}
        if args.hard_break:
            gate["prior_under_weak_evidence"] = {
                "biased_partner_minus_other": paired_difference(fy(args.biased, "adversarial", "pope_hardbreak"),
                                                                fy(args.biased, "random", "pope_hardbreak")),
                "biased_minus_control_partner": paired_difference(
                    fy(args.biased, "adversarial", "pope_hardbreak"), fy(args.control, "adversarial", "pope_hardbreak")),
                "control_partner_minus_other": paired_difference(fy(args.control, "adversarial", "pope_hardbreak"),
                                                                 fy(args.control, "random", "pope_hardbreak"))}
    (out / "gate.json").write_text(json.dumps(gate, indent=2))
    lines = ["| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    keys = [k for k in next(iter(results.values())) if isinstance(next(iter(results.values()))[k], dict)
            and "mean" in next(iter(results.values()))[k]]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(fmt(results[r][k]) for r in results) + " |")
    for k in ("chair_test", "chair_break"):
        lines.append(f"| {k} CHAIR_s / CHAIR_i / recall / len | " + " | ".join(
            " / ".join(f"{results[r][k][m]:.1f}" for m in ("CHAIR_s", "CHAIR_i", "recall", "avg_len"))
            for r in results) + " |")
    if "prior_bites" in gate:
        pb = gate["prior_bites"]
        for k in ("biased_partner_minus_other", "biased_minus_control_partner", "control_partner_minus_other"):
            lines.append(f"| {k} | {pb[k]['diff']:.3f} [{pb[k]['lo']:.3f}, {pb[k]['hi']:.3f}] |")
        lines.append(f"| prior gate | {'PASS' if pb['pass'] else 'FAIL'} |")
    for k, d in gate.get("prior_under_weak_evidence", {}).items():
        lines.append(f"| hard break: {k} | {d['diff']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}] |")
    if "control_sees" in gate:
        lines.append(f"| control gate | {'PASS' if gate['control_sees']['pass'] else 'FAIL'} |")
    (out / "gate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
