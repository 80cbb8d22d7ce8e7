"""Fine-tuning strategies set by config alone (LoRA, frozen backbone, early stopping) and the
`recipes study` / `recipes sweep` commands, on a tiny BERT and learnable sentences."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO
from peft import PeftModel
from safetensors.torch import load_file
from test_bert_cls import read_jsonl, run  # the tiny BERT's settings: 5 epochs, lr 1e-3
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from recipes_lib import cli
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
    evals = [e for e in state["log_history"] if "eval_accuracy" in e]
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


def recipes_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "recipes_lib.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def tiny_config(tiny_bert, sentiment_csvs, path, **extra):
    train, dev = sentiment_csvs
    config = {
        "model_name_or_path": str(tiny_bert), "train_file": str(train), "validation_file": str(dev),
        "max_train_samples": 400, "per_device_train_batch_size": 16, "num_train_epochs": 3,
        "learning_rate": 1.0e-3, "use_cpu": True, "eval_strategy": "epoch", "save_strategy": "no",
        "report_to": "none", "disable_tqdm": True, "metric_for_best_model": "accuracy",
        "output_dir": str(path.parent / "unused"), **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def test_study_runs_each_strategy_and_tables_their_results(tiny_bert, sentiment_csvs, tmp_path):
    study = {"lora": {"learning_rate": 5.0e-3}, "freeze": {"learning_rate": 1.0e-2}}
    config = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "study.yaml", study=study)
    out = tmp_path / "study"
    done = recipes_cli("study", "bert_cls", "--config", str(config), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "study.json").read_text())
    assert [r["strategy"] for r in rows] == ["full", "lora", "freeze", "scratch"]
    for row in rows:
        results = json.loads((out / row["strategy"] / "all_results.json").read_text())
        assert row["metric"] == "eval_accuracy" and row["value"] == results["eval_accuracy"]
        for key in ("trainable_params", "peak_memory_mb", "train_runtime"):
            assert row[key] == results[key], (row["strategy"], key)
        line = next(x for x in done.stdout.splitlines() if x.startswith(f"| {row['strategy']} |"))
        assert f"{row['value']:.4f}" in line and f"{row['trainable_params']:,}" in line
    by = {r["strategy"]: r for r in rows}
    assert by["full"]["trainable_params"] == by["scratch"]["trainable_params"] == by["full"]["total_params"]
    full_size = by["full"]["total_params"]
    assert by["freeze"]["trainable_params"] < by["lora"]["trainable_params"] < 0.05 * full_size
    assert by["full"]["value"] >= 0.9
    saved = yaml.safe_load((out / "lora" / "resolved_config.yaml").read_text())
    assert saved["use_lora"] is True and saved["learning_rate"] == 5.0e-3  # the study block applied
    assert (out / "study_curves.png").stat().st_size > 10_000


def test_sweep_writes_a_best_config_that_reproduces_the_best_trial(tiny_bert, sentiment_csvs, tmp_path):
    # eval_loss, a continuous metric, so "reproduces" is a real check; accuracy would tie at 1.0.
    sweep = {"trials": 3, "metric": "eval_loss",
             "space": {"learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True}}}  # fmt: skip
    config = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "sweep.yaml", sweep=sweep)
    out = tmp_path / "sweep"
    done = recipes_cli("sweep", "bert_cls", "--config", str(config), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    assert len(results["trials"]) == 3 and {t["state"] for t in results["trials"]} == {"complete"}
    assert results["direction"] == "minimize"
    values = [t["value"] for t in results["trials"]]
    assert results["best"]["value"] == min(values) and len(set(values)) == 3  # trials really differ

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["learning_rate"] == results["best"]["params"]["learning_rate"]
    assert best["output_dir"] == str(out / "best") and "sweep" not in best
    rerun = subprocess.run([sys.executable, str(REPO / "recipes" / "bert_cls" / "run.py"), "--config",
                            str(out / "best.yaml")], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = json.loads((out / "best" / "all_results.json").read_text())
    assert again["eval_loss"] == pytest.approx(results["best"]["value"], rel=1e-4)


def test_sweep_without_a_search_space_names_what_is_missing(tiny_bert, sentiment_csvs, tmp_path, capsys):
    config = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "plain.yaml")
    assert cli.main(["sweep", "bert_cls", "--config", str(config), "--output", str(tmp_path / "s")]) == 2
    assert "sweep:" in capsys.readouterr().err
    bad = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "bad.yaml",
                      sweep={"space": {"learning_rat": [1e-3]}})  # fmt: skip
    assert cli.main(["sweep", "bert_cls", "--config", str(bad), "--output", str(tmp_path / "s")]) == 2
    assert "sweep.space.learning_rat" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing ran
