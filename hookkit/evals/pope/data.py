"""POPE question files (eval-protocols.md §1.1 step 6) and their provenance (§1.2).

Official JSON-lines files, one ``{"question_id", "image", "text", "label"}`` object per line (the current upstream
files also carry ``"image_id"``). :func:`load_pope_questions` is strict, :func:`iter_pope_questions` /
:func:`read_pope_questions` let a runner skip bad lines and keep the others. :func:`describe_pope_file` pins a file by
SHA-256 and identifies the published version structurally (line count 2910 vs 3000, number of ``imange`` typos).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Label = Literal["yes", "no"]


Prediction = Literal["yes", "no", "unknown"]


Strategy = Literal["random", "popular", "adversarial"]


#: Split names in the order AoiDragon/POPE ``main.py`` generates them (the order matters for the shared RNG).
POPE_SPLITS: tuple[str, str, str] = ("random", "popular", "adversarial")


#: Question template of ``main.py --template`` (§1.1 step 5).
POPE_TEMPLATE = "Is there a {} in the image?"


POPE_LABELS = ("yes", "no")


POPE_PREDICTIONS = ("yes", "no", "unknown")


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
    if label not in POPE_LABELS:
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
