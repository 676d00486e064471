"""CHAIR as an :class:`~hookkit.evals.runner.EvalTask`: captions for a seeded COCO image set, scored offline.

Protocol: ``/work/shared/reference/eval-protocols.md`` §2 (CHAIR) and §8 (results JSON).  Scoring is
:class:`hookkit.evals.chair.ChairScorer` (bundled synonyms and double-word rules, ``inflect`` singularisation, GT =
instance annotations ∪ reference-caption objects); this module adds the generation side and the bookkeeping.

* **Images** (§2.4): a folder of COCO-named images (``COCO_val2014_%012d.jpg``; ``COCO_train2014_`` and the 2017
  ``%012d.jpg`` names are recognised too) and either an explicit id list or ``n`` ids drawn with
  :func:`hookkit.evals.chair.sample_image_ids` (``random.Random(seed).sample(sorted(population), n)``).  The id
  list, in evaluation order, and the rule that produced it go into ``configs["chair"]``.
* **Prompt** (§2.4): the preset ``"Please describe this image in detail."`` (OPERA / HALC / VHR lineage) with
  ``max_new_tokens=512`` by default; ``pai`` is PAI's wording.
* **Per-sample log**: each caption with its mentioned words, their COCO node words, the hallucinated
  ``[word, node word]`` pairs, the ground-truth objects and the caption's own CHAIR_i / recall / length.
* **Metrics** (§2.3, × 100 except the length): ``CHAIR_s``, ``CHAIR_i``, ``recall``, ``avg_len``; computed once over
  all successful captions by the scorer (not averaged from per-sample values).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hookkit.errors import ConfigError, InputError
from hookkit.evals.chair.scorer import SCORERS, ChairScorer, sample_image_ids
from hookkit.evals.chair.vocab import DEFAULT_SYNONYMS_PATH, ChairVocab, default_vocab
from hookkit.evals.files import data_file_entry, images_manifest, load_image, sha256_of
from hookkit.evals.results import finite_values, mean_stderr
from hookkit.evals.runner import EvalTask, Record, Sample, SampleError
from hookkit.io import load_json

#: Named caption prompts (§2.4; byte-exact protocol data).
CHAIR_PROMPT_PRESETS: dict[str, str] = {
    "chair": "Please describe this image in detail.",  # OPERA / HALC / VHR
    "pai": "Please help me describe the image in detail.",  # PAI
}


#: §2.4: the long-caption setting (many papers add a 64-token "short" setting: pass --max-new-tokens 64).
CHAIR_DEFAULT_MAX_NEW_TOKENS = 512


#: §2.4: 500 random COCO val2014 images.
CHAIR_DEFAULT_NUM_IMAGES = 500


_COCO_NAME_RE = re.compile(r"^(?:COCO_(?:val|train)2014_)?(\d{12})\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def coco_images_in_folder(images_dir: str | os.PathLike[str]) -> dict[int, str]:
    """Image id -> file name for the COCO-named images directly inside ``images_dir``."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise InputError(f"--images: {folder} is not a directory")
    found: dict[int, str] = {}
    for entry in sorted(os.listdir(folder)):  # sorted: the map must not depend on filesystem order
        match = _COCO_NAME_RE.match(entry)
        if not match:
            continue
        image_id = int(match.group(1))
        if image_id in found:
            raise InputError(f"--images: two files for COCO image {image_id}: {found[image_id]} and {entry}")
        found[image_id] = entry
    return found


