"""``hookkit demo --task hallucination``: stock vs VHR vs VAR on POPE-adversarial with the embedded scenes-llava.

scenes-llava (docs/models/scenes-llava.md) is a real LLaVA-architecture model: a DINOv2-derived ViT-S tower and
SmolLM2-135M joined by a projector trained on synthetic scenes. The demo draws held-out scenes with the training
recipe's test seed (the same images as the model card's i.i.d. test split, never seen in training), builds the
POPE adversarial split from their annotations with the stock POPE builder, and answers it three times: stock, VHR
and VAR at their defaults. A few minutes on two CPU cores.

    hookkit demo --task hallucination
    hookkit demo --task hallucination --images 60 --methods stock,vhr --vhr-param alpha=1.5 --output-path out/hd
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hookkit.cli.common import parse_param_strings, positive_int, print_table
from hookkit.errors import ConfigError

HALLUCINATION_METHODS = ("stock", "vhr", "var")
# The scenes-llava recipe's i.i.d. test split: seed 0 + 1, ids from 1_000_001 (hookkit.evals.scenes.SplitPlan).
TEST_SEED, TEST_FIRST_ID, TEST_SCENES = 1, 1_000_001, 300


def add_hallucination_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--images", type=positive_int, default=30,
                   help="POPE images (6 questions each: 3 present objects, 3 adversarial absent ones; default 30)")
    g.add_argument("--methods", default="stock,vhr,var", metavar="M[,M...]",
                   help="which of stock, vhr, var to run, in this order (default all three)")
    g.add_argument("--vhr-param", action="append", default=[], metavar="KEY=VALUE", help="VHR parameter (repeatable)")
    g.add_argument("--var-param", action="append", default=[], metavar="KEY=VALUE", help="VAR parameter (repeatable)")
    g.add_argument("--batch-size", type=positive_int, default=8, help="questions per generate call (default 8)")


def _methods(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from hookkit.methods.registry import build_method

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in HALLUCINATION_METHODS]
    if bad or not names or len(set(names)) != len(names):
        raise ConfigError("--methods", f"expected distinct names from the list, got {args.methods!r}",
                          HALLUCINATION_METHODS)
    params = {"vhr": parse_param_strings(args.vhr_param), "var": parse_param_strings(args.var_param)}
    # build_method checks every parameter now, before the model loads
    return [(m, None if m == "stock" else build_method(m, params[m])) for m in names]


def build_demo_questions(work: Path, num_images: int) -> tuple[Path, Path, dict[str, Any]]:
    """Write the held-out scenes and the POPE adversarial split under ``work``; returns (questions, images, info)."""
    from hookkit.evals.pope import PopeBuildError, build_pope_splits, write_pope_jsonl
    from hookkit.evals.scenes import FILE_PATTERN, SceneConfig, generate_split, render_scene, sample_scene

    cfg = SceneConfig(p_co=0.8)  # scenes-llava's training prior; the images equal the card's i.i.d. test split
    split = generate_split(work / "scenes", "test", TEST_SCENES, seed=TEST_SEED, cfg=cfg, first_id=TEST_FIRST_ID,
                           write_images=False, captions_per_image=0)
    annotations = json.loads(Path(split["instances"]).read_text())
    try:
        splits = build_pope_splits(annotations, num_images, seed=0, min_objects=3)
    except PopeBuildError as exc:
        raise ConfigError("--images", f"cannot build {num_images} POPE images from {TEST_SCENES} scenes: {exc}") from exc
    image_dir = Path(split["images"])
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in sorted({int(Path(q["image"]).stem.rsplit("_", 1)[1]) for q in splits["adversarial"]}):
        target = image_dir / FILE_PATTERN.format(image_id)  # only the questioned scenes are drawn (seconds, not 13)
        if not target.exists():
            render_scene(sample_scene(TEST_SEED, image_id, cfg)).save(target, optimize=False)
    questions = work / "coco_pope_adversarial.json"
    write_pope_jsonl(splits["adversarial"], questions)
    info = {"scenes": TEST_SCENES, "scene_seed": TEST_SEED, "p_co": cfg.p_co, "pope_images": num_images,
            "pope_seed": 0, "questions": len(splits["adversarial"])}
    return questions, image_dir, info


def run_hallucination(args: argparse.Namespace) -> int:
    import torch

    import hookkit
    from hookkit.core.recipe import Recipe
    from hookkit.evals.pope.task import PopeTask
    from hookkit.evals.results import intervention_record
    from hookkit.evals.runner import evaluate
    from hookkit.models.loading import resolve_dtype

    methods = _methods(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    model_name = args.model or "scenes-llava"
    with contextlib.ExitStack() as stack:
        work = Path(args.output_path) if args.output_path else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        questions, images, info = build_demo_questions(work, args.images)
        model, processor = hookkit.load(model_name, dtype=dtype)
        for _, iv in methods:  # parameter ranges are checked against the model: all of them before any run
            if iv is not None:
                with hookkit.attach(model, iv):
                    pass
        print(f"hookkit demo: POPE adversarial on {model_name} ({dtype}, {torch.get_num_threads()} threads), "
              f"{info['questions']} questions on {args.images} held-out scenes, methods {', '.join(m for m, _ in methods)}")
        rows = []
        t0 = time.perf_counter()
        for name, iv in methods:
            task = PopeTask({"adversarial": questions}, images, model=model, processor=processor)
            recipe = Recipe.from_interventions([iv]) if iv is not None else None
            started = time.perf_counter()
            with hookkit.attach(model, iv) if iv is not None else contextlib.nullcontext():
                results = evaluate(task, output_dir=work / name, model_info={"model": model_name, "dtype": dtype},
                                   intervention=intervention_record(recipe, model), seed=0, resume=True,
                                   batch_size=args.batch_size, cli_args={"demo": "hallucination", "method": name})
            m = results["results"]["pope"]
            rows.append((name, f"{m['accuracy,none']:.3f}", f"{m['precision,none']:.3f}", f"{m['recall,none']:.3f}",
                         f"{m['f1,none']:.3f}", f"{m['yes_ratio,none']:.3f}", f"{time.perf_counter() - started:.0f}"))
        print_table(("method", "accuracy", "precision", "recall", "F1", "yes-ratio", "seconds"), rows)
        settings = "; ".join(f"{n}: {iv.describe()}" for n, iv in methods if iv is not None)
        print(f"\n{settings}\ntotal {time.perf_counter() - t0:.0f} s. scenes-llava is a 135M-parameter model trained on "
              "synthetic shapes (docs/models/scenes-llava.md: its gate results and limits); read differences of a "
              "few questions as noise.")
        if args.output_path:
            print(f"per-question results: {work}/<method>/samples_pope.jsonl")
    return 0
