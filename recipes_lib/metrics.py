"""Metrics: `compute_metrics` functions for Trainer that work with no network, and the one rule for
which metric is a run's main one and which way it improves.

`evaluate.load("accuracy")` fetches its script from the Hub, so the usual metrics are computed
here with scikit-learn and SciPy under the names `evaluate` uses. Any other name is handed to
`evaluate.load`, which works where the Hub is reachable.

`greater_is_better`, `metric_key` and `main_metric` are what every part that compares runs uses
(the best checkpoint and early stopping, `recipes report`, `study`, `sweep` and `demo`, the
plots), so they agree on a metric's direction. They read names as Trainer writes them: a split
prefix (`eval_accuracy`, `test_f1`), and this project's `_before` suffix for the evaluation before
training (`eval_accuracy_before`, `perplexity_before`). This module imports scikit-learn, SciPy
and transformers only when a `compute_metrics` function is built, so the `recipes` command can
use the rule without loading them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recipes_lib.errors import ConfigError

if TYPE_CHECKING:
    from transformers import EvalPrediction

ComputeMetrics = Callable[["EvalPrediction"], dict[str, float]]

CLASSIFICATION_METRICS = ["accuracy", "f1", "precision", "recall", "matthews_correlation"]
REGRESSION_METRICS = ["mse", "pearson", "spearmanr"]

# ---- Which metric is a run's main one, and whether higher is better

# Losses and errors: lower is better. So is any name ending in `loss`; every other metric is
# higher-is-better, as transformers assumes (it also calls perplexity and MSE higher-is-better).
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "mse", "mae", "rmse", "wer", "cer"})
# A run's main metric when nothing names one: the first of these it reports.
MAIN_METRICS = (
    "accuracy",  # classification (bert_cls, resnet_img); labelled generated answers (sft)
    "pearson",  # regression (bert_cls on STS-B)
    "spearmanr",
    "rewards/accuracies",  # preference tuning: how often the chosen answer out-scores the rejected one
    "rewards/margins",
    "exact_match",  # generated answers without class labels (sft)
    "f1",
    "matthews_correlation",
    "mse",
    "perplexity",  # causal language modelling (gpt_clm)
    "loss",
)
# Trainer's prefixes: the split a metric was computed on (`metric_key_prefix`), or training.
SPLIT_PREFIXES = ("eval_", "test_", "predict_", "train_")
# Metrics the recipes write without a prefix for the validation split: gpt_clm's `perplexity`.
UNPREFIXED = frozenset({"perplexity"})
# Zero-shot benchmark scores (recipes_lib.general_eval), unprefixed: `general_piqa`.
GENERAL = "general_"
BEFORE = "_before"  # the same metric evaluated before training (eval_on_start)
_NOT_METRICS = re.compile(r"(_runtime|_per_second|_samples|_delta|_stderr)$|^(epoch|step|total_flos)$")


def metric_base(metric: str) -> str:
    """The metric's own name: `eval_accuracy_before` -> `accuracy`, `test_perplexity` -> `perplexity`,
    `eval_rewards/accuracies` -> `rewards/accuracies`."""
    base = metric.removesuffix(BEFORE)
    for prefix in SPLIT_PREFIXES:
        if base.startswith(prefix):
            return base[len(prefix) :]
    return base


def greater_is_better(metric: str) -> bool:
    """Whether a higher value of `metric` (any prefix or `_before`) is better: False for losses,
    perplexity and errors (LOWER_IS_BETTER, or a name ending in `loss`), True for the rest."""
    base = metric_base(metric)
    return not (base in LOWER_IS_BETTER or base.endswith("loss"))


def metric_key(name: str) -> str:
    """The key of a validation metric in Trainer's metrics and all_results.json: `accuracy` ->
    `eval_accuracy`; prefixed names, the unprefixed `perplexity` and `general_<task>` stay as they are."""
    if name.startswith((*SPLIT_PREFIXES, GENERAL)) or metric_base(name) in UNPREFIXED:
        return name
    return f"eval_{name}"


def is_metric(key: str) -> bool:
    """False for Trainer's timings and counts (`eval_runtime`, `eval_samples`, `epoch`, ...) and for
    the `_before` copies: the keys of a results dict that score the model after training."""
    return not key.endswith(BEFORE) and _NOT_METRICS.search(key) is None


def main_metric(metrics: Collection[str], preferred: str | None = None) -> str | None:
    """The key of the main metric among `metrics` (a results dict, a log entry, or their keys).

    `preferred` (a config's `metric_for_best_model` or `expected.metric`, with or without `eval_`)
    when present; else the first of MAIN_METRICS reported on the validation split (`eval_accuracy`,
    or gpt_clm's `perplexity`), else on the test split; else the first other validation metric.
    None when there is no metric at all.
    """
    keys = [k for k in metrics if is_metric(k)]
    if preferred and metric_key(preferred) in keys:
        return metric_key(preferred)
    for prefix in ("eval_", "test_"):
        for name in MAIN_METRICS:
            candidates = [f"{prefix}{name}", *([name] if prefix == "eval_" and name in UNPREFIXED else [])]
            found = next((k for k in candidates if k in keys), None)
            if found:
                return found
    return next((k for k in keys if k.startswith("eval_")), None)


# ---- compute_metrics for Trainer


def _averaged(fn: Callable, num_labels: int) -> Callable[[np.ndarray, np.ndarray], float]:
    # Binary: the positive class (label 1), as GLUE reports F1. Multi-class: macro average.
    average = "binary" if num_labels == 2 else "macro"
    labels = None if num_labels == 2 else list(range(num_labels))
    return lambda refs, preds: fn(refs, preds, average=average, labels=labels, zero_division=0)


def _classification_fns(num_labels: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

    return {
        "accuracy": accuracy_score,
        "f1": _averaged(f1_score, num_labels),
        "precision": _averaged(precision_score, num_labels),
        "recall": _averaged(recall_score, num_labels),
        "matthews_correlation": matthews_corrcoef,
    }


def _regression_fns() -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error

    return {
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

    With more than 5 classes `top5_accuracy` is added (with 5 or fewer it is always 1). Unknown
    names go to `evaluate.load`.
    """
    from sklearn.metrics import top_k_accuracy_score

    names = list(names or CLASSIFICATION_METRICS)
    local = _classification_fns(num_labels)
    remote = {name: _load_evaluate(name) for name in names if name not in local and name != "top5_accuracy"}

    def compute(pred: EvalPrediction) -> dict[str, float]:
        logits = logits_of(pred.predictions)
        refs = np.asarray(pred.label_ids).reshape(-1)
        preds = logits.argmax(-1).reshape(-1)
        out = {name: float(local[name](refs, preds)) for name in names if name in local}
        if num_labels > 5 and logits.ndim == 2:
            out["top5_accuracy"] = float(top_k_accuracy_score(refs, logits, k=5, labels=range(num_labels)))
        for module in remote.values():
            out.update(_as_floats(module.compute(predictions=preds, references=refs)))
        return out

    return compute


def regression_metrics(names: Sequence[str] | None = None) -> ComputeMetrics:
    """mse, pearson and spearmanr of a single regression output. Unknown names go to `evaluate.load`."""
    names = list(names or REGRESSION_METRICS)
    local = _regression_fns()
    remote = {name: _load_evaluate(name) for name in names if name not in local}

    def compute(pred: EvalPrediction) -> dict[str, float]:
        preds = np.asarray(logits_of(pred.predictions), dtype=np.float64).reshape(-1)
        refs = np.asarray(pred.label_ids, dtype=np.float64).reshape(-1)
        out = {name: float(local[name](refs, preds)) for name in names if name in local}
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
