"""``hookkit eval pope|pope-build|chair``: the hallucination evaluations on the shared runner.

``hookkit/cli/eval_cmd.py`` registers these sub-parsers (``add_pope_parser`` adds ``pope`` and ``pope-build``,
``add_chair_parser`` adds ``chair``); each sets ``eval_run`` to the function that runs it.  Protocols:
``/work/shared/reference/eval-protocols.md`` §1 (POPE), §2 (CHAIR), §8 (results JSON).

Data-parallel runs start the same command line under ``accelerate launch`` (every process loads the model on its
own device and evaluates the samples with ``index % num_processes == rank``; the main process merges and writes)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m hookkit.cli.main eval pope --model llava --data coco_pope_*.json --images val2014 --output-path out
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookkit.cli.common import add_method_args, add_model_args, load_model, recipe_from_args
from hookkit.errors import ConfigError, InputError
from hookkit.io import load_json

# Generation defaults per task, with the protocol reason (eval-protocols.md).
POPE_MAX_NEW_TOKENS = 10  # §1.3: OPERA / PAI decode POPE with max_new_tokens=10 (see pope_task.py)
CHAIR_MAX_NEW_TOKENS = 512  # §2.4: long captions, max_new_tokens=512
POPE_QUESTION_LAYOUTS = ("utils", "head")  # question ids from 1 without image_id (utils.py) / from 0 with image_id


# ------------------------------------------------------------------------------------------------------------------
# Argument groups shared by the eval tasks
# ------------------------------------------------------------------------------------------------------------------


def _limit(text: str) -> int | float:
    """``--limit``: an int (first N samples) or a fraction in (0, 1), as lm-eval."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int or a fraction in (0, 1), got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"a fractional --limit must lie in (0, 1), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--limit must be >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_runner_args(p: argparse.ArgumentParser) -> None:
    """Output, sample selection, seeding, batching and resume options of :func:`hookkit.evals.runner.evaluate`."""
    g = p.add_argument_group("run")
    g.add_argument("--output-path", required=True, metavar="DIR",
                   help="output folder: results_<task>.json, samples_<task>.jsonl, run_<task>.manifest.json")
    g.add_argument("--limit", type=_limit, default=None, metavar="N",
                   help="evaluate only the first N samples (or a fraction in (0, 1))")
    g.add_argument("--seed", type=int, default=1234, help="python/numpy/torch seed, reseeded per batch (default 1234)")
    g.add_argument("--batch-size", type=_positive_int, default=1,
                   help="samples per generate call, left-padded (default 1)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --output-path (same model, data, recipe and settings)")
    g.add_argument("--retry-errors", action="store_true", help="with --resume: re-run samples that ended in an error")
    g.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")


def add_generation_args(p: argparse.ArgumentParser, *, max_new_tokens: int, why: str) -> None:
    """Decoding options; greedy by default."""
    g = p.add_argument_group("decoding (greedy unless --do-sample)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens,
                   help=f"generation budget (default {max_new_tokens}: {why})")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding (e.g. VCD's protocol)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --do-sample)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling p (with --do-sample)")
    g.add_argument("--num-beams", type=_positive_int, default=None, help="beam search width (default 1)")


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


def _cli_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not callable(v)}


def intervention_record(recipe: Any, model: Any) -> dict[str, Any] | None:
    """``results["intervention"]``: the recipe, its own hash (tensor bytes included) and the model fingerprint
    (§8); None for the stock model."""
    if recipe is None:
        return None
    import hookkit

    return {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash(),
            "model_fingerprint": hookkit.get_model_info(model).fingerprint()}


