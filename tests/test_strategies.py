"""Fine-tuning strategies set by config alone (LoRA, frozen backbone, early stopping), on a tiny
BERT and learnable sentences (`recipes study` and `recipes sweep`: test_study_sweep.py)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from test_bert_cls import read_jsonl, run  # the tiny BERT's settings: 5 epochs, lr 1e-3
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from recipes_lib.errors import ConfigError


def test_lora_trains_few_weights_learns_as_well_and_its_adapter_reloads_with_peft(
    tiny_bert, sentiment_csvs, tmp_path
):
    out = tmp_path / "out"
    metrics = run(tiny_bert, *sentiment_csvs, out, "--use_lora", "true", "--learning_rate", "5e-3")
    assert metrics["eval_accuracy"] >= 0.9  # the threshold full fine-tuning meets in test_bert_cls
    results = json.loads((out / "all_results.json").read_text())
    assert results["trainable_params"] / results["total_params"] < 0.05
    assert results["peak_memory_mb"] > 0 and results["train_runtime"] > 0

    # The adapter (LoRA on query/value + the classifier) reloads onto the base model with peft.
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    labels = ["negative", "positive"]
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)}
    )
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    with torch.no_grad():
        batch = tokenizer([p["text"] for p in predictions], padding=True, return_tensors="pt")
        reloaded = [labels[i] for i in model(**batch).logits.argmax(-1).tolist()]
    assert reloaded == [p["prediction"] for p in predictions]


def test_freeze_backbone_leaves_every_backbone_weight_bit_identical(tiny_bert, sentiment_csvs, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_bert, *sentiment_csvs, out, "--freeze_backbone", "true", "--num_train_epochs", "1")
    before = load_file(tiny_bert / "model.safetensors")
    after = load_file(out / "model.safetensors")
    backbone = {k.removeprefix("bert."): v for k, v in after.items() if k.startswith("bert.")}
    assert backbone.keys() == before.keys()
    assert all(torch.equal(before[k], backbone[k]) for k in before)
    head = [k for k in after if not k.startswith("bert.")]
    assert sorted(head) == ["classifier.bias", "classifier.weight"]
    assert metrics["trainable_params"] == sum(after[k].numel() for k in head)


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_checkpoint(tiny_bert, sentiment_csvs, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_bert, *sentiment_csvs, out, "--num_train_epochs", "20", "--eval_strategy", "epoch",
                  "--save_strategy", "epoch", "--metric_for_best_model", "accuracy",
                  "--early_stopping_patience", "2")  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    *evals, final = [e for e in state["log_history"] if "eval_accuracy" in e]
    assert "eval_samples" in final and "eval_samples" not in evals[-1]  # the recipe's final evaluation
    assert final["eval_accuracy"] == metrics["eval_accuracy"]
    assert state["epoch"] < 20 and len(evals) < 20  # stopped early: accuracy plateaus at 1.0 quickly
    best_epoch = max(evals, key=lambda e: (e["eval_accuracy"], -e["epoch"]))  # the first best one
    assert evals[-1]["epoch"] == best_epoch["epoch"] + 2  # two evaluations without improvement
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_epoch['step']}")
    # The final metrics are the best checkpoint's, not the last epoch's (whose loss kept falling).
    assert metrics["eval_accuracy"] == best_epoch["eval_accuracy"]
    assert metrics["eval_loss"] == pytest.approx(best_epoch["eval_loss"], rel=1e-5)
    assert evals[-1]["eval_loss"] < best_epoch["eval_loss"]


def test_early_stopping_needs_matching_eval_and_save_strategies(tiny_bert, sentiment_csvs, tmp_path):
    with pytest.raises(ConfigError, match="save_strategy must equal eval_strategy"):
        run(tiny_bert, *sentiment_csvs, tmp_path / "o", "--eval_strategy", "epoch",
            "--early_stopping_patience", "2")  # fmt: skip
