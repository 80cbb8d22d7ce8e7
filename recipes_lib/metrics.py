"""`compute_metrics` functions for Trainer that work with no network.

`evaluate.load("accuracy")` fetches its script from the Hub, so the usual metrics are
computed here with scikit-learn and SciPy under the names `evaluate` uses. Any other
name is handed to `evaluate.load`, which works where the Hub is reachable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    mean_squared_error,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)
from transformers import EvalPrediction

from recipes_lib.errors import ConfigError

ComputeMetrics = Callable[[EvalPrediction], dict[str, float]]

CLASSIFICATION_METRICS = ["accuracy", "f1", "precision", "recall", "matthews_correlation"]
REGRESSION_METRICS = ["mse", "pearson", "spearmanr"]


def _averaged(fn: Callable, num_labels: int) -> Callable[[np.ndarray, np.ndarray], float]:
    # Binary: the positive class (label 1), as GLUE reports F1. Multi-class: macro average.
    average = "binary" if num_labels == 2 else "macro"
    labels = None if num_labels == 2 else list(range(num_labels))
    return lambda refs, preds: fn(refs, preds, average=average, labels=labels, zero_division=0)


def _classification_fns(num_labels: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    return {
        "accuracy": accuracy_score,
        "f1": _averaged(f1_score, num_labels),
        "precision": _averaged(precision_score, num_labels),
        "recall": _averaged(recall_score, num_labels),
        "matthews_correlation": matthews_corrcoef,
    }


REGRESSION_FNS = {
    "mse": mean_squared_error,
    "pearson": lambda refs, preds: pearsonr(refs, preds)[0],
    "spearmanr": lambda refs, preds: spearmanr(refs, preds)[0],
}


def logits_of(predictions: np.ndarray | tuple) -> np.ndarray:
    """The logits in Trainer's predictions: models that return extra outputs give a tuple,
    the logits first."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits (last axis), in float64."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` less Trainer's `*_runtime` and `*_per_second` entries: the ones that measure
    the model rather than the machine."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}


def classification_metrics(num_labels: int, names: Sequence[str] | None = None) -> ComputeMetrics:
    """accuracy, f1, precision, recall (binary: positive class; multi-class: macro) and MCC.

    With 5 or more classes `top5_accuracy` is added. Unknown names go to `evaluate.load`.
    """
    names = list(names or CLASSIFICATION_METRICS)
    local = _classification_fns(num_labels)
    remote = {name: _load_evaluate(name) for name in names if name not in local and name != "top5_accuracy"}

    def compute(pred: EvalPrediction) -> dict[str, float]:
        logits = logits_of(pred.predictions)
        refs = np.asarray(pred.label_ids).reshape(-1)
        preds = logits.argmax(-1).reshape(-1)
        out = {name: float(local[name](refs, preds)) for name in names if name in local}
        if num_labels >= 5 and logits.ndim == 2:
            out["top5_accuracy"] = float(top_k_accuracy_score(refs, logits, k=5, labels=range(num_labels)))
        for module in remote.values():
            out.update(_as_floats(module.compute(predictions=preds, references=refs)))
        return out

    return compute


def regression_metrics(names: Sequence[str] | None = None) -> ComputeMetrics:
    """mse, pearson and spearmanr of a single regression output. Unknown names go to `evaluate.load`."""
    names = list(names or REGRESSION_METRICS)
    remote = {name: _load_evaluate(name) for name in names if name not in REGRESSION_FNS}

    def compute(pred: EvalPrediction) -> dict[str, float]:
        preds = np.asarray(logits_of(pred.predictions), dtype=np.float64).reshape(-1)
        refs = np.asarray(pred.label_ids, dtype=np.float64).reshape(-1)
        out = {name: float(REGRESSION_FNS[name](refs, preds)) for name in names if name in REGRESSION_FNS}
        for module in remote.values():
            out.update(_as_floats(module.compute(predictions=preds, references=refs)))
        return out

    return compute


def _load_evaluate(name: str):  # noqa: ANN202 - evaluate.EvaluationModule, imported lazily
    import evaluate

    try:
        return evaluate.load(name)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"metric {name!r} is not built in ({', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}) "
            f"and evaluate.load could not load it: {reason}"
        ) from err


def _as_floats(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if np.isscalar(v)}
