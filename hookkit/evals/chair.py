"""CHAIR (Caption Hallucination Assessment with Image Relevance), fully offline.

Implements ``/work/shared/reference/eval-protocols.md`` section 2: Rohrbach et al. 2018, LisaAnne/Hallucination
``utils/chair.py`` and its LVLM port in OPERA ``chair.py`` (Maxlinn), without NLTK or ``pattern`` and without any
download at run time.

Pipeline (§2.2, :func:`caption_to_objects`)
-------------------------------------------
1. lowercase, tokenise with :func:`tokenize` (a deterministic regex tokenizer standing in for NLTK
   ``word_tokenize``);
2. singularise with :func:`singularize` (``inflect.engine().singular_noun`` plus guards for words inflect mangles;
   the reference used ``pattern.en.singularize`` / the WordNet lemmatizer: results are recorded as
   ``"singularizer": "inflect"``);
3. greedy left-to-right bigram merge with :data:`DOUBLE_WORDS` (COCO multiword names, ``baby``/``adult`` + animal,
   ``passenger jet/train``, ``bow tie`` -> tie, ``toilet seat`` -> toilet, ``wine glas`` -> wine glass);
4. if both ``toilet`` and ``seat`` occur, drop ``seat``; keep words of the synonym vocabulary and map each to its
   node word (one of the 80 COCO category names).

Ground truth per image (§2.2, :class:`ChairScorer`) = node words of the image's instance annotations ∪ node words
extracted by the same pipeline from its reference captions.  Metrics (§2.3, :meth:`ChairScorer.score`) are
CHAIR_s, CHAIR_i, recall (× 100) and the mean caption length.

The synonym table ships as package data (``data/coco_synonyms.txt``, provenance in ``data/PROVENANCE.md``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

__all__ = [
    "SINGULARIZER",
    "TOKENIZER",
    "DEFAULT_SYNONYMS_PATH",
    "COCO_DOUBLE_WORDS",
    "ANIMAL_WORDS",
    "VEHICLE_WORDS",
    "DOUBLE_WORDS",
    "ChairVocab",
    "default_vocab",
    "tokenize",
    "singularize",
    "CaptionObjects",
    "caption_to_objects",
    "ChairResult",
    "ChairScorer",
    "load_captions",
    "sample_image_ids",
]

#: Name of the singularisation variant, recorded with every result (§2.2 step 2: "record which").
SINGULARIZER = "inflect"
#: Name/version of :func:`tokenize`, recorded with every result.
TOKENIZER = "hookkit-regex-v1"

#: The bundled COCO synonym table (80 lines: node word, then synonyms, ``", "``-separated).
DEFAULT_SYNONYMS_PATH = Path(__file__).resolve().parent / "data" / "coco_synonyms.txt"

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


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary (§2.1)
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation and singularisation (§2.2 steps 1-2)
# ---------------------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"n't\b"  # negation clitic: "don't" -> "do", "n't" (as NLTK's Treebank rules)
    r"|'(?:s|re|ve|ll|d|m)\b"  # clitics: "dog's" -> "dog", "'s"
    r"|\d+(?:[.,]\d+)+"  # numbers with separators: 3.5, 1,000
    r"|[^\W_]+?(?=n't\b)"  # the stem before "n't"
    r"|[^\W_]+(?:-[^\W_]+)*"  # words and numbers; hyphenated compounds stay one token ("t-shirt", "hot-dog")
    r"|\.\.\."  # ellipsis
    r"|\S"  # any other non-space character is a token of its own (punctuation)
)


def tokenize(text: str) -> list[str]:
    """Deterministic regex word tokenizer (``hookkit-regex-v1``), a stand-in for NLTK ``word_tokenize``.

    Words are maximal runs of letters/digits (Unicode-aware, underscore excluded); hyphenated compounds stay whole
    (as NLTK keeps them); ``n't`` and the clitics ``'s 're 've 'll 'd 'm`` are split off; numbers keep their
    ``.``/``,`` separators; ``...`` is one token and every other punctuation character is its own token.
    Punctuation tokens matter because the reference counts them in Len.  Known differences from NLTK (none of
    them can create or hide a COCO word): quotes stay ``"`` instead of ``` `` ``/``''``, abbreviations such as
    ``e.g.`` are split at every period, and ``o'clock`` is split.  The text is not lowercased here
    (:func:`caption_to_objects` does that).
    """
    return _TOKEN_RE.findall(text)


_ASCII_WORD = re.compile(r"[a-z]+")

#: Words that ``inflect`` treats as plurals but that must stay as they are: function words (``is`` -> ``i``,
#: ``this`` -> ``thi``, ``as`` -> ``a``, ``ours`` -> ``mine``) and singular nouns ending in ``s``
#: (``tennis`` -> ``tenni`` would break the ``tennis racket`` merge).
_NO_SINGULAR: frozenset[str] = frozenset(
    {
        "is",
        "was",
        "has",
        "does",
        "this",
        "his",
        "its",
        "hers",
        "ours",
        "yours",
        "theirs",
        "as",
        "yes",
        "thus",
        "whereas",
        "always",
        "perhaps",
        "sometimes",
        "besides",
        "afterwards",
        "towards",
        "backwards",
        "sideways",
        "upstairs",
        "downstairs",
        "indoors",
        "outdoors",
        "tennis",
        "lens",
        "iris",
        "gas",
        "canvas",
        "atlas",
        "bias",
        "physics",
        "gymnastics",
    }
)


@functools.cache
def _inflect_engine() -> Any:
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=200_000)
def singularize(word: str) -> str:
    """Singular form of a lowercase token via ``inflect.engine().singular_noun`` with guards (§2.2 step 2).

    Returned unchanged: tokens that are not plain ASCII lowercase words (punctuation, numbers, hyphenated
    compounds, clitics), words in :data:`_NO_SINGULAR`, words ending in ``us`` (``bus``, ``cactus``,
    ``various``: inflect strips their ``s``) or ``ss``, and words inflect reports as not plural (``False``) or
    maps to an empty string (``"s"``).  :func:`caption_to_objects` additionally keeps words that are themselves in
    the synonym vocabulary (``people``, ``children``, ``skis``, ``scissors``, ``oxen``).
    """
    if not _ASCII_WORD.fullmatch(word) or word in _NO_SINGULAR or word.endswith(("us", "ss")):
        return word
    singular = _inflect_engine().singular_noun(word)
    return singular if singular else word


# ---------------------------------------------------------------------------------------------------------------
# Caption -> objects (§2.2)
# ---------------------------------------------------------------------------------------------------------------


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


def caption_to_objects(caption: str, vocab: ChairVocab | None = None) -> CaptionObjects:
    """COCO objects mentioned in a caption (§2.2 steps 1-4); ``vocab`` defaults to the bundled table."""
    vocab = vocab if vocab is not None else default_vocab()
    tokens = tokenize(caption.lower())
    singular = [token if token in vocab.objects else singularize(token) for token in tokens]

    merged: list[str] = []
    starts: list[int] = []
    i = 0
    while i < len(singular):
        starts.append(i)
        pair = " ".join(singular[i : i + 2])
        if pair in DOUBLE_WORDS:
            merged.append(DOUBLE_WORDS[pair])
            i += 2
        else:
            merged.append(singular[i])
            i += 1

    kept = list(zip(merged, starts))
    # "toilet seat is not chair": sentences like "the seat of the toilet" must not fire for chair.
    if "toilet" in merged and "seat" in merged:
        kept = [(word, start) for word, start in kept if word != "seat"]
    # (The reference filters ``idxs`` against the list *before* this removal, which shifts its indices after a
    # dropped "seat"; words and node words are unaffected.  Here positions stay aligned.)
    mentions = [(word, start) for word, start in kept if word in vocab.objects]
    return CaptionObjects(
        words=[word for word, _ in mentions],
        node_words=[vocab.inverse[word] for word, _ in mentions],
        idxs=[start for _, start in mentions],
        raw_words=merged,
    )


# ---------------------------------------------------------------------------------------------------------------
# Scorer (§2.1, §2.3)
# ---------------------------------------------------------------------------------------------------------------

CocoSource = str | os.PathLike[str] | Mapping[str, Any]


def _load_coco(source: CocoSource | Sequence[CocoSource], what: str) -> dict[str, list[Any]]:
    """Load one COCO JSON (path or dict) or merge several (e.g. train2014 + val2014, §2.1)."""
    if isinstance(source, (str, os.PathLike, Mapping)):
        sources: Sequence[CocoSource] = [source]
    else:
        sources = list(source)
    merged: dict[str, list[Any]] = {"images": [], "annotations": [], "categories": []}
    seen_categories: set[Any] = set()
    for item in sources:
        if isinstance(item, Mapping):
            data = item
        else:
            with open(item, encoding="utf-8") as handle:
                data = json.load(handle)
        if not isinstance(data, Mapping) or "annotations" not in data:
            raise ValueError(f"{what}: expected a COCO JSON object with an 'annotations' list")
        merged["images"].extend(data.get("images", []))
        merged["annotations"].extend(data["annotations"])
        for category in data.get("categories", []):
            if category["id"] not in seen_categories:
                seen_categories.add(category["id"])
                merged["categories"].append(category)
    return merged


def _inflect_version() -> str | None:
    try:
        return metadata.version("inflect")
    except metadata.PackageNotFoundError:
        return None


def _ratio(numerator: float, denominator: float, scale: float = 100.0) -> float:
    return scale * numerator / denominator if denominator else 0.0


@dataclass
class ChairResult:
    """CHAIR scores: ``metrics`` (``CHAIR_s``, ``CHAIR_i``, ``recall`` × 100, ``avg_len``), raw ``counts``, one
    per-caption log entry per input in ``samples``, and the normaliser/vocabulary ``config``."""

    metrics: dict[str, float]
    counts: dict[str, int]
    samples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "counts": self.counts, "config": self.config, "samples": self.samples}


class ChairScorer:
    """Offline, deterministic CHAIR scorer (§2).

    ``instances`` and ``captions`` are COCO ``instances_*.json`` / ``captions_*.json`` contents: each a path, a
    dict, or a list of those to merge (use train2014 + val2014 so that any COCO id resolves, §2.1).  Ground truth
    per image = node words of its instance annotations ∪ node words of its reference captions (same pipeline as
    generated captions).  Building it over all of COCO runs the pipeline on ~600k captions (a few minutes);
    :meth:`gt_table` + :meth:`from_gt_objects` let a caller cache it.
    """

    def __init__(
        self,
        instances: CocoSource | Sequence[CocoSource],
        captions: CocoSource | Sequence[CocoSource],
        *,
        vocab: ChairVocab | None = None,
    ) -> None:
        self.vocab = vocab if vocab is not None else default_vocab()
        inst = _load_coco(instances, "instances")
        caps = _load_coco(captions, "captions")
        id_to_name = {category["id"]: category["name"] for category in inst["categories"]}
        gt: dict[int, set[str]] = {}
        for image in inst["images"] + caps["images"]:
            gt.setdefault(image["id"], set())
        for ann in inst["annotations"]:
            name = id_to_name.get(ann["category_id"])
            if name is None:
                raise ValueError(f"instance annotation {ann.get('id')!r}: unknown category_id {ann['category_id']!r}")
            if name not in self.vocab.inverse:
                raise ValueError(f"COCO category {name!r} is not in the synonym table {self.vocab.source}")
            gt.setdefault(ann["image_id"], set()).add(self.vocab.inverse[name])
        for ann in caps["annotations"]:
            gt.setdefault(ann["image_id"], set()).update(caption_to_objects(ann["caption"], self.vocab).node_words)
        self.gt_objects: dict[int, frozenset[str]] = {image_id: frozenset(objs) for image_id, objs in gt.items()}

    @classmethod
    def from_gt_objects(
        cls, gt_objects: Mapping[int, Iterable[str]], *, vocab: ChairVocab | None = None
    ) -> ChairScorer:
        """A scorer from precomputed ground-truth node-word sets (e.g. a cached :meth:`gt_table`)."""
        scorer = cls.__new__(cls)
        scorer.vocab = vocab if vocab is not None else default_vocab()
        scorer.gt_objects = {int(image_id): frozenset(objs) for image_id, objs in gt_objects.items()}
        return scorer

    def gt_table(self) -> dict[int, list[str]]:
        """JSON-friendly ground truth: image id -> sorted node words."""
        return {image_id: sorted(objs) for image_id, objs in sorted(self.gt_objects.items())}

    def caption_to_objects(self, caption: str) -> CaptionObjects:
        return caption_to_objects(caption, self.vocab)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "singularizer": SINGULARIZER,
            "inflect_version": _inflect_version(),
            "tokenizer": TOKENIZER,
            "synonyms": self.vocab.describe(),
            "double_words": "LisaAnne/Hallucination utils/chair.py @ a967f2f (= OPERA chair.py)",
            "ratio_scale": 100,
        }

    def score(
        self,
        captions: Iterable[Mapping[str, Any]],
        *,
        missing: Literal["error", "empty"] = "error",
    ) -> ChairResult:
        """Score generated captions ``[{"image_id": int, "caption": str}, ...]`` (§2.3).

        * ``CHAIR_s`` = 100 × captions with at least one hallucinated mention / captions;
        * ``CHAIR_i`` = 100 × hallucinated mentions / all COCO-object mentions (with multiplicity);
        * ``recall`` = 100 × Σ |distinct mentioned node words ∩ GT| / Σ |GT|;
        * ``avg_len`` = mean number of merged tokens per caption (``raw_words``, punctuation included).

        A mention is hallucinated when its node word is not in the image's ground truth.  Zero denominators give
        ``0.0`` (the reference divides by zero).  Image ids without ground truth raise ``ValueError`` unless
        ``missing="empty"``, which scores them against an empty set like the reference's ``defaultdict``.
        Each ``samples`` entry logs the caption's ``words`` (merged tokens), ``mentioned_words``,
        ``mentioned_node_words``, ``hallucinated_words`` (``[word, node_word]`` pairs), ``hallucination_idxs``,
        ``gt_objects`` and per-caption metrics.
        """
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        records = list(captions)
        for index, record in enumerate(records):
            if not isinstance(record, Mapping) or "image_id" not in record or "caption" not in record:
                raise ValueError(f"captions[{index}] must be a mapping with 'image_id' and 'caption'")
            if not isinstance(record["caption"], str):
                raise ValueError(f"captions[{index}]['caption'] must be a string")
        if missing == "error":
            unknown = sorted({int(r["image_id"]) for r in records if int(r["image_id"]) not in self.gt_objects})
            if unknown:
                shown = ", ".join(str(image_id) for image_id in unknown[:5])
                more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
                raise ValueError(f"no ground truth for image id(s) {shown}{more}; pass missing='empty' to allow")

        n_hallucinated_caps = n_hallucinated = n_mentions = n_recalled = n_gt = total_len = 0
        samples: list[dict[str, Any]] = []
        for record in records:
            image_id = int(record["image_id"])
            caption = record["caption"]
            objects = caption_to_objects(caption, self.vocab)
            gt = self.gt_objects.get(image_id, frozenset())
            hallucinated = [
                (word, node, idx)
                for word, node, idx in zip(objects.words, objects.node_words, objects.idxs)
                if node not in gt
            ]
            recalled = {node for node in objects.node_words if node in gt}
            n_mentions += len(objects.node_words)
            n_hallucinated += len(hallucinated)
            n_hallucinated_caps += bool(hallucinated)
            n_recalled += len(recalled)
            n_gt += len(gt)
            total_len += len(objects.raw_words)
            samples.append(
                {
                    "image_id": image_id,
                    "caption": caption,
                    "words": objects.raw_words,
                    "mentioned_words": objects.words,
                    "mentioned_node_words": objects.node_words,
                    "hallucinated_words": [[word, node] for word, node, _ in hallucinated],
                    "hallucination_idxs": [idx for _, _, idx in hallucinated],
                    "gt_objects": sorted(gt),
                    "metrics": {
                        "hallucinated": bool(hallucinated),
                        "CHAIR_i": _ratio(len(hallucinated), len(objects.node_words)),
                        "recall": _ratio(len(recalled), len(gt)),
                        "len": len(objects.raw_words),
                    },
                }
            )
        n = len(records)
        metrics = {
            "CHAIR_s": _ratio(n_hallucinated_caps, n),
            "CHAIR_i": _ratio(n_hallucinated, n_mentions),
            "recall": _ratio(n_recalled, n_gt),
            "avg_len": _ratio(total_len, n, scale=1.0),
        }
        counts = {
            "captions": n,
            "hallucinated_captions": n_hallucinated_caps,
            "mentions": n_mentions,
            "hallucinated_mentions": n_hallucinated,
            "recalled_objects": n_recalled,
            "gt_objects": n_gt,
            "tokens": total_len,
        }
        return ChairResult(metrics=metrics, counts=counts, samples=samples, config=self.config)


def load_captions(
    path: str | os.PathLike[str], *, image_id_key: str = "image_id", caption_key: str = "caption"
) -> list[dict[str, Any]]:
    """Read generated captions from ``.json`` (a list) or ``.jsonl`` (§2.1) as ``{"image_id", "caption"}`` dicts."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in handle if line.strip()]
        else:
            items = json.load(handle)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of caption records")
    out = []
    for index, item in enumerate(items):
        try:
            out.append({"image_id": item[image_id_key], "caption": item[caption_key]})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: record {index} lacks {image_id_key!r}/{caption_key!r}") from exc
    return out


# ---------------------------------------------------------------------------------------------------------------
# Image sampling (§2.4)
# ---------------------------------------------------------------------------------------------------------------

T = TypeVar("T", bound=Hashable)


def sample_image_ids(all_ids: Iterable[T], n: int = 500, *, seed: int) -> list[T]:
    """Draw ``n`` image ids reproducibly: ``random.seed(seed); random.sample(sorted(all_ids), n)`` (§2.4).

    The ids are sorted first, so the draw depends only on the *set* of ids and the seed, not on file or
    filesystem order (OPERA/PAI's ``os.listdir`` + shuffle is not reproducible).  A private ``random.Random(seed)``
    is used, which draws exactly what the global ``random.seed(seed); random.sample(...)`` would, without
    touching global state.  Duplicate ids or ``n`` larger than the population raise ``ValueError``.
    """
    ids = sorted(all_ids)  # type: ignore[type-var]
    if len(set(ids)) != len(ids):
        raise ValueError("all_ids contains duplicates")
    if n > len(ids):
        raise ValueError(f"cannot sample n={n} ids from a population of {len(ids)}")
    return random.Random(seed).sample(ids, n)