def _load(args: argparse.Namespace, state: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model on this process's device (one GPU per process under ``accelerate launch``)."""
    import torch

    import hookkit
    from hookkit.models.base import model_device

    if args.device_map is None and torch.cuda.is_available():
        args.device_map = {"": str(state.device)}
    model, processor = load_model(args)
    info = hookkit.get_model_info(model)
    model_info = {
        "model": args.model,
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "device": str(model_device(model)),
        "device_map": args.device_map,
        "fingerprint": info.fingerprint(),
    }
    return model, processor, model_info


def _run_task(args: argparse.Namespace, make_task: Callable[[dict[str, Any]], Any],
              summarize: Callable[[dict[str, Any]], list[str]]) -> int:
    """Build the task, load the model, attach the recipe (if any), evaluate, print a summary on the main process.

    The task (data files, images folder, settings) is checked before the model is loaded, so a typo in a path
    fails in a second rather than after loading a 7B checkpoint.
    """
    from hookkit.evals.runner import evaluate, get_state

    state = get_state()
    recipe = recipe_from_args(args)
    task = make_task(generation_kwargs(args))
    model, processor, model_info = _load(args, state)
    task.model, task.processor = model, processor
    intervention = intervention_record(recipe, model)
    import hookkit

    with hookkit.attach(model, recipe) if recipe is not None else contextlib.nullcontext():
        try:
            results = evaluate(task, output_dir=args.output_path, model_info=model_info, intervention=intervention,
                               limit=args.limit, seed=args.seed, resume=args.resume, batch_size=args.batch_size,
                               progress=not args.no_progress, cli_args=_cli_args(args),
                               retry_errors=args.retry_errors, state=state)
        except FileExistsError as exc:
            raise ConfigError("--output-path", str(exc)) from None
        except ValueError as exc:
            if str(exc).startswith("cannot resume"):  # the runner's manifest check: a different run lives there
                raise ConfigError("--resume", str(exc)) from None
            raise
    if state.is_main_process:
        for line in summarize(results):
            print(line)
        print(f"results: {Path(args.output_path) / f'results_{task.name}.json'}")
    return 0


# ------------------------------------------------------------------------------------------------------------------
# POPE
# ------------------------------------------------------------------------------------------------------------------


def _add_build_args(p: argparse.ArgumentParser, prefix: str) -> None:
    g = p.add_argument_group("POPE builder (eval-protocols.md §1.1)")
    g.add_argument(f"--{prefix}num-images", type=_positive_int, default=500,
                   help="images sampled among those with >= min-objects objects (default 500)")
    g.add_argument(f"--{prefix}seed", type=int, default=0, help="builder seed (default 0)")
    g.add_argument(f"--{prefix}min-objects", type=_positive_int, default=3,
                   help="minimum objects per image = positives per image (default 3: 6 questions per image)")
    g.add_argument(f"--{prefix}an-rule", choices=("fixed", "legacy"), default="fixed",
                   help="'an' before vowels: fixed (current files) or legacy (reproduces the 'imange' typo)")
    g.add_argument(f"--{prefix}layout", choices=POPE_QUESTION_LAYOUTS, default="utils",
                   help="utils: question ids from 1, no image_id (utils.py); head: ids from 0 with image_id "
                        "(current upstream files)")


def build_pope_files(annotations: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, num_images: int,
                     seed: int, min_objects: int = 3, an_rule: str = "fixed", layout: str = "utils",
                     write: bool = True) -> tuple[dict[str, Path], dict[str, Any]]:
    """Build the three POPE splits from COCO instances (seeded) as ``<out_dir>/coco_pope_<split>.json``.

    Deterministic, so every process of a data-parallel run computes the same files; only callers with
    ``write=True`` (the main process) write them.  An existing file with other content is never overwritten
    (it may be the pinned input of an earlier run).  Returns ``({split: path}, build description)``.
    """
    from hookkit.evals.pope import PopeBuildError, build_pope_splits

    if layout not in POPE_QUESTION_LAYOUTS:
        raise ConfigError("--layout", f"unknown value {layout!r}", POPE_QUESTION_LAYOUTS)
    ann_path = Path(annotations)
    data = load_json(ann_path, field="--build-from-annotations")
    try:
        splits = build_pope_splits(data, num_images, seed=seed, min_objects=min_objects, an_rule=an_rule,  # type: ignore[arg-type]
                                   first_question_id=0 if layout == "head" else 1,
                                   include_image_id=layout == "head")
    except PopeBuildError as exc:
        raise InputError(f"{ann_path}: cannot build POPE splits: {exc}") from exc
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for split, records in splits.items():
        path = out / f"coco_pope_{split}.json"
        text = "".join(json.dumps(r) + "\n" for r in records)  # the byte format of write_pope_jsonl / utils.pope
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise ConfigError("--build-dir", f"{path} exists with other content; remove it or choose another folder")
        if write and not path.exists():
            from hookkit.evals.pope import write_pope_jsonl

            write_pope_jsonl(records, path)
        paths[split] = path
    description = {"annotations": ann_path.name, "num_images": num_images, "seed": seed, "min_objects": min_objects,
                   "an_rule": an_rule, "layout": layout,
                   "rule": "hookkit.evals.pope.build_pope_splits (AoiDragon/POPE main.py + utils.py, seeded)"}
    return paths, description


def _parse_data(items: list[str]) -> dict[str, Path] | list[Path]:
    """``--data`` items: ``FILE`` (split from the file name) or ``SPLIT=FILE``."""
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for item in items:
        if "=" in item and not Path(item).exists():
            split, path = item.split("=", 1)
            if split in named:
                raise ConfigError("--data", f"split {split!r} given twice")
            named[split] = Path(path)
        else:
            plain.append(Path(item))
    if named and plain:
        from hookkit.evals.pope_task import split_name_for

        for path in plain:
            split = split_name_for(path)
            if split in named:
                raise ConfigError("--data", f"split {split!r} given twice ({named[split]} and {path})")
            named[split] = path
        return named
    return named or plain


def add_pope_parser(subparsers: Any) -> None:
    """``hookkit eval pope`` and ``hookkit eval pope-build``."""
    from hookkit.evals.pope import DEFAULT_POPE_PARSER, POPE_PARSERS, POPE_PROMPT_PRESETS

    help_text = "POPE (yes/no object probing): per-split and mean accuracy/precision/recall/F1"
    p = subparsers.add_parser("pope", help=help_text, description=help_text + ". Protocol: eval-protocols.md §1.")
    add_model_args(p)
    add_method_args(p)
    g = p.add_argument_group("POPE data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="[SPLIT=]FILE",
                     help="POPE question files (JSON lines); the split comes from the file name "
                          "(random/popular/adversarial) unless given as SPLIT=FILE")
    src.add_argument("--build-from-annotations", metavar="INSTANCES_JSON",
                     help="build the three splits from COCO instance annotations (seeded) into --build-dir, then run")
    g.add_argument("--build-dir", metavar="DIR", help="where --build-from-annotations writes the split files "
                   "(default <output-path>/pope_questions)")
    g.add_argument("--images", required=True, metavar="DIR", help="folder with the images the questions name")
    g.add_argument("--no-hash-images", action="store_true",
                   help="do not pin the referenced images by SHA-256 in data_files")
    _add_build_args(p, "build-")
    s = p.add_argument_group("POPE prompt and scoring")
    s.add_argument("--prompt-preset", choices=sorted(POPE_PROMPT_PRESETS), default="llava15",
                   help="llava15: question + '\\nAnswer the question using a single word or phrase.' (LLaVA-1.5, "
                        "lmms-eval); plain: the raw question (OPERA/PAI); vcd: question + ' Please answer this "
                        "question with one word.' (default llava15)")
    s.add_argument("--parser", choices=sorted(POPE_PARSERS), default=DEFAULT_POPE_PARSER,
                   help=f"answer -> yes/no/unknown parser (default {DEFAULT_POPE_PARSER}, eval-protocols.md §1.4)")
    s.add_argument("--unknown-policy", choices=("as_no", "lmms_eval"), default="as_no",
                   help="score 'unknown' answers as 'no' (VLMEvalKit) or leave them out of precision/recall "
                        "(lmms-eval) (default as_no)")
    add_generation_args(p, max_new_tokens=POPE_MAX_NEW_TOKENS,
                        why="OPERA/PAI's setting; one-word answers, and the official parser stops at the first '.'")
    add_runner_args(p)
    p.set_defaults(eval_run=run_pope)

    help_build = "write the POPE random/popular/adversarial question files built from COCO instances (seeded)"
    b = subparsers.add_parser("pope-build", help=help_build, description=help_build + " (eval-protocols.md §1.1).")
    b.add_argument("--annotations", required=True, metavar="INSTANCES_JSON", help="COCO instances_*.json")
    b.add_argument("--output-dir", required=True, metavar="DIR", help="writes coco_pope_<split>.json here")
    _add_build_args(b, "")
    b.set_defaults(eval_run=run_pope_build)


def run_pope_build(args: argparse.Namespace) -> int:
    from hookkit.evals.pope import describe_pope_file

    paths, _ = build_pope_files(args.annotations, args.output_dir, num_images=args.num_images, seed=args.seed,
                                min_objects=args.min_objects, an_rule=args.an_rule, layout=args.layout)
    for split, path in paths.items():
        desc = describe_pope_file(path)
        print(f"{split:<12} {path}  {desc['lines']} questions  sha256 {desc['sha256']}")
    return 0


def _pope_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["pope"]
    cfg = results["configs"]["pope"]
    rows = [(split, f"{split}/") for split in cfg["splits"] if f"{split}/f1,none" in entry] + [("mean", "")]
    cols = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")
    n = results["n-samples"]["pope"]["effective"]
    lines = [f"pope: parser {cfg['parser']}, prompt preset {cfg['prompt_preset']}, {n} samples, "
             f"{entry['n_errors']} errors"]
    lines.append(f"{'split':<12}" + "".join(f"{c:>14}" for c in cols))
    for label, prefix in rows:
        lines.append(f"{label:<12}" + "".join(f"{entry[f'{prefix}{c},none']:>14.4f}" for c in cols))
    return lines


def run_pope(args: argparse.Namespace) -> int:
    from hookkit.evals.pope_task import PopeTask
    from hookkit.evals.runner import get_state
    from hookkit.evals.schema import data_file_entry

    extra_files: list[dict[str, Any]] = []
    extra_config: dict[str, Any] = {}
    if args.build_from_annotations:
        state = get_state()
        build_dir = args.build_dir or os.path.join(args.output_path, "pope_questions")
        files, description = build_pope_files(
            args.build_from_annotations, build_dir, num_images=args.build_num_images, seed=args.build_seed,
            min_objects=args.build_min_objects, an_rule=args.build_an_rule, layout=args.build_layout,
            write=state.is_main_process)
        state.wait_for_everyone()  # the other processes read what the main process wrote
        question_files: dict[str, Path] | list[Path] = files
        extra_files.append(data_file_entry(args.build_from_annotations, "annotations"))
        extra_config["built_from_annotations"] = description
    else:
        if args.build_dir:
            raise ConfigError("--build-dir", "only applies with --build-from-annotations")
        question_files = _parse_data(args.data)

    def make_task(gen: dict[str, Any]) -> PopeTask:
        return PopeTask(question_files, args.images, prompt_preset=args.prompt_preset, parser=args.parser,
                        unknown_policy=args.unknown_policy, max_new_tokens=args.max_new_tokens, generate_kwargs=gen,
                        hash_images=not args.no_hash_images, extra_data_files=extra_files, extra_config=extra_config)

    return _run_task(args, make_task, _pope_summary)


# ------------------------------------------------------------------------------------------------------------------
# CHAIR
# ------------------------------------------------------------------------------------------------------------------


def add_chair_parser(subparsers: Any) -> None:
    """``hookkit eval chair``."""
    from hookkit.evals.chair_task import CHAIR_DEFAULT_NUM_IMAGES, CHAIR_PROMPT_PRESETS

    help_text = "CHAIR (caption hallucination): CHAIR_s, CHAIR_i, recall and length over a seeded COCO image set"
    p = subparsers.add_parser("chair", help=help_text, description=help_text + ". Protocol: eval-protocols.md §2.")
    add_model_args(p)
    add_method_args(p)
    g = p.add_argument_group("CHAIR data")
    g.add_argument("--images", required=True, metavar="DIR",
                   help="folder of COCO-named images (COCO_val2014_%%012d.jpg)")
    g.add_argument("--instances", nargs="+", required=True, metavar="FILE",
                   help="COCO instances_*.json (several are merged, e.g. train2014 + val2014)")
    g.add_argument("--captions", nargs="+", required=True, metavar="FILE",
                   help="COCO captions_*.json (reference captions are part of the ground truth)")
    g.add_argument("--synonyms", metavar="FILE", help="synonyms.txt-format table (default: the bundled COCO table)")
    ids = g.add_mutually_exclusive_group()
    ids.add_argument("--image-ids", metavar="FILE",
                     help="explicit image-id list (.json list, .jsonl with image_id, or text) instead of sampling")
    ids.add_argument("--num-images", type=_positive_int, default=CHAIR_DEFAULT_NUM_IMAGES,
                     help=f"images to sample (default {CHAIR_DEFAULT_NUM_IMAGES})")
    g.add_argument("--image-seed", type=int, default=None,
                   help="seed of the image sample (default: --seed); the id list is saved in the results")
    g.add_argument("--sample-from", choices=("images", "annotations"), default="images",
                   help="population of the sample: the COCO-named files in --images, or every image id of the "
                        "instances files (default images)")
    g.add_argument("--no-hash-images", action="store_true",
                   help="do not pin the images by SHA-256 in data_files")
    s = p.add_argument_group("CHAIR prompt")
    s.add_argument("--prompt-preset", choices=sorted(CHAIR_PROMPT_PRESETS), default="chair",
                   help="chair: 'Please describe this image in detail.' (OPERA/HALC/VHR); pai: 'Please help me "
                        "describe the image in detail.' (default chair)")
    s.add_argument("--prompt", default=None, help="custom prompt text (overrides --prompt-preset; recorded)")
    add_generation_args(p, max_new_tokens=CHAIR_MAX_NEW_TOKENS, why="the long-caption CHAIR setting")
    add_runner_args(p)
    p.set_defaults(eval_run=run_chair)


def _chair_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["chair"]
    cfg = results["configs"]["chair"]
    n = results["n-samples"]["chair"]["effective"]
    lines = [f"chair: {n} images ({cfg['image_selection'].get('rule')}), {entry['n_errors']} errors"]
    lines.append("".join(f"{c:>12}" for c in ("CHAIR_s", "CHAIR_i", "recall", "avg_len")))
    lines.append("".join(f"{entry[f'{c},none']:>12.2f}" for c in ("CHAIR_s", "CHAIR_i", "recall", "avg_len")))
    return lines


def run_chair(args: argparse.Namespace) -> int:
    from hookkit.evals.chair_task import CHAIR_PROMPT_PRESETS, ChairTask

    prompt = args.prompt if args.prompt is not None else CHAIR_PROMPT_PRESETS[args.prompt_preset]
    preset = "custom" if args.prompt is not None else args.prompt_preset
    image_seed = args.image_seed if args.image_seed is not None else args.seed

    def make_task(gen: dict[str, Any]) -> ChairTask:
        return ChairTask.from_files(
            images_dir=args.images, instances=args.instances, captions=args.captions, image_ids_file=args.image_ids,
            num_images=args.num_images, image_seed=image_seed, sample_from=args.sample_from,
            synonyms=args.synonyms, prompt=prompt, prompt_preset=preset,
            max_new_tokens=args.max_new_tokens, generate_kwargs=gen, hash_images=not args.no_hash_images)

    return _run_task(args, make_task, _chair_summary)
