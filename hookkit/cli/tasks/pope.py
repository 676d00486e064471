"""``hookkit eval pope`` and ``hookkit eval pope-build``: POPE on the shared runner (eval-protocols.md §1).

Data-parallel runs start the same command line under ``accelerate launch`` (every process loads the model on its
own device and evaluates the samples with ``index % num_processes == rank``; the main process merges and writes)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        -m hookkit.cli.main eval pope --model llava --data coco_pope_*.json --images val2014 --output-path out
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from hookkit.cli.common import add_method_args, add_model_args, positive_int
from hookkit.cli.evaluation import TaskCommand, add_generation_args, add_runner_args, run_eval
from hookkit.errors import ConfigError, InputError
from hookkit.io import load_json

POPE_MAX_NEW_TOKENS = 10  # §1.3: OPERA / PAI decode POPE with max_new_tokens=10
POPE_QUESTION_LAYOUTS = ("utils", "head")  # question ids from 1 without image_id (utils.py) / from 0 with image_id


def _add_build_args(p: argparse.ArgumentParser, prefix: str) -> None:
    g = p.add_argument_group("POPE builder (eval-protocols.md §1.1)")
    g.add_argument(f"--{prefix}num-images", type=positive_int, default=500,
                   help="images sampled among those with >= min-objects objects (default 500)")
    g.add_argument(f"--{prefix}seed", type=int, default=0, help="builder seed (default 0)")
    g.add_argument(f"--{prefix}min-objects", type=positive_int, default=3,
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
        from hookkit.evals.pope.task import split_name_for

        for path in plain:
            split = split_name_for(path)
            if split in named:
                raise ConfigError("--data", f"split {split!r} given twice ({named[split]} and {path})")
            named[split] = path
        return named
    return named or plain


def add_pope_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.evals.pope import DEFAULT_POPE_PARSER, POPE_PARSERS, POPE_PROMPT_PRESETS

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


def add_pope_build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--annotations", required=True, metavar="INSTANCES_JSON", help="COCO instances_*.json")
    b.add_argument("--output-dir", required=True, metavar="DIR", help="writes coco_pope_<split>.json here")
    _add_build_args(b, "")


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
    from hookkit.evals.files import data_file_entry
    from hookkit.evals.pope.task import PopeTask
    from hookkit.evals.runner import get_state

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

    return run_eval(args, make_task, _pope_summary)


POPE = TaskCommand(
    help="POPE (yes/no object probing): per-split and mean accuracy/precision/recall/F1",
    description="Protocol: eval-protocols.md §1.", add_arguments=add_pope_arguments, run=run_pope)
POPE_BUILD = TaskCommand(
    help="write the POPE random/popular/adversarial question files built from COCO instances (seeded)",
    description="eval-protocols.md §1.1.", add_arguments=add_pope_build_arguments, run=run_pope_build)
