"""Classification metrics for `mlm-finetune` (accuracy, macro-F1, Matthews correlation) and their
mean and spread over seeds. numpy only: no scikit-learn dependency."""

from __future__ import annotations

import numpy as np

_METRICS = ("accuracy", "f1_macro", "mcc")


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """{accuracy, f1_macro[, mcc]} of integer `predictions` against `labels` (both shape (n,)).

    Macro-F1 averages the per-class F1 over the classes present in labels or predictions (a class with
    neither counts as nothing, a class never predicted scores 0). Matthews correlation is added for two
    classes (0 when a row or column of the confusion matrix is empty).
    """
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    out = {"accuracy": float(tp.sum() / max(len(labels), 1)), "f1_macro": float(f1[present].mean())}
    if num_classes == 2:
        (tn, fp), (fn, tp1) = confusion.astype(np.float64)
        denominator = np.sqrt((tp1 + fp) * (tp1 + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = float((tp1 * tn - fp * fn) / denominator) if denominator > 0 else 0.0
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of `values`: the spread over seeds
    every mlm-finetune report states."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one run) of each metric over `runs` (the dicts of
    `classification_metrics` plus a seed), as {metric_mean, metric_std, ..., per_seed: runs}."""
    out: dict = {}
    for name in _METRICS:
        values = [r[name] for r in runs if name in r]
        if values:
            out[f"{name}_mean"], out[f"{name}_std"] = mean_std(values)
    out["per_seed"] = runs
    return out
