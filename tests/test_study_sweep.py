"""`recipes study` and `recipes sweep` (recipes_lib/commands/) on a tiny BERT and learnable sentences."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, load_recipe
from fixtures import sentiment_rows, write_csv
from transformers import AutoModel, AutoTokenizer

from recipes_lib.commands import main
from recipes_lib.commands.study import pop_learning_rate, strategy_argv, study_metric
from recipes_lib.commands.sweep import parse_sweep
from recipes_lib.errors import ConfigError


def recipes_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "recipes_lib.commands", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def tiny_config(tiny_bert, sentiment_csvs, path, **extra):
    train, dev = sentiment_csvs
    config = {
        "model_name_or_path": str(tiny_bert),
        "train_file": str(train),
        "validation_file": str(dev),
        "max_train_samples": 400,
        "per_device_train_batch_size": 16,
        "num_train_epochs": 3,
        "learning_rate": 1.0e-3,
        "use_cpu": True,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "metric_for_best_model": "accuracy",
        "output_dir": str(path.parent / "unused"),
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def pretrained_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT's backbone after learning other sentiment sentences: a "pretrained"
    checkpoint whose features suit the task, as a real one's would (its head is dropped)."""
    d = tmp_path_factory.mktemp("pretrained")
    train = write_csv(d / "train.csv", sentiment_rows(400, seed=9))
    args = [
        "--model_name_or_path",
        str(tiny_bert),
        "--train_file",
        str(train),
        "--output_dir",
        str(d / "run"),
    ]
    args += "--num_train_epochs 2 --learning_rate 3e-3 --use_cpu true".split()
    args += "--eval_strategy no --save_strategy no".split()
    load_recipe("bert_cls").main(args)
    AutoModel.from_pretrained(d / "run").save_pretrained(d / "backbone")
    AutoTokenizer.from_pretrained(d / "run").save_pretrained(d / "backbone")
    return d / "backbone"


# ---- recipes study


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
        assert f"{row['learning_rate']:.3g} ({row['learning_rate_from']})" in line
    by = {r["strategy"]: r for r in rows}
    assert by["full"]["trainable_params"] == by["scratch"]["trainable_params"] == by["full"]["total_params"]
    full_size = by["full"]["total_params"]
    assert by["freeze"]["trainable_params"] < by["lora"]["trainable_params"] < 0.05 * full_size
    assert by["full"]["value"] >= 0.9 and by["full"]["rank"] == 1
    saved = yaml.safe_load((out / "lora" / "resolved_config.yaml").read_text())
    assert saved["use_lora"] is True and saved["learning_rate"] == 5.0e-3  # the study block applied
    # The study block wins over the rule; strategies without one get a multiple of the config's lr.
    learning_rates = {r["strategy"]: (r["learning_rate"], r["learning_rate_from"]) for r in rows}
    assert learning_rates == {
        "full": (1.0e-3, "1x learning_rate"),
        "lora": (5.0e-3, "study.lora"),
        "freeze": (1.0e-2, "study.freeze"),
        "scratch": (1.0e-3, "1x learning_rate"),
    }
    assert (out / "study_curves.png").stat().st_size > 10_000


def test_study_of_a_copied_recipe_by_its_path_is_fair_without_a_study_block(
    pretrained_bert, sentiment_csvs, tmp_path
):
    # `recipes new` puts the copy outside recipes/; the study takes it by its path.
    assert main(["new", "my_task", "--from", "bert_cls", "--dest", str(tmp_path)]) == 0
    copy = tmp_path / "my_task"
    # A user's config: no study block, no expected metric, no metric_for_best_model, a full
    # fine-tuning learning rate (1e-4) too low for LoRA's fresh adapters and head.
    config = tiny_config(pretrained_bert, sentiment_csvs, tmp_path / "mine.yaml", learning_rate=1.0e-4)
    plain = yaml.safe_load(config.read_text())
    del plain["metric_for_best_model"]
    plain.update(num_train_epochs=1, eval_strategy="no")
    config.write_text(yaml.safe_dump(plain))
    out = tmp_path / "study"
    args = ["study", str(copy), "--config", str(config), "--strategies", "lora,scratch", "--output", str(out)]
    done = recipes_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    by = {r["strategy"]: r for r in json.loads((out / "study.json").read_text())}
    assert json.loads((out / "lora" / "run_info.json").read_text())["recipe"] == "my_task"
    assert by["lora"]["metric"] == "eval_accuracy"  # the first of the main metrics all_results.json holds
    assert by["lora"]["learning_rate"] == 1.0e-3 and by["scratch"]["learning_rate"] == 1.0e-4  # 10x and 1x
    # LoRA on the pretrained backbone learns the task; from scratch, 25 steps stay near chance (0.5).
    assert by["lora"]["value"] >= 0.9 and by["lora"]["value"] - by["scratch"]["value"] >= 0.25
    assert (by["lora"]["rank"], by["scratch"]["rank"]) == (1, 2)
    table = done.stdout
    assert "| lora | eval_accuracy |" in table and "0.001 (10x learning_rate)" in table
    assert "0.0001 (1x learning_rate)" in table


