"""The CHAIR vocabulary: COCO synonyms (node words), double words, and the record of a caption's objects."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

#: Name/version of :func:`tokenize`, recorded with every result.
TOKENIZER = "hookkit-regex-v1"


#: The bundled COCO synonym table (80 lines: node word, then synonyms, ``", "``-separated).
DEFAULT_SYNONYMS_PATH = Path(__file__).resolve().parents[1] / "data" / "coco_synonyms.txt"


#: ``coco_double_words`` of LisaAnne/Hallucination ``utils/chair.py`` (commit a967f2f) = OPERA ``chair.py``,
#: in their order (duplicates included).  Each maps to itself.  ``stove top oven`` has three words and can never
#: match a bigram; ``home plate`` and ``train track`` are not objects: merging them only stops ``train`` from
#: firing on "train tracks".
COCO_DOUBLE_WORDS: tuple[str, ...] = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "hot dog",
    "teddy bear",
    "home plate",
    "train track",
)


#: ``baby X`` / ``adult X`` -> ``X`` (otherwise "baby"/"adult" would fire for person).
ANIMAL_WORDS: tuple[str, ...] = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)


#: ``passenger X`` -> ``X`` (otherwise "passenger" would fire for person).
VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")


def _build_double_words() -> dict[str, str]:
    """``double_word_dict`` exactly as the reference builds it (§2.2 step 3); later entries override earlier."""
    table: dict[str, str] = {}
    for double_word in COCO_DOUBLE_WORDS:
        table[double_word] = double_word
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"
    return table


#: Bigram -> merged word (§2.2 step 3).
DOUBLE_WORDS: Mapping[str, str] = _build_double_words()


def merge_double_words(words: Sequence[str]) -> tuple[list[str], list[int]]:
    """Merge two-word objects left to right as the published ``caption_to_words`` does (``"hot dog"`` → one word).

    Returns the merged words and, for each, the index of its first word in ``words``.
    """
    merged: list[str] = []
    starts: list[int] = []
    i = 0
    while i < len(words):
        starts.append(i)
        pair = " ".join(words[i : i + 2])
        if pair in DOUBLE_WORDS:
            merged.append(DOUBLE_WORDS[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    return merged, starts


@dataclass(frozen=True)
class ChairVocab:
    """The COCO synonym vocabulary: ``objects`` (every listed string) and ``inverse`` (synonym -> node word).

    Parsing follows the reference byte for byte: each non-blank line is ``line.strip().split(", ")``; the first
    entry is the node word; ``inverse`` is filled row by row so a synonym listed twice maps to its last row.

    The reference file has two entries with a leading space (``" motor bike"`` after ``"scooter,  "``, and
    ``" cheesecake"``) and a capitalised ``"iPhone"``; lowercased tokens can never equal them, so the reference
    never detects "motor bike" (it is merged into one word that is not in the vocabulary) nor "cheesecake".
    ``repair_whitespace=True`` strips every entry, which fixes the first two (not reference-compatible; recorded
    in the result config).
    """

    rows: tuple[tuple[str, ...], ...]
    objects: frozenset[str]
    inverse: Mapping[str, str]
    source: str = "<text>"
    sha256: str | None = None
    repair_whitespace: bool = False

    @classmethod
    def from_text(cls, text: str, *, source: str = "<text>", repair_whitespace: bool = False) -> ChairVocab:
        rows: list[tuple[str, ...]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            entries = line.strip().split(", ")
            if repair_whitespace:
                entries = [entry.strip() for entry in entries]
            rows.append(tuple(entries))
        inverse: dict[str, str] = {}
        for row in rows:
            for entry in row:
                inverse[entry] = row[0]
        return cls(
            rows=tuple(rows),
            objects=frozenset(inverse),
            inverse=inverse,
            source=source,
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            repair_whitespace=repair_whitespace,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None, *, repair_whitespace: bool = False) -> ChairVocab:
        """Read a ``synonyms.txt``-format file (default: the bundled :data:`DEFAULT_SYNONYMS_PATH`)."""
        source = Path(path) if path is not None else DEFAULT_SYNONYMS_PATH
        data = source.read_bytes()
        vocab = cls.from_text(data.decode("utf-8"), source=str(source), repair_whitespace=repair_whitespace)
        return vocab

    @property
    def node_words(self) -> tuple[str, ...]:
        """The canonical names (first entry of every row), in file order."""
        return tuple(row[0] for row in self.rows)

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "sha256": self.sha256,
            "node_words": len(self.rows),
            "repair_whitespace": self.repair_whitespace,
        }


@functools.lru_cache(maxsize=2)
def default_vocab(repair_whitespace: bool = False) -> ChairVocab:
    """The bundled vocabulary (cached)."""
    return ChairVocab.from_file(None, repair_whitespace=repair_whitespace)


class CaptionObjects(NamedTuple):
    """Result of :func:`caption_to_objects` (the reference's ``words, node_words, idxs, double_words``).

    * ``words``: mentioned vocabulary words (after merging), in caption order, with multiplicity;
    * ``node_words``: the COCO category (node word) of each entry of ``words``;
    * ``idxs``: token position (in the singularised token list) where each mention starts;
    * ``raw_words``: every token after singularisation and double-word merging, before the toilet/seat rule;
      Len counts these (punctuation included, as in the reference).
    """

    words: list[str]
    node_words: list[str]
    idxs: list[int]
    raw_words: list[str]
