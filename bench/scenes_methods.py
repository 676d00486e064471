"""Stock vs VHR vs VAR on scenes-llava: POPE on held-out scenes, VAR's sinks on real activations, a VHD head map.

    python bench/scenes_methods.py --images 30 --threads 1      # -> bench/results/scenes_methods.json + .md

1. **Sinks.** Per decoder layer, the largest RMS-normalised activation |x_d| / RMS(x) (methods-lvlm.md §2.1) on
   the first token, on image tokens and on the other text tokens, and the dims above τ = 20
   (:func:`hookkit.methods.var.find_sink_dims`): where VAR finds sinks, and whether any image token is one (VAR
   only acts in layers with a visual sink, §2.2).
2. **POPE.** The demo's held-out scenes (:func:`hookkit.cli.demo_hallucination.build_demo_questions`: the model
   card's i.i.d. test split, p_co 0.8), the stock builder's random / popular / adversarial splits, answered by
   hookkit's POPE runner for stock, VHR and VAR at their defaults, plus a small sweep on the adversarial split
   (VHR α, VAR p and ρ). Accuracy, F1 and yes-ratio with 95 % bootstrap CIs over images (2000 resamples, the
   questions of one image together), and each method's wall time relative to stock on the same questions.
3. **VHD head map.** ``hookkit vhd`` on one scene (PNG in ``docs/figures/``).

Every number is measured by this script; runs go to ``runs/scenes_methods/`` (git-ignored, resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = ROOT / "runs" / "scenes_methods"
RESULT = ROOT / "bench" / "results" / "scenes_methods.json"
FIGURE = ROOT / "docs" / "figures" / "scenes_llava_vhd.png"
MODEL = "scenes-llava"
# (name, method, params, splits): defaults on every split, the sweep on the adversarial split only
CONFIGS: list[tuple[str, str | None, dict[str, Any], tuple[str, ...]]] = [
    ("stock", None, {}, ("random", "popular", "adversarial")),
    ("vhr", "vhr", {}, ("random", "popular", "adversarial")),
    ("var", "var", {}, ("random", "popular", "adversarial")),
    ("vhr alpha=1.5", "vhr", {"alpha": 1.5}, ("adversarial",)),
    ("vhr alpha=3", "vhr", {"alpha": 3.0}, ("adversarial",)),
    ("var p_move=0.6 rho=0.5", "var", {"p_move": 0.6, "rho": 0.5}, ("adversarial",)),
    ("var p_move=0.9 rho=0 summ=0", "var", {"p_move": 0.9, "rho": 0.0, "summ": 0.0}, ("adversarial",)),
]


def sink_profile(model: Any, processor: Any, images: list[Any], prompt: str, tau: float = 20.0) -> dict[str, Any]:
    """Largest |x_d| / RMS(x) per layer on the first token, image tokens and other text tokens (layer inputs)."""
    import torch

    import hookkit
    from hookkit.methods.var import RMS_EPS, find_sink_dims

    info = hookkit.get_model_info(model)
    batch = info.adapter.build_inputs(processor, [prompt] * len(images), images)
    image = torch.isin(batch["input_ids"], torch.tensor(info.image_token_ids)) if info.image_token_ids else None
    first = batch["attention_mask"].int().argmax(dim=1)
    layers: list[dict[str, Any]] = []

    def hook(index: int) -> Any:
        def read(module: Any, args: tuple, kwargs: dict) -> None:
            h = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).float()
            ratio = h.abs() / h.pow(2).mean(-1, keepdim=True).add(RMS_EPS).sqrt()  # [B, S, D]
            per_tok, dim = ratio.max(-1)
            rows = torch.arange(h.shape[0])
            is_first = torch.zeros_like(per_tok, dtype=torch.bool)
            is_first[rows, first] = True
            real = batch["attention_mask"].bool()
            img = image if image is not None else torch.zeros_like(real)
            text = real & ~img & ~is_first
            layers.append({"layer": index, "first_token_max": float(per_tok[is_first].max()),
                           "first_token_dim": int(dim[is_first][per_tok[is_first].argmax()]),
                           "image_token_max": float(per_tok[img].max()) if bool(img.any()) else None,
                           "image_tokens_above_tau": int((per_tok[img] > tau).sum()),
                           "other_text_max": float(per_tok[text].max()),
                           "other_text_above_tau": int((per_tok[text] > tau).sum())})
        return read

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(info.decoder_layers)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {"tau": tau, "prompt": prompt, "n_images": len(images), "image_tokens_per_image":
            int(image[0].sum()) if image is not None else None,
            "sink_dims_found": find_sink_dims(model, processor, [prompt] * len(images), images, tau=tau),
            "layers": layers}


def bootstrap(records: list[dict[str, Any]], seed: int = 0, n: int = 2000) -> dict[str, list[float]]:
    """95 % CIs of accuracy, F1 and yes-ratio, resampling images (their questions together)."""
    from hookkit.evals.pope import pope_metrics

    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    groups = list(by_image.values())
    rng = random.Random(seed)
    stats: dict[str, list[float]] = {"accuracy": [], "f1": [], "yes_ratio": []}
    for _ in range(n):
        sample = [r for _ in groups for r in rng.choice(groups)]
        m = pope_metrics([r["pred"] for r in sample], [r["label"] for r in sample])
        for k in stats:
            stats[k].append(m[k])
    out = {}
    for k, values in stats.items():
        values.sort()
        out[k] = [values[int(0.025 * n)], values[int(0.975 * n) - 1]]
    return out


def run_pope(args: argparse.Namespace, model: Any, processor: Any, questions: dict[str, Path],
             images: Path) -> list[dict[str, Any]]:
    import hookkit
    from hookkit.core.recipe import Recipe
    from hookkit.evals.pope.task import PopeTask
    from hookkit.evals.results import intervention_record
    from hookkit.evals.runner import OutputPaths, evaluate, read_jsonl
    from hookkit.methods.registry import build_method

    rows = []
    for name, method, params, splits in CONFIGS:
        iv = build_method(method, params) if method else None
        recipe = Recipe.from_interventions([iv]) if iv is not None else None
        for split in splits:
            out = RUNS / f"images{args.images}" / name.replace(" ", "_") / split
            task = PopeTask({split: questions[split]}, images, model=model, processor=processor)
            t0 = time.perf_counter()
            with hookkit.attach(model, iv) if iv is not None else contextlib.nullcontext():
                res = evaluate(task, output_dir=out, model_info={"model": MODEL, "dtype": args.dtype},
                               intervention=intervention_record(recipe, model), seed=0, resume=True,
                               batch_size=args.batch_size, progress=False, cli_args={"argv": sys.argv})
            wall = time.perf_counter() - t0
            records, _, _ = read_jsonl(OutputPaths(out, task.name).samples)
            m = res["results"]["pope"]
            row = {"config": name, "method": method or "stock", "params": params, "split": split,
                   "n": len(records), "accuracy": m["accuracy,none"], "f1": m["f1,none"],
                   "yes_ratio": m["yes_ratio,none"], "precision": m["precision,none"], "recall": m["recall,none"],
                   "ci95": bootstrap(records), "wall_s": res["timings"].get("total_s", wall),
                   "recipe_hash": (res.get("intervention") or {}).get("recipe_hash"),
                   "predictions": [r["pred"] for r in records]}
            rows.append(row)
            print(f"{name:>28} {split:>11}: acc {row['accuracy']:.3f} F1 {row['f1']:.3f} yes {row['yes_ratio']:.3f} "
                  f"({row['wall_s']:.0f} s)", flush=True)
    stock = {r["split"]: r for r in rows if r["config"] == "stock"}
    for r in rows:
        base = stock[r["split"]]
        r["wall_ratio_vs_stock"] = r["wall_s"] / base["wall_s"]
        r["answers_changed_vs_stock"] = sum(a != b for a, b in zip(r["predictions"], base["predictions"]))
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["| configuration | split | n | accuracy [95 % CI] | F1 [95 % CI] | yes-ratio [95 % CI] | answers changed "
             "vs stock | time vs stock |", "|---|---|---|---|---|---|---|---|"]
    for r in result["pope"]:
        ci = r["ci95"]
        lines.append(f"| {r['config']} | {r['split']} | {r['n']} | {r['accuracy']:.3f} [{ci['accuracy'][0]:.3f}, "
                     f"{ci['accuracy'][1]:.3f}] | {r['f1']:.3f} [{ci['f1'][0]:.3f}, {ci['f1'][1]:.3f}] | "
                     f"{r['yes_ratio']:.3f} [{ci['yes_ratio'][0]:.3f}, {ci['yes_ratio'][1]:.3f}] | "
                     f"{r['answers_changed_vs_stock']} | {r['wall_ratio_vs_stock']:.2f}× |")
    s = result["sinks"]
    lines += ["", f"Sink dims above τ = {s['tau']} (find_sink_dims): {s['sink_dims_found']}", "",
              "| layer | first token max | dim | image tokens max | image tokens > τ | other text max | other text > τ |",
              "|---|---|---|---|---|---|---|"]
    for layer in s["layers"]:
        lines.append(f"| {layer['layer']} | {layer['first_token_max']:.1f} | {layer['first_token_dim']} | "
                     f"{layer['image_token_max']:.1f} | {layer['image_tokens_above_tau']} | "
                     f"{layer['other_text_max']:.1f} | {layer['other_text_above_tau']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=30, help="POPE images (6 questions each per split)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (default, as the gate runs) | float32")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    import torch
    from PIL import Image

    import hookkit
    from hookkit.cli.demo_hallucination import build_demo_questions
    from hookkit.cli.tasks.pope import build_pope_files

    torch.set_num_threads(args.threads)
    work = RUNS / f"images{args.images}" / "data"
    _, images, info = build_demo_questions(work, args.images)  # draws the questioned scenes
    questions, _ = build_pope_files(Path(work / "scenes" / "instances_test.json"), work, num_images=args.images,
                                    seed=0, min_objects=3)
    model, processor = hookkit.load(MODEL, dtype=args.dtype)
    scene_files = sorted(images.glob("*.png"))
    sinks = sink_profile(model, processor, [Image.open(f).convert("RGB") for f in scene_files[:4]],
                         "Is there a star in the image? Answer the question using a single word or phrase.")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "hookkit.cli.main", "vhd", "--model", MODEL, "--image", str(scene_files[0]),
                    "--prompt", "Describe the image.", "--plot", str(FIGURE)], check=True,
                   stdout=subprocess.DEVNULL)
    pope = run_pope(args, model, processor, questions, images)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "model": MODEL, "dtype": args.dtype,
              "threads": args.threads, "questions": info, "machine": {"platform": platform.platform(),
                                                                       "python": platform.python_version(),
                                                                       "torch": torch.__version__},
              "sinks": sinks, "pope": pope, "vhd_figure": str(FIGURE.relative_to(ROOT))}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    RESULT.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