def _as_image_id(value: Any, where: str) -> int:
    if isinstance(value, Mapping):
        if "image_id" not in value:
            raise InputError(f"{where}: object without 'image_id'")
        value = value["image_id"]
    if isinstance(value, bool):
        raise InputError(f"{where}: image id must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise InputError(f"{where}: image id must be an integer, got {value!r}")


def read_image_id_list(path: str | os.PathLike[str]) -> list[int]:
    """Read an explicit CHAIR image-id list, in order.

    Accepted: ``.json`` (a list of ids or of ``{"image_id": ...}`` objects, or ``{"image_ids": [...]}``),
    ``.jsonl`` (one id or object per line, e.g. OPERA's ``chair_eval_results`` logs), or plain text (ids separated
    by whitespace or commas, ``#`` comments).  Errors name the file and line; duplicates are an error.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--image-ids: file {p} not found")
    text = p.read_text(encoding="utf-8")
    ids: list[tuple[int, str]] = []
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if isinstance(data, Mapping) and "image_ids" in data:
            data = data["image_ids"]
        if not isinstance(data, list):
            raise InputError(f"{p}: expected a JSON list of image ids (or {{'image_ids': [...]}})")
        ids = [(_as_image_id(v, f"{p}: item {i}"), f"item {i}") for i, v in enumerate(data)]
    elif p.suffix == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{line_no}: invalid JSON ({exc.msg})") from exc
            ids.append((_as_image_id(value, f"{p}:{line_no}"), f"line {line_no}"))
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            for token in line.split("#", 1)[0].replace(",", " ").split():
                ids.append((_as_image_id(token, f"{p}:{line_no}"), f"line {line_no}"))
    seen: dict[int, str] = {}
    for image_id, where in ids:
        if image_id in seen:
            raise InputError(f"{p}: image id {image_id} listed twice ({seen[image_id]} and {where})")
        seen[image_id] = where
    if not ids:
        raise InputError(f"{p}: no image id found")
    return [image_id for image_id, _ in ids]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    data = load_json(path, field=what)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{what}: {path} is not a COCO annotation file (no 'annotations' list)")
    return data


def _ids_in(data: Mapping[str, Any]) -> set[int]:
    ids = {int(img["id"]) for img in data.get("images", [])}
    ids.update(int(ann["image_id"]) for ann in data["annotations"])
    return ids


def _restrict(data: Mapping[str, Any], ids: set[int]) -> dict[str, Any]:
    """Only the given images' entries: GT is per image, so the scorer does not need the other ~40k (§2.1 notes that
    building GT over all of COCO takes minutes)."""
    return {
        "images": [img for img in data.get("images", []) if int(img["id"]) in ids],
        "annotations": [ann for ann in data["annotations"] if int(ann["image_id"]) in ids],
        "categories": list(data.get("categories", [])),
    }


def select_image_ids(
    *,
    available: Mapping[int, str],
    num_images: int | None,
    seed: int | None,
    ids_file: str | os.PathLike[str] | None = None,
    population: Iterable[int] | None = None,
    population_name: str = "images",
) -> tuple[list[int], dict[str, Any]]:
    """The evaluation's image ids, in order, and a description of how they were chosen (for the results).

    With ``ids_file`` the list is read as is (:func:`read_image_id_list`).  Otherwise ``num_images`` ids are drawn
    with :func:`hookkit.evals.chair.sample_image_ids` from ``population`` (default: the ids of ``available``, the
    COCO-named files of the images folder) with ``seed``.
    """
    if ids_file is not None:
        ids = read_image_id_list(ids_file)
        return ids, {"rule": "explicit list", "file": Path(ids_file).name, "n": len(ids)}
    if num_images is None or num_images < 1:
        raise ConfigError("--num-images", f"must be >= 1, got {num_images}")
    if seed is None:
        raise ConfigError("--image-seed", "sampling the image ids needs a seed")
    pool = sorted(set(available if population is None else population))
    if num_images > len(pool):
        raise ConfigError("--num-images", f"cannot sample {num_images} images from a population of {len(pool)} "
                          f"({population_name})")
    ids = sample_image_ids(pool, num_images, seed=seed)
    return ids, {
        "rule": "random.Random(seed).sample(sorted(population), n) (hookkit.evals.chair.sample_image_ids)",
        "population": population_name,
        "population_size": len(pool),
        "population_sha256": sha256_of(pool),
        "seed": seed,
        "n": num_images,
    }


class ChairTask(EvalTask):
    """CHAIR captioning over a fixed image-id list (§2).

    Use :meth:`from_files` to build it from an images folder and COCO annotation files.

    Args:
        image_ids: Images to caption, in evaluation order (unique).
        images_dir: Folder holding the images; ``file_names`` maps an id to its file (default
            ``COCO_val2014_%012d.jpg``).
        scorer: A :class:`ChairScorer` with ground truth for every id.
        model, processor: The (possibly intervened) model and its processor; only :meth:`predict` needs them.
        prompt: The caption prompt (user text); ``prompt_preset`` names it (``"custom"`` for free text).
        max_new_tokens: Generation budget (default 512, §2.4).
        generate_kwargs: Further ``model.generate`` arguments; default greedy.
        image_selection: How the ids were chosen (goes into the config).
        data_files: ``data_files`` entries of the annotation / id-list / synonym files.
        hash_images: Pin the images by SHA-256 in ``data_files``.
    """

    name = "chair"
    version = "1"

    def __init__(
        self,
        image_ids: Sequence[int],
        images_dir: str | os.PathLike[str],
        scorer: ChairScorer,
        *,
        file_names: Mapping[int, str] | None = None,
        model: Any = None,
        processor: Any = None,
        prompt: str = CHAIR_PROMPT_PRESETS["chair"],
        prompt_preset: str = "chair",
        max_new_tokens: int = CHAIR_DEFAULT_MAX_NEW_TOKENS,
        generate_kwargs: Mapping[str, Any] | None = None,
        image_selection: Mapping[str, Any] | None = None,
        data_files: Sequence[Mapping[str, Any]] = (),
        hash_images: bool = True,
    ) -> None:
        ids = [int(i) for i in image_ids]
        if len(set(ids)) != len(ids):
            raise ConfigError("image_ids", "image ids must be unique")
        if not ids:
            raise ConfigError("image_ids", "no image to caption")
        missing = [i for i in ids if i not in scorer.gt_objects]
        if missing:
            shown = ", ".join(str(i) for i in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise InputError(f"no ground truth for image id(s) {shown} in the instances/captions files; CHAIR needs "
                             "the COCO annotations of every evaluated image")
        if max_new_tokens < 1:
            raise ConfigError("--max-new-tokens", f"must be >= 1, got {max_new_tokens}")
        self.image_ids = ids
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise InputError(f"--images: {self.images_dir} is not a directory")
        names = dict(file_names or {})
        self.file_names = {i: names.get(i, f"COCO_val2014_{i:012d}.jpg") for i in ids}
        self.scorer = scorer
        self.model = model
        self.processor = processor
        self.prompt = prompt
        self.prompt_preset = prompt_preset
        self.max_new_tokens = int(max_new_tokens)
        self.generate_kwargs = {"do_sample": False, **dict(generate_kwargs or {})}
        self.image_selection = dict(image_selection or {"rule": "given"})
        self._data_files = [dict(d) for d in data_files]
        self.hash_images = hash_images

    @classmethod
    def from_files(
        cls,
        *,
        images_dir: str | os.PathLike[str],
        instances: Sequence[str | os.PathLike[str]],
        captions: Sequence[str | os.PathLike[str]],
        image_ids_file: str | os.PathLike[str] | None = None,
        num_images: int | None = CHAIR_DEFAULT_NUM_IMAGES,
        image_seed: int | None = None,
        sample_from: str = "images",
        synonyms: str | os.PathLike[str] | None = None,
        scorer: str = "fast",
        **kwargs: Any,
    ) -> ChairTask:
        """Build the task from files: choose the ids, load the annotations restricted to them, build the scorer.

        ``sample_from``: ``"images"`` (the COCO-named files of ``images_dir``) or ``"annotations"`` (every image id
        of the instances files, as ``random.sample(coco.getImgIds(), n)`` in VHR-adjacent repos, but sorted first
        so that the draw does not depend on file order).  ``scorer``: ``"fast"`` or ``"reference"`` (the published
        NLTK pipeline, :mod:`hookkit.evals.chair.reference`), used for the ground-truth captions and the generated
        ones alike.
        """
        if sample_from not in ("images", "annotations"):
            raise ConfigError("--sample-from", f"unknown value {sample_from!r}", ["images", "annotations"])
        if not instances:
            raise ConfigError("--instances", "at least one COCO instances_*.json file is needed")
        if not captions:
            raise ConfigError("--captions", "at least one COCO captions_*.json file is needed")
        available = coco_images_in_folder(images_dir)
        inst_data = [_read_json(Path(p), "--instances") for p in instances]
        cap_data = [_read_json(Path(p), "--captions") for p in captions]
        population = None
        if image_ids_file is None and sample_from == "annotations":
            population = set().union(*(_ids_in(d) for d in inst_data))
        ids, selection = select_image_ids(available=available, num_images=num_images, seed=image_seed,
                                          ids_file=image_ids_file, population=population,
                                          population_name=sample_from)
        wanted = set(ids)
        vocab = ChairVocab.from_file(synonyms) if synonyms is not None else default_vocab()
        if scorer not in SCORERS:
            raise ConfigError("--scorer", f"unknown value {scorer!r}", SCORERS)
        chair_scorer = ChairScorer([_restrict(d, wanted) for d in inst_data],
                                   [_restrict(d, wanted) for d in cap_data], vocab=vocab, scorer=scorer)
        files = [data_file_entry(p, "instances") for p in instances]
        files += [data_file_entry(p, "captions") for p in captions]
        files.append(data_file_entry(synonyms if synonyms is not None else DEFAULT_SYNONYMS_PATH, "synonyms"))
        if image_ids_file is not None:
            files.append(data_file_entry(image_ids_file, "image_ids"))
        return cls(ids, images_dir, chair_scorer, file_names=available, image_selection=selection, data_files=files,
                   **kwargs)

    # ------------------------------------------------------------------ data
    def samples(self) -> list[Sample]:
        return [{"sample_id": f"chair-{i}", "image_id": i, "image": self.file_names[i]} for i in self.image_ids]

    def data_files(self) -> list[dict[str, Any]]:
        entries = [dict(d) for d in self._data_files]
        if self.hash_images:
            entries.append(images_manifest(self.images_dir, self.file_names.values()))
        return entries

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "task": self.name,
            "prompt_preset": self.prompt_preset,
            "prompt_template": self.prompt,
            "caption_postprocess": "decoded new tokens (special tokens skipped), then str.strip()",
            "generation_kwargs": {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs},
            "scorer": self.scorer.config,
            "image_selection": self.image_selection,
            "image_ids": list(self.image_ids),  # §2.4: the list itself, so the run can be repeated exactly
        }
        template = getattr(self.processor, "chat_template", None) if self.processor is not None else None
        if isinstance(template, str):
            cfg["chat_template"] = template
        return cfg

    def higher_is_better(self) -> dict[str, bool]:
        return {"CHAIR_s": False, "CHAIR_i": False, "recall": True}

    # ------------------------------------------------------------------ prediction
    def predict(self, batch: list[Sample]) -> list[Record]:
        """Caption a batch (left-padded, :func:`hookkit.generation.generate`) and log each caption's objects."""
        if self.model is None or self.processor is None:
            raise RuntimeError("ChairTask.predict needs model= and processor= (or pass predict_fn= to evaluate())")
        from hookkit.generation import generate

        images = []
        for sample in batch:
            try:
                images.append(load_image(self.images_dir / sample["image"], where=f"image_id {sample['image_id']}"))
            except InputError as exc:
                raise SampleError(sample["sample_id"], str(exc)) from exc
        result = generate(self.model, self.processor, [self.prompt] * len(batch), images,
                          max_new_tokens=self.max_new_tokens, **self.generate_kwargs)
        n = len(batch)
        timings = finite_values(result.timings)
        records = []
        for sample, raw, ids in zip(batch, result.texts, result.new_token_ids):
            caption = raw.strip()
            scored = self.scorer.score([{"image_id": sample["image_id"], "caption": caption}]).samples[0]
            records.append({
                "sample_id": sample["sample_id"],
                "image_id": sample["image_id"],
                "image": sample["image"],
                "prompt": self.prompt,
                "caption_raw": raw,
                "caption": caption,
                "mentioned_words": scored["mentioned_words"],
                "mentioned_node_words": scored["mentioned_node_words"],
                "hallucinated_words": scored["hallucinated_words"],
                "hallucination_idxs": scored["hallucination_idxs"],
                "gt_objects": scored["gt_objects"],
                "hallucinated": scored["metrics"]["hallucinated"],
                "CHAIR_i": scored["metrics"]["CHAIR_i"],
                "recall": scored["metrics"]["recall"],
                "len": scored["metrics"]["len"],
                "new_tokens": len(ids),
                "_prefill_s": timings.get("prefill_s", 0.0) / n,
                "_decode_s": timings.get("decode_s", 0.0) / n,
                "_batch_timings": {"batch_size": n, **timings},
            })
        return records

    # ------------------------------------------------------------------ metrics
    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        result = self.scorer.score([{"image_id": r["image_id"], "caption": r["caption"]} for r in records])
        out: dict[str, Any] = dict(result.metrics)
        if len(records) >= 2:
            # CHAIR_s is 100 x a mean of per-caption 0/1 flags: its standard error is well defined.  CHAIR_i and
            # recall are ratios of sums over captions (lm-eval's "N/A").
            flags = [100.0 * bool(s["hallucinated_words"]) for s in result.samples]
            out["CHAIR_s_stderr"] = mean_stderr(flags)[1]
        out["counts"] = dict(result.counts)
        return out
