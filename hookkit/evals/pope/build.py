"""The POPE builder (eval-protocols.md §1.1): random / popular / adversarial splits from COCO-format instance
annotations with the exact sampling rules of AoiDragon/POPE ``utils.py``, but seeded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hookkit.evals.pope.data import POPE_SPLITS, POPE_TEMPLATE, Label, Strategy

_VOWELS = ("a", "e", "i", "o", "u")


class PopeBuildError(ValueError):
    """The annotations cannot produce the requested POPE splits (too few images, no negative left, ...)."""


@dataclass(frozen=True)
class PopeImage:
    """One image's ground-truth objects: distinct category names in order of first annotation (§1.1 step 1)."""

    image_id: int
    file_name: str
    objects: tuple[str, ...]


def coco_objects_per_image(annotations: Mapping[str, Any]) -> list[PopeImage]:
    """Ground-truth object lists from COCO instance annotations (``images``, ``annotations``, ``categories``).

    Equivalent of one line of POPE's ``segmentation/coco_ground_truth_segmentation.json`` per image
    (§1.1 step 1).  Rules (that file's generator is not published, so these are hookkit's choices):

    * ``objects`` = distinct category names in order of first occurrence in ``annotations["annotations"]``
      (file order); crowd annotations (``iscrowd=1``) count like any other annotation;
    * ``file_name`` from ``annotations["images"]``; an image id that is annotated but not listed there gets
      ``COCO_val2014_{id:012d}.jpg``;
    * images without annotations are omitted; the result is sorted by ``image_id`` so that sampling does not
      depend on file order.
    """
    try:
        categories = {cat["id"]: cat["name"] for cat in annotations["categories"]}
        anns = annotations["annotations"]
    except (KeyError, TypeError) as exc:
        raise PopeBuildError(f"COCO annotations need 'categories' and 'annotations' lists ({exc!r})") from exc
    file_names = {img["id"]: img.get("file_name") for img in annotations.get("images", [])}
    objects: dict[int, list[str]] = {}
    for ann in anns:
        image_id = ann["image_id"]
        cat_id = ann["category_id"]
        if cat_id not in categories:
            raise PopeBuildError(f"annotation {ann.get('id')!r} has unknown category_id {cat_id!r}")
        name = categories[cat_id]
        seen = objects.setdefault(image_id, [])
        if name not in seen:
            seen.append(name)
    return [
        PopeImage(
            image_id=image_id,
            file_name=file_names.get(image_id) or f"COCO_val2014_{image_id:012d}.jpg",
            objects=tuple(objects[image_id]),
        )
        for image_id in sorted(objects)
    ]


def sample_pope_images(
    images: Sequence[PopeImage], num_images: int, *, rng: random.Random, min_objects: int = 3
) -> list[PopeImage]:
    """Keep images with at least ``min_objects`` objects and draw ``num_images`` of them (§1.1 step 2).

    Same calls as ``main.py``: filter in input order, then ``rng.sample(kept, num_images)``.  The result is in
    sample order, which is the order of the questions.
    """
    kept = [image for image in images if len(image.objects) >= min_objects]
    if num_images > len(kept):
        raise PopeBuildError(
            f"only {len(kept)} images have >= {min_objects} objects; cannot sample num_images={num_images}"
        )
    return rng.sample(kept, num_images)


def make_pope_question_text(
    obj: str, template: str = POPE_TEMPLATE, *, an_rule: Literal["fixed", "legacy"] = "fixed"
) -> str:
    """Question text for one object (§1.1 step 5).

    For objects starting with a lowercase vowel (``a e i o u``, the check of ``utils.create_question``):

    * ``an_rule="fixed"`` replaces the first ``"a {}"`` of the template by ``"an {}"``
      (``Is there an umbrella in the image?``), as in the current upstream files;
    * ``an_rule="legacy"`` reproduces the original ``template.replace("a", "an")``, which also rewrites "image"
      into the ``imange`` typo of the old files (``Is there an umbrella in the imange?``).

    Plurals are not fixed (``Is there a skis in the image?``), as in the original.
    """
    if an_rule not in ("fixed", "legacy"):
        raise ValueError(f"an_rule must be 'fixed' or 'legacy', got {an_rule!r}")
    if obj[:1] in _VOWELS:
        if an_rule == "legacy":
            return template.replace("a", "an").format(obj)
        return template.replace("a {}", "an {}", 1).format(obj)
    return template.format(obj)


def _object_counts(images: Sequence[PopeImage]) -> dict[str, int]:
    """``utils.generate_ground_truth_objects``: image-level counts, keys in first-seen order (§1.1 step 3)."""
    counts: dict[str, int] = {}
    for image in images:
        for obj in image.objects:
            counts[obj] = counts.get(obj, 0) + 1
    return counts


def _co_occurrence_ranking(images: Sequence[PopeImage]) -> dict[str, list[str]]:
    """``utils.compute_co_occurrence``: per object, others by descending co-occurrence (stable ties)."""
    co_occur: dict[str, dict[str, int]] = {}
    for image in images:
        for obj in image.objects:
            row = co_occur.setdefault(obj, {})
            for other in image.objects:
                if other == obj:
                    continue
                row[other] = row.get(other, 0) + 1
    return {
        obj: [name for name, _ in sorted(row.items(), key=lambda item: item[1], reverse=True)]
        for obj, row in co_occur.items()
    }


