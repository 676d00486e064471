"""hookkit's example lmms-eval tasks: a local-files task class, and POPE prompts, parsers and metrics.

lmms-eval has no ``custom_dataset`` hook and resolves ``data_files`` against the working directory, so the
tasks use ``class: !function utils.LocalFilesTask``: an ordinary ``ConfigurableTask`` that first resolves the
relative ``data_files`` (and the ``hookkit_images_dir`` key) against this folder. Absolute paths are used as they
are, so a copy of a YAML can point at real POPE files and a COCO images folder.

POPE scoring is hookkit's (:mod:`hookkit.evals.pope`): prompt preset ``llava15`` (question + lmms-eval's own
post_prompt), a named answer parser and :func:`~hookkit.evals.pope.pope_metrics`. So the lmms-eval route and
``hookkit eval pope`` score the same generations identically, and ``yes_ratio`` is computed from the predictions
(lmms-eval's upstream POPE task computes it from the labels; eval-protocols.md §1.4).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from lmms_eval.api.task import ConfigurableTask

from hookkit.evals.pope import get_prompt_preset, parse_pope_answer, pope_metrics
from hookkit.integrations.tasks import resolve_data_path

HERE = Path(__file__).resolve().parent


def _resolve_files(files: Any) -> Any:
    if isinstance(files, dict):
        return {split: _resolve_files(f) for split, f in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve_files(f) for f in files]
    return str(resolve_data_path(files, HERE))


def _with_image_paths(dataset: Any, images_dir: Path) -> Any:
    return dataset.map(lambda doc: {"image_path": str(images_dir / doc["image"])})


class LocalFilesTask(ConfigurableTask):
    """A ``ConfigurableTask`` whose relative data paths are relative to this folder, not the working directory."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = dict(config or {})
        config.pop("class", None)
        images_dir = config.pop("hookkit_images_dir", None)
        dataset_kwargs = dict(config.get("dataset_kwargs") or {})
        if "data_files" in dataset_kwargs:
            dataset_kwargs["data_files"] = _resolve_files(dataset_kwargs["data_files"])
        config["dataset_kwargs"] = dataset_kwargs
        if images_dir is not None:
            config["process_docs"] = partial(_with_image_paths, images_dir=resolve_data_path(images_dir, HERE))
        super().__init__(config=config, **kwargs)


# ------------------------------------------------------------------------------------------------ POPE
def pope_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The question's image, decoded the way ``hookkit eval pope`` decodes it (``hookkit.io.load_image``)."""
    from hookkit.io import load_image

    return [load_image(doc["image_path"], field=f"question_id {doc['question_id']}")]


def pope_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """hookkit's POPE prompt: ``question + preset suffix`` (no stripping), the preset named by ``prompt_preset``."""
    preset = (lmms_eval_specific_kwargs or {}).get("prompt_preset", "llava15")
    return get_prompt_preset(preset).format(doc["text"])


def _pope_results(doc: dict[str, Any], results: list[str], parser: str) -> dict[str, Any]:
    answer = results[0].strip()
    pred = parse_pope_answer(answer, parser, label=doc["label"])
    item = {"question_id": doc["question_id"], "pred": pred, "label": doc["label"], "answer": answer}
    return {metric: item for metric in _METRICS}


def pope_process_results_official(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Parser ``pope_official`` (AoiDragon/POPE, LLaVA ``eval_pope.py``): hookkit's default."""
    return _pope_results(doc, results, "pope_official")


def pope_process_results_exact(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Parser ``exact`` (lmms-eval's upstream POPE: the lower-cased answer must be exactly yes or no)."""
    return _pope_results(doc, results, "exact")


_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio", "pope_unknown_rate")


def _aggregate(items: list[dict[str, Any]], key: str, unknown_policy: str) -> float:
    metrics = pope_metrics([i["pred"] for i in items], [i["label"] for i in items], unknown_policy=unknown_policy)
    return float(metrics[key])


# Unknown answers: "as_no" for the official parser (it never returns unknown anyway); "lmms_eval" for the exact
# parser, as lmms-eval's upstream aggregation treats them (wrong in accuracy, left out of precision/recall).
def pope_accuracy(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "accuracy", "as_no")


def pope_precision(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "precision", "as_no")


def pope_recall(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "recall", "as_no")


def pope_f1(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "f1", "as_no")


def pope_yes_ratio(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "yes_ratio", "as_no")


def pope_unknown_rate(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "unknown_rate", "as_no")


def pope_accuracy_lmms(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "accuracy", "lmms_eval")


def pope_precision_lmms(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "precision", "lmms_eval")


def pope_recall_lmms(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "recall", "lmms_eval")


def pope_f1_lmms(items: list[dict[str, Any]]) -> float:
    return _aggregate(items, "f1", "lmms_eval")
