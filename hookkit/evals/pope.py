"""POPE (Polling-based Object Probing Evaluation): data files, builder, prompts, answer parsers and metrics.

Pure Python, no model code. Everything here follows ``/work/shared/reference/eval-protocols.md`` section 1
("POPE"), which describes AoiDragon/POPE (``main.py``, ``utils.py``, ``evaluate.py``) and the answer parsers
of the lineages that report POPE numbers.

Overview
--------
* **Question files** (§1.1 step 6): official JSON-lines files, one ``{"question_id", "image", "text", "label"}``
  object per line (the current upstream files also carry ``"image_id"``).  :func:`load_pope_questions` is strict,
  :func:`iter_pope_questions` / :func:`read_pope_questions` let a runner skip bad lines and keep the others.
* **Provenance** (§1.2): :func:`describe_pope_file` pins a file by SHA-256 and identifies the published version
  structurally (line count 2910 vs 3000, number of ``imange`` typos).  See :data:`KNOWN_POPE_FILES`.
* **Builder** (§1.1): :func:`build_pope_splits` rebuilds random / popular / adversarial splits from COCO-format
  instance annotations with the exact sampling rules of ``utils.py``, but seeded.
* **Prompts** (§1.3): :data:`POPE_PROMPT_PRESETS` and :func:`build_pope_prompt`.
* **Parsers** (§1.4): :data:`POPE_PARSERS` and :func:`parse_pope_answer`; every parser maps an answer to
  ``"yes" | "no" | "unknown"``.
* **Metrics** (§1.5): :func:`pope_metrics` and :func:`pope_summary`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "POPE_SPLITS",
    "POPE_TEMPLATE",
    "PopeDataError",
    "PopeBuildError",
    "PopeQuestion",
    "PopeLoadResult",
    "iter_pope_questions",
    "read_pope_questions",
    "load_pope_questions",
    "file_sha256",
    "KnownPopeFile",
    "KNOWN_POPE_FILES",
    "KNOWN_POPE_SHA256",
    "classify_pope_version",
    "describe_pope_file",
    "PopeImage",
    "coco_objects_per_image",
    "sample_pope_images",
    "make_pope_question_text",
    "build_pope_split",
    "build_pope_splits",
    "write_pope_jsonl",
    "PromptPreset",
    "POPE_PROMPT_PRESETS",
    "get_prompt_preset",
    "build_pope_prompt",
    "PopeParser",
    "POPE_PARSERS",
    "DEFAULT_POPE_PARSER",
    "get_pope_parser",
    "parse_pope_answer",
    "parse_pope_official",
    "parse_opera",
    "parse_vcd_substring",
    "parse_exact",
    "parse_vlmevalkit",
    "pope_metrics",
    "pope_summary",
]

Label = Literal["yes", "no"]
Prediction = Literal["yes", "no", "unknown"]
Strategy = Literal["random", "popular", "adversarial"]

#: Split names in the order AoiDragon/POPE ``main.py`` generates them (the order matters for the shared RNG).
POPE_SPLITS: tuple[str, str, str] = ("random", "popular", "adversarial")

#: Question template of ``main.py --template`` (§1.1 step 5).
POPE_TEMPLATE = "Is there a {} in the image?"

_LABELS = ("yes", "no")
_PREDICTIONS = ("yes", "no", "unknown")
_VOWELS = ("a", "e", "i", "o", "u")


# ---------------------------------------------------------------------------------------------------------------
# Question files (§1.1 step 6)
# ---------------------------------------------------------------------------------------------------------------


class PopeDataError(ValueError):
    """A malformed line in a POPE question file.

    The message has the form ``"<path>:<line>: <reason>"``; the parts are also available as attributes.
    ``line_no`` is 1-based (the number an editor shows).
    """

    def __init__(self, path: str | os.PathLike[str], line_no: int, reason: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{self.path}:{line_no}: {reason}")


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question (one line of an official JSON-lines file).

    ``image_id`` is present in the current upstream files (``{"question_id", "image", "image_id", "text",
    "label"}``) but not in the older ones; other unknown keys are kept in ``extra`` so that nothing is lost.
    ``line_no`` (1-based, not part of equality) records where the question came from.
    """

    question_id: int
    image: str
    text: str
    label: Label
    image_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    line_no: int | None = field(default=None, compare=False)

    def to_record(self) -> dict[str, Any]:
        """The question as an official record (key order ``question_id, image, [image_id,] text, label``)."""
        record: dict[str, Any] = {"question_id": self.question_id, "image": self.image}
        if self.image_id is not None:
            record["image_id"] = self.image_id
        record["text"] = self.text
        record["label"] = self.label
        record.update(self.extra)
        return record