def test_each_strategy_gets_a_learning_rate_by_the_rule_unless_its_study_block_sets_one():
    config = {"learning_rate": "1e-4", "study": {"freeze": {"learning_rate": 5.0e-3, "lora_r": 4}}}
    assert strategy_argv("full", config)[-2:] == ["--learning_rate", "0.0001"]
    assert strategy_argv("lora", config)[-2:] == ["--learning_rate", "0.001"]
    assert strategy_argv("lora", config, base_lr=3e-5)[-2:] == ["--learning_rate", "0.0003"]
    freeze = strategy_argv("freeze", config)
    assert freeze[freeze.index("--learning_rate") + 1] == "0.005" and freeze[-2:] == ["--lora_r", "4"]
    assert strategy_argv("freeze", {"learning_rate": 1.0e-4})[-2:] == ["--learning_rate", "0.01"]
    assert strategy_argv("scratch", {})[-2:] == ["--learning_rate", "5e-05"]  # TrainingArguments' default
    # The full row of a LoRA config turns LoRA off; keys the config leaves alone get no flag (a
    # recipe without from_scratch, like recipes/sft, would refuse one).
    full = strategy_argv("full", {"use_lora": True, "lora_r": 4})
    assert full[full.index("--use_lora") + 1] == "false" and "--from_scratch" not in full
    # --learning_rate given to the study is the base of every strategy's rate, not one rate for all.
    assert pop_learning_rate(["--max_train_samples", "9", "--learning_rate", "2e-5"]) == (
        2e-5,
        ["--max_train_samples", "9"],
    )
    with pytest.raises(ConfigError, match="unknown strategy 'qlora'"):
        strategy_argv("qlora", config)


def test_the_study_metric_is_the_recipes_main_metric(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    results = {"eval_loss": 0.3, "eval_f1": 0.8, "eval_accuracy": 0.9}
    (run / "all_results.json").write_text(json.dumps(results))
    assert study_metric({}, "f1", [run]) == "eval_f1"  # --metric
    assert study_metric({"expected": {"metric": "eval_f1"}}, None, [run]) == "eval_f1"
    assert study_metric({}, None, [run]) == "eval_accuracy"  # not eval_loss first
    (run / "resolved_config.yaml").write_text("metric_for_best_model: f1\n")
    assert study_metric({}, None, [run]) == "eval_f1"  # as the run recorded it
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "all_results.json").write_text(json.dumps({"eval_loss": 2.0, "perplexity": 7.4}))
    assert study_metric({}, None, [tmp_path / "lm"]) == "perplexity"


# ---- recipes sweep


def test_sweep_writes_a_best_config_that_reproduces_the_best_trial(tiny_bert, sentiment_csvs, tmp_path):
    # eval_loss, a continuous metric, so "reproduces" is a real check; accuracy would tie at 1.0.
    sweep = {
        "trials": 3,
        "metric": "eval_loss",
        "space": {"learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True}},
    }
    config = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "sweep.yaml", sweep=sweep)
    out = tmp_path / "sweep"
    done = recipes_cli("sweep", "bert_cls", "--config", str(config), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    assert len(results["trials"]) == 3 and {t["state"] for t in results["trials"]} == {"complete"}
    assert results["direction"] == "minimize"
    values = [t["value"] for t in results["trials"]]
    assert results["best"]["value"] == min(values) and len(set(values)) == 3  # trials really differ
    # Evaluated per epoch: 25 steps an epoch, 3 epochs; the value is the evaluation after step 75.
    assert {t["evaluated"] for t in results["trials"]} == {"after training, step 75"}

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["learning_rate"] == results["best"]["params"]["learning_rate"]
    assert best["output_dir"] == str(out / "best") and "sweep" not in best
    rerun = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "bert_cls" / "run.py"), "--config", str(out / "best.yaml")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = json.loads((out / "best" / "all_results.json").read_text())
    assert again["eval_loss"] == pytest.approx(results["best"]["value"], rel=1e-4)


