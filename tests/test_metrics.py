"""Offline metrics under evaluate's names (binary F1 is the positive class, multi-class is macro), and
the one rule for a metric's direction and a run's main metric."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from recipes_lib.errors import ConfigError
from recipes_lib.metrics import (
    classification_metrics,
    greater_is_better,
    main_metric,
    metric_base,
    metric_key,
    regression_metrics,
)


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


# ---- The one rule: which way a metric improves, and which is a run's main one


@pytest.mark.parametrize(
    "name, higher",
    [
        ("accuracy", True),
        ("f1", True),
        ("precision", True),
        ("recall", True),
        ("matthews_correlation", True),
        ("pearson", True),
        ("spearmanr", True),
        ("exact_match", True),
        ("top5_accuracy", True),
        ("rewards/accuracies", True),
        ("rewards/margins", True),
        ("mse", False),
        ("mae", False),
        ("rmse", False),
        ("loss", False),
        ("perplexity", False),
    ],
)
def test_each_metric_improves_in_its_own_direction_under_any_prefix(name, higher):
    for key in (name, f"eval_{name}", f"test_{name}", f"eval_{name}_before", f"{name}_before"):
        assert greater_is_better(key) is higher, key


def test_names_around_the_list_follow_transformers_losses_down_everything_else_up():
    assert not greater_is_better("eval_nll_loss") and not greater_is_better("train_loss")
    assert greater_is_better("eval_bleu") and greater_is_better("eval_mean_token_accuracy")


def test_metric_keys_are_as_trainer_and_the_recipes_write_them():
    assert metric_key("accuracy") == "eval_accuracy" and metric_key("eval_f1") == "eval_f1"
    assert metric_key("perplexity") == "perplexity" and metric_key("test_perplexity") == "test_perplexity"
    assert metric_key("rewards/accuracies") == "eval_rewards/accuracies" and metric_key("loss") == "eval_loss"
    assert metric_base("eval_rewards/margins_before") == "rewards/margins"


TRAINER_EXTRAS = {
    "epoch": 3.0,
    "eval_runtime": 0.5,
    "eval_samples": 200,
    "eval_samples_per_second": 400.0,
    "eval_steps_per_second": 10.0,
    "peak_memory_mb": 900.0,
    "total_flos": 1.5e12,
    "train_loss": 0.3,
    "train_runtime": 12.0,
    "train_samples": 800,
    "train_samples_per_second": 200.0,
    "trainable_params": 85954,
}
SCORES = {"accuracy": 0.9, "f1": 0.88, "precision": 0.87, "recall": 0.89, "matthews_correlation": 0.8}
# all_results.json of a run of each recipe: what each one writes, the step-0 copies included.
RECIPE_RESULTS = {
    "bert_cls (SST-2)": (
        {"eval_loss": 0.3, **{f"eval_{k}": v for k, v in SCORES.items()}},
        "eval_accuracy",
    ),
    "bert_cls (STS-B, regression)": (
        {"eval_loss": 0.6, "eval_mse": 0.6, "eval_pearson": 0.87, "eval_spearmanr": 0.86},
        "eval_pearson",
    ),
    "gpt_clm": (
        {"eval_loss": 2.0, "perplexity": 7.4, "test_loss": 2.1, "test_perplexity": 8.2},
        "perplexity",
    ),
    "sft (labelled answers)": (
        {
            "eval_loss": 1.1,
            "eval_mean_token_accuracy": 0.7,
            "eval_exact_match": 0.6,
            "eval_accuracy": 0.62,
            "eval_f1": 0.6,
            "perplexity": 3.0,
        },
        "eval_accuracy",
    ),
    "sft (free answers)": (
        {"eval_loss": 1.1, "eval_mean_token_accuracy": 0.7, "eval_exact_match": 0.4},
        "eval_exact_match",
    ),
    "resnet_img (10 classes)": (
        {"eval_loss": 0.5, "eval_top5_accuracy": 0.99, **{f"eval_{k}": v for k, v in SCORES.items()}},
        "eval_accuracy",
    ),
    "dpo": (
        {
            "eval_loss": 0.5,
            "eval_rewards/chosen": 0.2,
            "eval_rewards/rejected": -0.4,
            "eval_rewards/accuracies": 0.8,
            "eval_rewards/margins": 0.6,
            "eval_logps/chosen": -80.0,
        },
        "eval_rewards/accuracies",
    ),
}


@pytest.mark.parametrize("recipe", list(RECIPE_RESULTS))
def test_the_main_metric_of_each_recipes_results(recipe):
    scores, main = RECIPE_RESULTS[recipe]
    before = {f"{k}_before": v / 2 for k, v in scores.items() if k.startswith(("eval_", "perplexity"))}
    results = {**TRAINER_EXTRAS, **before, **scores}
    assert main_metric(results) == main
    assert main_metric(set(results)) == main  # a log entry's keys do as well


def test_the_configs_metric_for_best_model_is_preferred_when_the_run_reports_it():
    scores, _ = RECIPE_RESULTS["bert_cls (SST-2)"]
    assert main_metric(scores, "f1") == "eval_f1" and main_metric(scores, "eval_recall") == "eval_recall"
    assert main_metric(RECIPE_RESULTS["gpt_clm"][0], "loss") == "eval_loss"
    assert main_metric(scores, "bleu") == "eval_accuracy"  # not reported: the order decides
    assert main_metric({"test_accuracy": 0.9, "test_loss": 0.2}) == "test_accuracy"  # only a test split
    assert main_metric({"eval_bleu": 30.0, "eval_runtime": 1.0}) == "eval_bleu"
    assert main_metric(TRAINER_EXTRAS) is None
