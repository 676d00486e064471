"""POPE metrics (eval-protocols.md §1.5): accuracy, precision, recall, F1, yes-ratio, unknown rate, confusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from hookkit.evals.pope.data import POPE_LABELS, POPE_PREDICTIONS

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
        if pred not in POPE_PREDICTIONS:
            raise ValueError(f"preds[{index}] = {pred!r}; expected one of {POPE_PREDICTIONS}")
        if label not in POPE_LABELS:
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