def test_sweep_ranks_trials_by_the_metric_after_training_not_the_step_0_evaluation(
    tiny_bert, sentiment_csvs, tmp_path
):
    # eval_on_start evaluates the untrained model, the same for every trial, and nothing is
    # evaluated during training: Trainer.hyperparameter_search alone would rank by that value.
    sweep = {
        "trials": 3,
        "metric": "eval_loss",
        "space": {"learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True}},
    }
    config = tiny_config(
        tiny_bert,
        sentiment_csvs,
        tmp_path / "sweep.yaml",
        sweep=sweep,
        eval_on_start=True,
        eval_strategy="no",
        num_train_epochs=1,
    )
    out = tmp_path / "sweep"
    assert main(["sweep", "bert_cls", "--config", str(config), "--output", str(out)]) == 0
    results = json.loads((out / "sweep.json").read_text())
    trials = results["trials"]
    values = [t["value"] for t in trials]
    assert len(set(values)) == 3  # the learning rates made a difference
    step_0 = {t["evaluations"][0]["value"] for t in trials}
    assert [t["evaluations"][0]["step"] for t in trials] == [0, 0, 0] and len(step_0) == 1
    for trial in trials:
        final = trial["evaluations"][-1]
        assert trial["evaluated"] == "after training, step 25" and final["step"] == 25
        assert trial["value"] == final["value"] and trial["value"] not in step_0
    assert results["best"]["value"] == min(values)
    # The best trial's value is the eval_loss its config reaches when trained by the recipe itself.
    again = load_recipe("bert_cls").main(["--config", str(out / "best.yaml")])
    assert again["eval_loss"] == pytest.approx(results["best"]["value"], rel=1e-4)
    assert again["eval_loss_before"] == pytest.approx(step_0.pop(), rel=1e-4)


def test_sweep_without_a_search_space_names_what_is_missing(tiny_bert, sentiment_csvs, tmp_path, capsys):
    config = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "plain.yaml")
    assert main(["sweep", "bert_cls", "--config", str(config), "--output", str(tmp_path / "s")]) == 2
    assert "sweep:" in capsys.readouterr().err
    typo = {"space": {"learning_rat": [1e-3]}}
    bad = tiny_config(tiny_bert, sentiment_csvs, tmp_path / "bad.yaml", sweep=typo)
    assert main(["sweep", "bert_cls", "--config", str(bad), "--output", str(tmp_path / "s")]) == 2
    assert "sweep.space.learning_rat" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_sweep_block_values_are_checked_and_numbers_written_as_text_read():
    as_text = {"low": "1e-5", "high": 1.0e-3, "log": True}  # PyYAML reads 1e-5 (no dot) as text
    spec = parse_sweep({"trials": "4", "space": {"learning_rate": as_text}})
    assert spec.trials == 4 and spec.space["learning_rate"] == {"low": 1e-5, "high": 1e-3, "log": True}
    epochs = parse_sweep({"space": {"num_train_epochs": {"low": 1, "high": 4}}}).space["num_train_epochs"]
    assert epochs == {"low": 1, "high": 4, "log": False} and isinstance(epochs["low"], int)
    with pytest.raises(ConfigError, match="sweep.space.learning_rate.log: must be true or false"):
        parse_sweep({"space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": "yes please"}}})
    with pytest.raises(ConfigError, match="sweep.space.learning_rate: low must be below high"):
        parse_sweep({"space": {"learning_rate": {"low": 1e-3, "high": 1e-5}}})
    with pytest.raises(ConfigError, match="sweep.trials: must be an integer"):
        parse_sweep({"trials": 2.5, "space": {"seed": [1, 2]}})
    with pytest.raises(ConfigError, match="unknown key sweep.trails"):
        parse_sweep({"trails": 2, "space": {"seed": [1, 2]}})