def _random_negative(
    rng: random.Random, all_objects: Sequence[str], present: set[str], history: Sequence[str], image_id: int
) -> str:
    """``random.choice(gt_objects_list)`` until the object is neither present nor already asked (as ``utils.pope``)."""
    if all(obj in history or obj in present for obj in all_objects):
        raise PopeBuildError(
            f"no negative object left for image {image_id}: every object of the sampled images is present in it "
            "or already asked"
        )
    choice = rng.choice(all_objects)
    while choice in history or choice in present:
        choice = rng.choice(all_objects)
    return choice


def build_pope_split(
    images: Sequence[PopeImage],
    strategy: Strategy,
    *,
    rng: random.Random,
    sample_num: int = 3,
    template: str = POPE_TEMPLATE,
    an_rule: Literal["fixed", "legacy"] = "fixed",
    first_question_id: int = 1,
    include_image_id: bool = False,
) -> list[dict[str, Any]]:
    """Questions of one split for already-sampled images, exactly as ``utils.pope`` builds them (§1.1 step 4).

    Per image, for ``i`` in ``0..sample_num-1``: the positive is ``image.objects[i]`` (list order, not random),
    followed by one negative that is neither in the image nor already asked for this image:

    * ``random``: ``rng.choice(all_objects)`` repeated until valid, where ``all_objects`` lists every object of
      the sampled images in first-seen order (rejection sampling, as the original);
    * ``popular``: the first valid object in descending image frequency (ties: first-seen order, because
      Python's ``sorted(..., reverse=True)`` is stable); random fallback as above if none is valid;
    * ``adversarial``: the first valid object in descending co-occurrence with *that* positive (ties:
      first-seen order); random fallback as above if none is valid.

    Questions alternate yes, no, yes, no, ... (``2 * sample_num`` per image), ids count up from
    ``first_question_id`` (``utils.py`` starts at 1; the current upstream files start at 0 and include
    ``image_id``: pass ``first_question_id=0, include_image_id=True`` for that layout).

    The original loops forever when no valid negative exists; here that raises :class:`PopeBuildError`.
    RNG calls happen only where the original calls ``random.choice`` and in the same order, so a shared
    ``rng`` reproduces the original's sequence of draws.
    """
    if strategy not in POPE_SPLITS:
        raise ValueError(f"unknown POPE strategy {strategy!r}; expected one of {', '.join(POPE_SPLITS)}")
    counts = _object_counts(images)
    all_objects = list(counts)
    by_frequency = [name for name, _ in sorted(counts.items(), key=lambda item: item[1], reverse=True)]
    co_ranking = _co_occurrence_ranking(images) if strategy == "adversarial" else {}

    records: list[dict[str, Any]] = []
    question_id = first_question_id

    def add(image: PopeImage, obj: str, label: Label) -> None:
        nonlocal question_id
        record: dict[str, Any] = {"question_id": question_id, "image": image.file_name}
        if include_image_id:
            record["image_id"] = image.image_id
        record["text"] = make_pope_question_text(obj, template, an_rule=an_rule)
        record["label"] = label
        records.append(record)
        question_id += 1

    for image in images:
        if len(image.objects) < sample_num:
            raise PopeBuildError(f"image {image.image_id} has {len(image.objects)} objects < sample_num={sample_num}")
        present = set(image.objects)
        history: list[str] = []
        for i in range(sample_num):
            positive = image.objects[i]
            history.append(positive)
            add(image, positive, "yes")
            negative: str | None = None
            if strategy != "random":
                ranking = by_frequency if strategy == "popular" else co_ranking.get(positive, [])
                negative = next((obj for obj in ranking if obj not in history and obj not in present), None)
            if negative is None:
                negative = _random_negative(rng, all_objects, present, history, image.image_id)
            history.append(negative)
            add(image, negative, "no")
    return records


def build_pope_splits(
    annotations: Mapping[str, Any],
    num_images: int = 500,
    *,
    seed: int,
    min_objects: int = 3,
    template: str = POPE_TEMPLATE,
    an_rule: Literal["fixed", "legacy"] = "fixed",
    first_question_id: int = 1,
    include_image_id: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Build the random, popular and adversarial POPE splits from COCO instance annotations (§1.1).

    Deterministic given ``seed``: one ``random.Random(seed)`` is used for, in this order, the image sample
    (:func:`sample_pope_images`), then the random, popular and adversarial splits (:func:`build_pope_split`),
    mirroring the calls of ``main.py`` + ``utils.py``.  The result therefore equals what the original produces
    after ``random.seed(seed)`` when fed a segmentation file whose lines are in ascending image-id order with
    objects in first-annotation order (see :func:`coco_objects_per_image`).

    ``min_objects`` plays both roles of the original ``--sample_num`` (minimum objects per image and number of
    positives per image), so the default gives 6 questions per image, 3000 per split for 500 images.

    Returns ``{"random": [...], "popular": [...], "adversarial": [...]}`` of official records
    (write them with :func:`write_pope_jsonl`).
    """
    rng = random.Random(seed)
    images = sample_pope_images(coco_objects_per_image(annotations), num_images, rng=rng, min_objects=min_objects)
    return {
        split: build_pope_split(
            images,
            split,  # type: ignore[arg-type]
            rng=rng,
            sample_num=min_objects,
            template=template,
            an_rule=an_rule,
            first_question_id=first_question_id,
            include_image_id=include_image_id,
        )
        for split in POPE_SPLITS
    }
