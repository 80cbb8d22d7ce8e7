"""Offline metrics under evaluate's names: binary F1 is the positive class, multi-class is macro."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from recipes_lib.errors import ConfigError
from recipes_lib.metrics import classification_metrics, regression_metrics


def one_hot(preds, k):
    return np.eye(k)[preds]


def test_binary_metrics_score_the_positive_class():
    labels = np.array([1, 1, 1, 0, 0, 0])
    preds = np.array([1, 1, 0, 0, 0, 1])  # positive class: tp=2 fp=1 fn=1
    out = classification_metrics(2)(EvalPrediction(one_hot(preds, 2), labels))
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["matthews_correlation"] == pytest.approx(1 / 3)


def test_multiclass_f1_is_macro_and_top5_needs_five_classes():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 0, 2, 2, 2, 2])  # class 1 never predicted: its F1 is 0
    out = classification_metrics(3)(EvalPrediction(one_hot(preds, 3), labels))
    assert out["f1"] == pytest.approx((1.0 + 0.0 + 2 * 0.75 * 1 / 1.75) / 3)
    assert "top5_accuracy" not in out
    logits = np.tile(np.arange(6, dtype=float), (6, 1))  # always ranks class 5 first, class 0 last
    out6 = classification_metrics(6)(EvalPrediction(logits, np.array([0, 1, 2, 3, 4, 5])))
    assert out6["top5_accuracy"] == pytest.approx(5 / 6) and out6["accuracy"] == pytest.approx(1 / 6)


def test_regression_metrics():
    refs = np.array([0.0, 1.0, 2.0, 3.0])
    out = regression_metrics()(EvalPrediction(np.array([[0.0], [1.0], [2.0], [5.0]]), refs))
    assert out["mse"] == pytest.approx(1.0)
    assert out["spearmanr"] == pytest.approx(1.0) and 0.9 < out["pearson"] < 1.0


def test_unknown_metric_offline_is_a_config_error():
    with pytest.raises(ConfigError, match="'bleurt_xyz' is not built in"):
        classification_metrics(2, ["accuracy", "bleurt_xyz"])
