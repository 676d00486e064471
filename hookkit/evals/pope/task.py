"""POPE as an :class:`~hookkit.evals.runner.EvalTask`: question files + an images folder -> per-split metrics.

Protocol: ``/work/shared/reference/eval-protocols.md`` §1 (POPE) and §8 (results JSON).  The scoring pieces
(question loading, provenance, parsers, metrics, builder) live in :mod:`hookkit.evals.pope`; this module turns them
into one task that the shared runner (:func:`hookkit.evals.runner.evaluate`) can shard, resume and log.

One task, several splits
------------------------
:class:`PopeTask` runs every given question file (normally the random, popular and adversarial splits) in one run
and reports, in ``results["pope"]``:

* the unweighted mean over the evaluated splits of ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio``
  and ``unknown_rate`` (``"f1,none"`` ...; papers report mean F1 over the 3 splits, §1.5 / LLaVA issue #626);
* the same six metrics per split (``"adversarial/f1,none"`` ...) and each split's confusion matrix
  (``"adversarial/confusion,none"``: TP, FP, TN, FN, unknown and its split by label, n);
* ``"confusion,none"``: the confusion counts pooled over the splits.

``yes_ratio`` is computed from the predictions, never from the labels (§1.4: lmms-eval's bug is not
replicated).  The parser id, the unknown policy and the prompt preset are in ``configs["pope"]``.

Samples are ordered round-robin over the splits (question 1 of each split, then question 2, ...), so ``--limit``
keeps the splits balanced and the runner's index-modulo sharding spreads every split over all processes.

Errors
------
* A malformed line of a question file (bad JSON, missing key, bad label, duplicate ``question_id`` ...) becomes a
  sample of its own (``"<split>-line<N>"``) whose record is an error naming the file and line; the other lines
  run.  The line numbers are also listed in that file's ``data_files`` entry (``malformed_lines``).
* A missing or unreadable image raises :class:`~hookkit.evals.runner.SampleError` for that question only; the
  message names the question file and line, the question id and the image path.

Both kinds are counted in ``results["pope"]["n_errors"]`` and listed in ``errors["pope"]`` by the runner; they
never enter the metrics.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from hookkit.errors import ConfigError, InputError
from hookkit.evals.files import images_manifest, load_image
from hookkit.evals.pope.data import POPE_SPLITS, PopeDataError, PopeQuestion, describe_pope_file, iter_pope_questions
from hookkit.evals.pope.metrics import pope_metrics, pope_summary
from hookkit.evals.pope.parsers import DEFAULT_POPE_PARSER, POPE_PARSERS, get_pope_parser, parse_pope_answer
from hookkit.evals.pope.prompts import POPE_PROMPT_PRESETS, get_prompt_preset
from hookkit.evals.results import finite_values, mean_stderr
from hookkit.evals.runner import EvalTask, Record, Sample, SampleError

logger = logging.getLogger(__name__)


#: Default generation budget.  §1.3: OPERA / PAI decode POPE with ``max_new_tokens=10``; with the LLaVA-1.5 suffix
#: ("Answer the question using a single word or phrase.") the answer is one word, and the official parser only
#: reads the text before the first ".", so more tokens cannot change a "Yes." / "No." answer.  lmms-eval uses
#: 128; pass ``--max-new-tokens 128`` to match it.
POPE_DEFAULT_MAX_NEW_TOKENS = 10


#: The per-split metrics (and their means) reported in the results (§1.5).
POPE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")


_SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


_IMAGE_CACHE_SIZE = 16  # POPE asks 6 questions per image: keep a few decoded images around


def split_name_for(path: str | os.PathLike[str]) -> str:
    """The split a question file holds: ``random``/``popular``/``adversarial`` if exactly one of them occurs in the
    file name (``coco_pope_adversarial.json``), else the file stem."""
    name = Path(path).name.lower()
    found = [split for split in POPE_SPLITS if split in name]
    if len(found) == 1:
        return found[0]
    return Path(path).stem


def _check_split_name(split: str) -> str:
    # Split names go into sample ids and "split/metric,none" result keys: no commas, slashes or spaces.
    if not _SPLIT_NAME_RE.match(split):
        raise ConfigError("split", f"split name {split!r} must match {_SPLIT_NAME_RE.pattern}")
    return split


def _order_splits(files: Mapping[str, Path]) -> list[str]:
    """Known splits in protocol order (random, popular, adversarial), then the others in the given order."""
    known = [s for s in POPE_SPLITS if s in files]
    return known + [s for s in files if s not in POPE_SPLITS]


class PopeTask(EvalTask):
    """POPE over one or more question files (splits) and an images folder (§1).

    Args:
        question_files: ``{split: path}``, or paths whose split is read from the file name (:func:`split_name_for`).
        images_dir: Folder holding the images named by the questions' ``image`` field.
        model, processor: The (possibly intervened) model and its processor; only :meth:`predict` needs them.
        prompt_preset: A key of :data:`hookkit.evals.pope.POPE_PROMPT_PRESETS` (default ``llava15``, §1.3).
        parser: A key of :data:`hookkit.evals.pope.POPE_PARSERS` (default the official one, §1.4).
        unknown_policy: How "unknown" parser outputs are scored (see :func:`hookkit.evals.pope.pope_metrics`).
        max_new_tokens: Generation budget (default :data:`POPE_DEFAULT_MAX_NEW_TOKENS`).
        generate_kwargs: Further ``model.generate`` arguments (``do_sample``, ``num_beams``, ...); default greedy.
        hash_images: Pin the referenced images by SHA-256 in ``data_files`` (reads every referenced image once).
        extra_data_files: More ``data_files`` entries (e.g. the annotations the splits were built from).
        extra_config: More ``configs["pope"]`` entries (e.g. the builder settings).
    """

    name = "pope"
    version = "1"

    def __init__(
        self,
        question_files: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]],
        images_dir: str | os.PathLike[str],
        *,
        model: Any = None,
        processor: Any = None,
        prompt_preset: str = "llava15",
        parser: str = DEFAULT_POPE_PARSER,
        unknown_policy: str = "as_no",
        max_new_tokens: int = POPE_DEFAULT_MAX_NEW_TOKENS,
        generate_kwargs: Mapping[str, Any] | None = None,
        hash_images: bool = True,
        extra_data_files: Sequence[Mapping[str, Any]] = (),
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(question_files, Mapping):
            files = {_check_split_name(str(s)): Path(p) for s, p in question_files.items()}
        else:
            files = {}
            for p in question_files:
                split = _check_split_name(split_name_for(p))
                if split in files:
                    raise ConfigError("--data", f"two question files map to split {split!r} ({files[split]} and {p}); "
                                      "name them explicitly as SPLIT=FILE")
                files[split] = Path(p)
        if not files:
            raise ConfigError("--data", "no POPE question file given")
        for split, path in files.items():
            if not path.is_file():
                raise InputError(f"POPE question file for split {split!r} not found: {path}")
        self.files = {s: files[s] for s in _order_splits(files)}
        self.splits = list(self.files)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise InputError(f"--images: {self.images_dir} is not a directory")
        if prompt_preset not in POPE_PROMPT_PRESETS:
            raise ConfigError("--prompt-preset", f"unknown POPE prompt preset {prompt_preset!r}",
                              sorted(POPE_PROMPT_PRESETS))
        if parser not in POPE_PARSERS:
            raise ConfigError("--parser", f"unknown POPE answer parser {parser!r}", sorted(POPE_PARSERS))
        self.preset = get_prompt_preset(prompt_preset)
        self.parser = get_pope_parser(parser)
        if unknown_policy not in ("as_no", "lmms_eval"):
            raise ConfigError("--unknown-policy", f"unknown value {unknown_policy!r}", ["as_no", "lmms_eval"])
        if max_new_tokens < 1:
            raise ConfigError("--max-new-tokens", f"must be >= 1, got {max_new_tokens}")
        self.unknown_policy = unknown_policy
        self.max_new_tokens = int(max_new_tokens)
        self.generate_kwargs = {"do_sample": False, **dict(generate_kwargs or {})}
        self.model = model
        self.processor = processor
        self.hash_images = hash_images
        self._extra_data_files = [dict(d) for d in extra_data_files]
        self._extra_config = dict(extra_config or {})
        self._image_cache: OrderedDict[Path, Image.Image] = OrderedDict()
        self._samples, self._malformed = self._read_all()
        if not any("data_error" not in sample for sample in self._samples):
            # Not one readable question: fail now, before a model is loaded, instead of scoring nothing.
            first = next((sample["data_error"] for sample in self._samples), "the files are empty")
            raise InputError(f"--data: nothing to evaluate: no valid POPE question in "
                             f"{', '.join(str(p) for p in self.files.values())} (first problem: {first})")

    # ------------------------------------------------------------------ data
    def _read_all(self) -> tuple[list[Sample], dict[str, list[int]]]:
        per_split: dict[str, list[Sample]] = {}
        malformed: dict[str, list[int]] = {}
        for split, path in self.files.items():
            items: list[Sample] = []
            bad: list[int] = []
            for item in iter_pope_questions(path, on_error="collect"):
                if isinstance(item, PopeDataError):
                    bad.append(item.line_no)
                    # A malformed line stays a sample so that it is reported like any other failure (§8: errors
                    # are never silently dropped); predict() turns it into an error record without running it.
                    items.append({"sample_id": f"{split}-line{item.line_no}", "split": split,
                                  "file": path.name, "line": item.line_no, "data_error": str(item)})
                else:
                    items.append(self._sample(split, path, item))
            per_split[split] = items
            malformed[split] = bad
        # Round-robin over splits: --limit N keeps the splits balanced and sharding spreads every split.
        ordered: list[Sample] = []
        longest = max((len(v) for v in per_split.values()), default=0)
        for i in range(longest):
            for split in self.splits:
                if i < len(per_split[split]):
                    ordered.append(per_split[split][i])
        return ordered, malformed

    @staticmethod
    def _sample(split: str, path: Path, q: PopeQuestion) -> Sample:
        sample: Sample = {"sample_id": f"{split}-{q.question_id}", "split": split, "file": path.name,
                          "line": q.line_no, "question_id": q.question_id, "image": q.image, "text": q.text,
                          "label": q.label}
        if q.image_id is not None:
            sample["image_id"] = q.image_id
        return sample

    def samples(self) -> list[Sample]:
        return list(self._samples)

    @property
    def malformed_lines(self) -> dict[str, list[int]]:
        """Split -> 1-based numbers of the lines that could not be read."""
        return {s: list(v) for s, v in self._malformed.items()}

    def data_files(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for split, path in self.files.items():
            desc = describe_pope_file(path)
            # §1.2: pin every file by SHA-256 and say which published version it is.
            entries.append({
                "path": path.as_posix(),
                "sha256": desc["sha256"],
                "role": "questions",
                "version": desc["version"],
                "split": split,
                "detected_split": desc["split"],
                "version_rule": desc["version_rule"],
                "known": desc["known"],
                "lines": desc["lines"],
                "imange_typos": desc["imange_typos"],
                "has_image_id": desc["has_image_id"],
                "malformed_lines": self._malformed.get(split, []),
            })
        if self.hash_images:
            names = [s["image"] for s in self._samples if "image" in s]
            entries.append(images_manifest(self.images_dir, names))
        entries.extend(self._extra_data_files)
        return entries

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "task": self.name,
            "splits": list(self.splits),
            "sample_order": "round-robin over splits (question i of every split, then question i+1)",
            "prompt_preset": self.preset.name,
            "prompt_preset_source": self.preset.source,
            "prompt_template": "{question}" + self.preset.suffix,
            "parser": self.parser.id,
            "parser_source": self.parser.source,
            "unknown_policy": self.unknown_policy,
            "answer_postprocess": "decoded new tokens (special tokens skipped), then str.strip()",
            "positive_class": "yes",
            "mean": "unweighted mean of the per-split metrics over the evaluated splits",
            "generation_kwargs": {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs},
        }
        template = getattr(self.processor, "chat_template", None) if self.processor is not None else None
        if isinstance(template, str):
            cfg["chat_template"] = template
        cfg.update(self._extra_config)
        return cfg

    def higher_is_better(self) -> dict[str, bool]:
        # yes_ratio has no better direction (0.5 is the balanced value), so it is not listed.
        base = {"accuracy": True, "precision": True, "recall": True, "f1": True, "unknown_rate": False}
        out = dict(base)
        for split in self.splits:
            out.update({f"{split}/{key}": value for key, value in base.items()})
        return out

    # ------------------------------------------------------------------ prediction
    def _image(self, sample: Sample) -> Image.Image:
        path = self.images_dir / sample["image"]
        cached = self._image_cache.get(path)
        if cached is not None:
            self._image_cache.move_to_end(path)
            return cached
        where = f"{sample['file']}:{sample['line']}: question_id {sample['question_id']}"
        try:
            image = load_image(path, where=where)
        except InputError as exc:
            raise SampleError(sample["sample_id"], str(exc)) from exc
        self._image_cache[path] = image
        if len(self._image_cache) > _IMAGE_CACHE_SIZE:
            self._image_cache.popitem(last=False)
        return image

    def predict(self, batch: list[Sample]) -> list[Record]:
        """Generate answers for a batch (left-padded, through :func:`hookkit.generation.generate`) and parse them.

        Every input is checked before anything is generated, so a bad sample costs no model time: the runner
        re-runs the rest of the batch without it.
        """
        if self.model is None or self.processor is None:
            raise RuntimeError("PopeTask.predict needs model= and processor= (or pass predict_fn= to evaluate())")
        from hookkit.generation import generate

        images = []
        for sample in batch:
            if "data_error" in sample:
                raise SampleError(sample["sample_id"], sample["data_error"])
            images.append(self._image(sample))
        prompts = [self.preset.format(s["text"]) for s in batch]
        result = generate(self.model, self.processor, prompts, images, max_new_tokens=self.max_new_tokens,
                          **self.generate_kwargs)
        n = len(batch)
        timings = finite_values(result.timings)
        records = []
        for sample, prompt, raw, ids in zip(batch, prompts, result.texts, result.new_token_ids):
            answer = raw.strip()
            pred = parse_pope_answer(answer, self.parser.id, label=sample["label"])
            record: Record = {
                "sample_id": sample["sample_id"],
                "split": sample["split"],
                "question_id": sample["question_id"],
                "file": sample["file"],
                "line": sample["line"],
                "image": sample["image"],
                "question": sample["text"],
                "prompt": prompt,
                "label": sample["label"],
                "answer_raw": raw,
                "answer": answer,
                "pred": pred,
                "correct": _scored(pred, self.unknown_policy) == sample["label"],
                "new_tokens": len(ids),
                # Volatile (underscore) keys: batch timings shared out per sample (schema.summarize_timings).
                "_prefill_s": timings.get("prefill_s", 0.0) / n,
                "_decode_s": timings.get("decode_s", 0.0) / n,
                "_batch_timings": {"batch_size": n, **timings},
            }
            if "image_id" in sample:
                record["image_id"] = sample["image_id"]
            records.append(record)
        return records

    # ------------------------------------------------------------------ metrics
    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        return _aggregate(records, self.splits, self.unknown_policy)


def _scored(pred: str, unknown_policy: str) -> str | None:
    """The prediction as the metrics count it: unknown is "no" under ``as_no`` and never right under ``lmms_eval``."""
    if pred != "unknown":
        return pred
    return "no" if unknown_policy == "as_no" else None


def _aggregate(records: Sequence[Mapping[str, Any]], splits: Sequence[str], unknown_policy: str) -> dict[str, Any]:
    by_split: dict[str, list[Mapping[str, Any]]] = {s: [] for s in splits}
    for record in records:
        by_split.setdefault(record["split"], []).append(record)
    empty = [s for s, recs in by_split.items() if not recs]
    if empty:
        logger.warning("POPE: no scored sample in split(s) %s; they are left out of the mean", ", ".join(empty))
    per_split = {
        split: pope_metrics([r["pred"] for r in recs], [r["label"] for r in recs], unknown_policy=unknown_policy)
        for split, recs in by_split.items()
        if recs
    }
    summary = pope_summary(per_split)
    out: dict[str, Any] = {key: summary["mean"][key] for key in POPE_METRICS}
    # Accuracy is a mean of per-question 0/1 scores, so its standard error is well defined (lm-eval's acc_stderr);
    # the other metrics are ratios of counts and get lm-eval's "N/A".
    split_se: dict[str, float | None] = {}
    for split, recs in by_split.items():
        if recs:
            _, se = mean_stderr([float(_scored(r["pred"], unknown_policy) == r["label"]) for r in recs])
            split_se[split] = se
    if split_se and all(se is not None for se in split_se.values()):
        # The mean of k independent split accuracies: se = sqrt(sum se_i^2) / k.
        out["accuracy_stderr"] = math.sqrt(sum(se * se for se in split_se.values())) / len(split_se)  # type: ignore[operator]
    pooled = {k: 0 for k in ("TP", "FP", "TN", "FN", "unknown", "unknown_label_yes", "unknown_label_no", "n")}
    for split, metrics in per_split.items():
        for key in POPE_METRICS:
            out[f"{split}/{key}"] = metrics[key]
        if split_se.get(split) is not None:
            out[f"{split}/accuracy_stderr"] = split_se[split]
        confusion = {**metrics["confusion"], "n": metrics["n"]}
        out[f"{split}/confusion"] = confusion
        for key in pooled:
            pooled[key] += int(confusion[key])
    out["confusion"] = pooled
    return out


def rescore_pope_records(
    records: Iterable[Mapping[str, Any]],
    *,
    parser: str = DEFAULT_POPE_PARSER,
    unknown_policy: str = "as_no",
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of a finished run's per-sample records under another answer parser (§1.4: compare lineages without
    re-generating).  Error records are skipped; the result has the keys of ``results["pope"]`` (without
    ``",none"``)."""
    get_pope_parser(parser)
    ok = [dict(r) for r in records if not r.get("error")]
    for r in ok:
        r["pred"] = parse_pope_answer(r["answer"], parser, label=r["label"])
    order = list(splits) if splits is not None else list(dict.fromkeys(r["split"] for r in ok))
    return _aggregate(ok, order, unknown_policy)