@dataclass
class PopeLoadResult:
    """Questions that parsed plus one :class:`PopeDataError` per bad line (see :func:`read_pope_questions`)."""

    questions: list[PopeQuestion]
    errors: list[PopeDataError]

    @property
    def ok(self) -> bool:
        return not self.errors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _question_from_obj(obj: Any, line_no: int) -> PopeQuestion:
    """Validate one decoded JSON value; raise ``ValueError(reason)`` (without location) if malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in ("question_id", "image", "text", "label") if key not in obj]
    if missing:
        raise ValueError(f"missing required key(s) {', '.join(repr(k) for k in missing)}")
    qid = obj["question_id"]
    if not _is_int(qid):
        raise ValueError(f"'question_id' must be an integer, got {qid!r}")
    for key in ("image", "text"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise ValueError(f"{key!r} must be a non-empty string, got {obj[key]!r}")
    label = obj["label"]
    if label not in _LABELS:
        raise ValueError(f"'label' must be 'yes' or 'no', got {label!r}")
    image_id = obj.get("image_id")
    if image_id is not None and not _is_int(image_id):
        raise ValueError(f"'image_id' must be an integer when present, got {image_id!r}")
    known = {"question_id", "image", "image_id", "text", "label"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return PopeQuestion(
        question_id=qid,
        image=obj["image"],
        text=obj["text"],
        label=label,
        image_id=image_id,
        extra=extra,
        line_no=line_no,
    )


def iter_pope_questions(
    path: str | os.PathLike[str],
    *,
    on_error: Literal["raise", "collect"] = "raise",
) -> Iterator[PopeQuestion | PopeDataError]:
    """Iterate over a POPE JSON-lines file lazily, line by line (§1.1 step 6).

    * ``on_error="raise"`` yields only :class:`PopeQuestion` objects and raises :class:`PopeDataError` at the
      first malformed line.
    * ``on_error="collect"`` never raises for a bad line: it yields the :class:`PopeDataError` *as a value* in
      file order, so a runner can log it, skip the line and keep the others
      (``if isinstance(item, PopeDataError): ...``).

    Per-line checks: valid UTF-8, valid JSON, a JSON object, ``question_id`` an int (not bool) and not repeated
    earlier in the file, ``image``/``text`` non-empty strings, ``label`` exactly ``"yes"`` or ``"no"``, optional
    ``image_id`` an int.  Lines holding only whitespace are skipped silently (a trailing newline is not an
    error); a UTF-8 BOM at the start of the file is ignored.  A missing file raises ``FileNotFoundError``.
    """
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    seen_ids: dict[int, int] = {}
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            error: PopeDataError | None = None
            question: PopeQuestion | None = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                error = PopeDataError(path, line_no, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
            else:
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    error = PopeDataError(path, line_no, f"invalid JSON: {exc.msg} (column {exc.colno})")
                else:
                    try:
                        question = _question_from_obj(obj, line_no)
                    except ValueError as exc:
                        error = PopeDataError(path, line_no, str(exc))
            if question is not None:
                first = seen_ids.get(question.question_id)
                if first is not None:
                    error = PopeDataError(
                        path, line_no, f"duplicate question_id {question.question_id} (first seen on line {first})"
                    )
                    question = None
                else:
                    seen_ids[question.question_id] = line_no
            if error is not None:
                if on_error == "raise":
                    raise error
                yield error
            elif question is not None:
                yield question


def read_pope_questions(
    path: str | os.PathLike[str], *, on_error: Literal["raise", "collect"] = "collect"
) -> PopeLoadResult:
    """Read a whole POPE file into a :class:`PopeLoadResult` (good questions + per-line errors).

    With the default ``on_error="collect"`` bad lines are skipped and reported in ``result.errors``.
    """
    questions: list[PopeQuestion] = []
    errors: list[PopeDataError] = []
    for item in iter_pope_questions(path, on_error=on_error):
        if isinstance(item, PopeDataError):
            errors.append(item)
        else:
            questions.append(item)
    return PopeLoadResult(questions=questions, errors=errors)


def load_pope_questions(path: str | os.PathLike[str]) -> list[PopeQuestion]:
    """Load an official POPE JSON-lines file; raise :class:`PopeDataError` (naming file and line) if malformed."""
    return [q for q in iter_pope_questions(path, on_error="raise") if isinstance(q, PopeQuestion)]


# ---------------------------------------------------------------------------------------------------------------
# Provenance (§1.2)
# ---------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class KnownPopeFile:
    """A documented fact about a published POPE file (§1.2).

    ``lines`` / ``split`` are ``None`` where the protocol notes do not state them.  ``sha256`` is ``None`` for
    every entry today: the real files are not available offline, so hashes must be added from a verified copy.
    """

    name: str
    version: str
    split: str | None
    lines: int | None
    imange_typos: int
    source: str
    sha256: str | None = None


#: Documented POPE-COCO file facts (eval-protocols.md §1.2).  Matching is structural: (split if known from the
#: file name, line count if documented, typo count); a match is reported in ``describe_pope_file()["known"]``.
KNOWN_POPE_FILES: tuple[KnownPopeFile, ...] = (
    KnownPopeFile(
        name="aoidragon-random-2910-typo",
        version="aoidragon-2910-typo",
        split="random",
        lines=2910,
        imange_typos=144,
        source=(
            "AoiDragon/POPE output/coco/coco_pope_random.json at commits 28f884a and e3e3926 (90 negatives "
            "missing); used for LLaVA-1.5's numbers (LLaVA issue #626); shipped by OPERA"
        ),
    ),
    KnownPopeFile(
        name="aoidragon-popular-typo",
        version="aoidragon-3000-typo",
        split="popular",
        lines=None,
        imange_typos=44,
        source="AoiDragon/POPE output/coco/coco_pope_popular.json before the Oct/Nov 2023 typo fix",
    ),
    KnownPopeFile(
        name="aoidragon-adversarial-typo",
        version="aoidragon-3000-typo",
        split="adversarial",
        lines=None,
        imange_typos=58,
        source="AoiDragon/POPE output/coco/coco_pope_adversarial.json before the Oct/Nov 2023 typo fix",
    ),
    KnownPopeFile(
        name="vcd-adversarial-typo",
        version="aoidragon-3000-typo",
        split="adversarial",
        lines=None,
        imange_typos=57,
        source="VCD (DAMO-NLP-SG/VCD) ships fixed random/popular files but a typo'd adversarial file",
    ),
    KnownPopeFile(
        name="aoidragon-head-fixed",
        version="aoidragon-3000-fixed",
        split=None,
        lines=3000,
        imange_typos=0,
        source="AoiDragon/POPE output/coco/coco_pope_{random,popular,adversarial}.json at HEAD (1500/1500)",
    ),
)

#: sha256 -> version name for files verified by hash.  Empty until a verified copy is hashed; extend it in place
#: (``KNOWN_POPE_SHA256[digest] = "aoidragon-3000-fixed"``) to make :func:`describe_pope_file` prefer hashes.
KNOWN_POPE_SHA256: dict[str, str] = {}


def classify_pope_version(lines: int, imange_typos: int) -> str:
    """Structural POPE version rule (§1.2).

    * 2910 questions and at least one ``imange`` typo -> ``"aoidragon-2910-typo"`` (old random file);
    * 3000 questions and no typo -> ``"aoidragon-3000-fixed"`` (upstream HEAD);
    * 3000 questions with typos -> ``"aoidragon-3000-typo"`` (old popular/adversarial files, VCD's adversarial);
    * anything else -> ``"unknown"`` (e.g. a truncated, re-generated or non-COCO file).

    The typo comes from ``utils.create_question``: ``template.replace("a", "an")`` for vowel-initial objects also
    turns "image" into "imange", so the typo count equals the number of vowel-initial questions.
    """
    if lines == 2910 and imange_typos > 0:
        return "aoidragon-2910-typo"
    if lines == 3000 and imange_typos == 0:
        return "aoidragon-3000-fixed"
    if lines == 3000 and imange_typos > 0:
        return "aoidragon-3000-typo"
    return "unknown"


def _split_from_name(path: str | os.PathLike[str]) -> str | None:
    name = Path(path).name.lower()
    found = [split for split in POPE_SPLITS if split in name]
    return found[0] if len(found) == 1 else None


def describe_pope_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Provenance record of a POPE question file (§1.2; goes into the result JSON's ``data_files``, §8).

    Returns ``{"path", "sha256", "lines", "imange_typos", "has_image_id", "split", "version", "version_rule",
    "known"}`` where

    * ``lines`` = number of non-blank lines (= questions in a well-formed file);
    * ``imange_typos`` = occurrences of the byte string ``imange`` anywhere in the file;
    * ``has_image_id`` = whether the first non-blank line has an ``image_id`` key (current upstream format);
    * ``split`` = ``random``/``popular``/``adversarial`` if exactly one of them occurs in the file name;
    * ``version`` = :data:`KNOWN_POPE_SHA256` entry if the hash is known (``version_rule="sha256"``), else
      :func:`classify_pope_version` (``version_rule="structural"``);
    * ``known`` = names of :data:`KNOWN_POPE_FILES` entries whose documented facts all match.
    """
    data = Path(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    nonblank = [line for line in data.splitlines() if line.strip()]
    lines = len(nonblank)
    typos = data.count(b"imange")
    has_image_id = False
    if nonblank:
        try:
            first = json.loads(nonblank[0].decode("utf-8-sig"))
            has_image_id = isinstance(first, dict) and "image_id" in first
        except (UnicodeDecodeError, json.JSONDecodeError):
            has_image_id = False
    split = _split_from_name(path)
    if sha in KNOWN_POPE_SHA256:
        version, rule = KNOWN_POPE_SHA256[sha], "sha256"
    else:
        version, rule = classify_pope_version(lines, typos), "structural"
    known = [
        entry.name
        for entry in KNOWN_POPE_FILES
        if entry.imange_typos == typos
        and (entry.lines is None or entry.lines == lines)
        and (entry.split is None or split is None or entry.split == split)
        and (entry.sha256 is None or entry.sha256 == sha)
    ]
    return {
        "path": str(path),
        "sha256": sha,
        "lines": lines,
        "imange_typos": typos,
        "has_image_id": has_image_id,
        "split": split,
        "version": version,
        "version_rule": rule,
        "known": known,
    }


# ---------------------------------------------------------------------------------------------------------------
# Builder (§1.1)
# ---------------------------------------------------------------------------------------------------------------


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


def write_pope_jsonl(records: Iterable[Mapping[str, Any] | PopeQuestion], path: str | os.PathLike[str]) -> str:
    """Write records as POPE JSON lines (``json.dumps(record) + "\\n"``, as ``utils.pope``) atomically.

    Accepts dicts or :class:`PopeQuestion` objects.  The file is written to a temporary sibling and renamed, so
    a crash never leaves a half-written file.  Returns the SHA-256 of what was written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                obj = record.to_record() if isinstance(record, PopeQuestion) else dict(record)
                line = json.dumps(obj) + "\n"
                handle.write(line)
                digest.update(line.encode("utf-8"))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Prompt presets (§1.3)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPreset:
    """A POPE prompt: the question followed by ``suffix`` (byte-exact protocol data)."""

    name: str
    suffix: str
    source: str

    def format(self, question: str) -> str:
        return question + self.suffix


#: Named POPE prompt presets (§1.3).  The question is used as is (no stripping).
POPE_PROMPT_PRESETS: dict[str, PromptPreset] = {
    "llava15": PromptPreset(
        "llava15",
        "\nAnswer the question using a single word or phrase.",
        "LLaVA-1.5 official eval and lmms-eval post_prompt",
    ),
    "plain": PromptPreset("plain", "", "OPERA / PAI: raw question in the model's chat template"),
    "vcd": PromptPreset("vcd", " Please answer this question with one word.", "VCD"),
}


def get_prompt_preset(name: str) -> PromptPreset:
    """Look up a prompt preset; unknown names raise ``KeyError`` listing the allowed ones."""
    try:
        return POPE_PROMPT_PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(POPE_PROMPT_PRESETS))
        raise KeyError(f"unknown POPE prompt preset {name!r}; allowed: {allowed}") from None


def build_pope_prompt(question: str, preset: str = "llava15") -> str:
    """The user-turn text for a POPE question under a named preset (chat templating is the caller's job)."""
    return get_prompt_preset(preset).format(question)


# ---------------------------------------------------------------------------------------------------------------
# Answer parsers (§1.4)
# ---------------------------------------------------------------------------------------------------------------


def parse_pope_official(answer: str, label: str | None = None) -> Prediction:
    """[``pope_official``] AoiDragon/POPE ``evaluate.py`` = LLaVA ``eval_pope.py``.

    Keep the text before the first ``.``, drop commas, split on single spaces; ``"no"`` if a token is exactly
    ``No``, ``not`` or ``no``, else ``"yes"`` (so empty or garbage answers, ``NO`` and ``isn't`` count as yes).
    Never returns ``"unknown"``.  ``label`` is ignored.
    """
    text = answer
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


_OPERA_NEG_WORDS = ("No", "not", "no", "NO")


def parse_opera(answer: str, label: str | None = None) -> Prediction:
    """[``opera``] OPERA ``pope_eval.py`` ``recorder``.

    Remove every ``.`` and ``,``, split on single spaces; ``"no"`` if a token is ``No``, ``not``, ``no`` or
    ``NO`` or ends in ``n't``, else ``"yes"`` (case-sensitive: ``Not`` alone is yes).  Never ``"unknown"``.
    """
    words = answer.replace(".", "").replace(",", "").split(" ")
    if any(word in _OPERA_NEG_WORDS for word in words) or any(word.endswith("n't") for word in words):
        return "no"
    return "yes"


def parse_vcd_substring(answer: str, label: str | None = None) -> Prediction:
    """[``vcd_substring``] VCD ``experiments/eval/eval_pope.py`` (label-dependent, asymmetric).

    VCD does not parse the answer on its own: it lowercases and strips it, then for a ``yes`` question counts it
    correct iff the substring ``"yes"`` occurs, and for a ``no`` question counts it correct iff the substring
    ``"no"`` occurs (so ``not``, ``none``, ``know`` count as no).  This function returns the prediction that
    VCD's counting implies: for ``label="yes"`` -> ``"yes"`` if ``"yes"`` occurs else ``"no"``; for
    ``label="no"`` -> ``"no"`` if ``"no"`` occurs else ``"yes"``.  The same answer can therefore map to
    different predictions for different labels (``""`` is ``"no"`` under a yes-label and ``"yes"`` under a
    no-label).  ``label`` is required (``ValueError`` otherwise).  Never ``"unknown"``.
    """
    if label is None:
        raise ValueError("parser 'vcd_substring' needs the ground-truth label (label='yes' or 'no')")
    gt = label.lower().strip()
    text = answer.lower().strip()
    if gt == "yes":
        return "yes" if "yes" in text else "no"
    if gt == "no":
        return "no" if "no" in text else "yes"
    raise ValueError(f"label must be 'yes' or 'no', got {label!r}")


def parse_exact(answer: str, label: str | None = None) -> Prediction:
    """[``exact``] lmms-eval ``tasks/pope/utils.py``: ``answer.lower().strip()`` must equal ``yes`` or ``no``.

    Anything else (``"Yes."``, ``"No, there is not"``) is ``"unknown"``.  (lmms-eval's ``pope_yes_ratio`` is
    computed from ground truth; that bug is not replicated, see :func:`pope_metrics`.)
    """
    text = answer.lower().strip()
    if text == "yes":
        return "yes"
    if text == "no":
        return "no"
    return "unknown"


_VLMEVAL_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')  # upstream list, same order
_VLMEVAL_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_VLMEVAL_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")


def _vlmeval_process_punctuation(in_text: str) -> str:
    """VLMEvalKit ``smp.misc.process_punctuation``, reproduced with its quirks.

    Upstream calls ``periodStrip.sub('', outText, re.UNICODE)``: the third positional argument is ``count``, so at
    most ``int(re.UNICODE) == 32`` periods are removed; and ``(?!<=\\d)`` is a negative *lookahead*, so every
    period not followed by a digit is removed.  Both are kept for byte-exact agreement.
    """
    out_text = in_text
    for p in _VLMEVAL_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_VLMEVAL_COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _VLMEVAL_PERIOD_STRIP.sub("", out_text, count=int(re.UNICODE))


def parse_vlmevalkit(answer: str, label: str | None = None) -> Prediction:
    """[``vlmevalkit``] VLMEvalKit ``dataset/utils/yorn.py`` ``YOrN_Extraction`` (no LLM judge).

    Lowercase, normalise punctuation (:func:`_vlmeval_process_punctuation`), split on whitespace; ``"yes"`` iff
    ``yes`` is a word and ``no`` is not, ``"no"`` iff ``no`` is a word and ``yes`` is not, else ``"unknown"``.
    VLMEvalKit then optionally asks an LLM judge and otherwise scores Unknown as No; :func:`pope_metrics` does
    the latter by default.
    """
    words = _vlmeval_process_punctuation(answer.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    return "unknown"


@dataclass(frozen=True)
class PopeParser:
    """A registered answer parser.  ``fn(answer, label)`` returns ``"yes" | "no" | "unknown"``.

    ``needs_label`` is true for parsers whose output depends on the ground-truth label (``vcd_substring``);
    call them through :func:`parse_pope_answer` with ``label=`` set.
    """

    id: str
    fn: Callable[[str, str | None], Prediction]
    needs_label: bool
    can_be_unknown: bool
    source: str


#: Answer parser registry (§1.4).  Always record the parser id with the results.
POPE_PARSERS: dict[str, PopeParser] = {
    "pope_official": PopeParser(
        "pope_official", parse_pope_official, False, False, "AoiDragon/POPE evaluate.py, LLaVA eval_pope.py"
    ),
    "opera": PopeParser("opera", parse_opera, False, False, "OPERA pope_eval.py"),
    "vcd_substring": PopeParser("vcd_substring", parse_vcd_substring, True, False, "VCD eval_pope.py"),
    "exact": PopeParser("exact", parse_exact, False, True, "lmms-eval tasks/pope/utils.py"),
    "vlmevalkit": PopeParser("vlmevalkit", parse_vlmevalkit, False, True, "VLMEvalKit dataset/utils/yorn.py"),
}

#: The official parser is the default (Key facts: "default to the official one").
DEFAULT_POPE_PARSER = "pope_official"


def get_pope_parser(parser_id: str) -> PopeParser:
    """Look up a parser; unknown ids raise ``KeyError`` listing the allowed ones."""
    try:
        return POPE_PARSERS[parser_id]
    except KeyError:
        allowed = ", ".join(sorted(POPE_PARSERS))
        raise KeyError(f"unknown POPE answer parser {parser_id!r}; allowed: {allowed}") from None


def parse_pope_answer(answer: str, parser: str = DEFAULT_POPE_PARSER, *, label: str | None = None) -> Prediction:
    """Map a model answer to ``"yes" | "no" | "unknown"`` with a registered parser.

    ``label`` (the question's ground truth) is required for parsers with ``needs_label`` and ignored otherwise.
    """
    spec = get_pope_parser(parser)
    if spec.needs_label and label is None:
        raise ValueError(f"parser {parser!r} needs the ground-truth label (pass label='yes' or 'no')")
    return spec.fn(answer, label)


# ---------------------------------------------------------------------------------------------------------------
# Metrics (§1.5)
# ---------------------------------------------------------------------------------------------------------------

_METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")


def _div(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def pope_metrics(
    preds: Sequence[str],
    labels: Sequence[str],
    *,
    unknown_policy: Literal["as_no", "lmms_eval"] = "as_no",
) -> dict[str, Any]:
    """POPE metrics with "yes" as the positive class (§1.5).

    ``preds`` are parser outputs (``"yes" | "no" | "unknown"``), ``labels`` are ``"yes" | "no"``; anything else
    raises ``ValueError``, as do different lengths.

    Unknown predictions:

    * ``unknown_policy="as_no"`` (default, VLMEvalKit's "else counted as No"): an unknown is scored as a "no"
      prediction, so it lands in ``FN`` (label yes) or ``TN`` (label no) of the confusion matrix;
    * ``unknown_policy="lmms_eval"``: unknowns are left out of TP/FP/TN/FN (so out of precision and recall) but
      count as wrong in accuracy, as lmms-eval's aggregation does.

    Either way ``confusion`` also reports ``unknown`` with its split by label (``unknown_label_yes``,
    ``unknown_label_no``), and ``unknown_rate = unknown / n``.

    Definitions: ``accuracy = (TP + TN) / n``; ``precision = TP / (TP + FP)``; ``recall = TP / (TP + FN)``;
    ``f1 = 2PR / (P + R)``; ``yes_ratio = #(pred == "yes") / n`` from the predictions (never from ground truth).
    Every ratio whose denominator is 0 is reported as ``0.0`` instead of raising (e.g. ``n == 0``, or no "yes"
    prediction -> precision 0.0).
    """
    if len(preds) != len(labels):
        raise ValueError(f"preds and labels differ in length ({len(preds)} != {len(labels)})")
    if unknown_policy not in ("as_no", "lmms_eval"):
        raise ValueError(f"unknown_policy must be 'as_no' or 'lmms_eval', got {unknown_policy!r}")
    tp = fp = tn = fn = 0
    unknown_yes = unknown_no = 0
    yes_preds = 0
    for index, (pred, label) in enumerate(zip(preds, labels)):
        if pred not in _PREDICTIONS:
            raise ValueError(f"preds[{index}] = {pred!r}; expected one of {_PREDICTIONS}")
        if label not in _LABELS:
            raise ValueError(f"labels[{index}] = {label!r}; expected 'yes' or 'no'")
        if pred == "yes":
            yes_preds += 1
        if pred == "unknown":
            if label == "yes":
                unknown_yes += 1
            else:
                unknown_no += 1
            if unknown_policy == "lmms_eval":
                continue
            pred = "no"
        if pred == "yes":
            if label == "yes":
                tp += 1
            else:
                fp += 1
        elif label == "no":
            tn += 1
        else:
            fn += 1
    n = len(preds)
    unknown = unknown_yes + unknown_no
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    return {
        "accuracy": _div(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _div(2 * precision * recall, precision + recall),
        "yes_ratio": _div(yes_preds, n),
        "unknown_rate": _div(unknown, n),
        "confusion": {
            "TP": tp,
            "FP": fp,
            "TN": tn,
            "FN": fn,
            "unknown": unknown,
            "unknown_label_yes": unknown_yes,
            "unknown_label_no": unknown_no,
        },
        "n": n,
        "unknown_policy": unknown_policy,
    }


def pope_summary(per_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-split metrics plus their unweighted mean over splits (§1.5: papers report mean F1 over 3 splits).

    ``per_split`` maps a split name to a :func:`pope_metrics` result.  Returns
    ``{"per_split": {...}, "mean": {accuracy, precision, recall, f1, yes_ratio, unknown_rate}, "splits": [...],
    "n": total questions}``.  The mean is the plain average of each split's value (not pooled counts); with no
    splits every mean is ``0.0``.
    """
    splits = list(per_split)
    mean = {key: _div(sum(float(per_split[split][key]) for split in splits), len(splits)) for key in _METRIC_KEYS}
    return {
        "per_split": {split: dict(per_split[split]) for split in splits},
        "mean": mean,
        "splits": splits,
        "n": sum(int(per_split[split].get("n", 0)) for split in splits),
    }
