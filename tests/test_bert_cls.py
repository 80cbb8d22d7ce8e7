"""bert_cls end to end on a tiny BERT and generated, learnable data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_recipe
from fixtures import write_csv
from safetensors.torch import load_file
from transformers import AutoConfig, pipeline

from recipes_lib.errors import ConfigError, DataError, OutputDirError

bert_cls = load_recipe("bert_cls")
RUN_PY = str(REPO / "recipes" / "bert_cls" / "run.py")

# The tiny model learns from random init, so it needs a larger learning rate than BERT-base.
TINY = ["--learning_rate", "1e-3", "--per_device_train_batch_size", "16", "--use_cpu", "true",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none"]  # fmt: skip


def run(model, train, dev, out, *extra):
    argv = ["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--output_dir", str(out), "--num_train_epochs", "5", *TINY, *extra]  # fmt: skip
    return bert_cls.main(argv)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_single_sentence_classification_learns_and_saves_a_usable_model(tiny_bert, sentiment_csvs, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_bert, *sentiment_csvs, out)
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_f1"] >= 0.9

    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    for name in ("eval_results.json", "train_results.json", "trainer_state.json", "resolved_config.yaml",
                 "model.safetensors", "README.md"):  # fmt: skip
        assert (out / name).is_file(), name

    predictions = read_jsonl(out / "eval_predictions.jsonl")
    assert len(predictions) == 200
    assert {p["label"] for p in predictions} == {"negative", "positive"}
    correct = sum(p["label"] == p["prediction"] for p in predictions) / len(predictions)
    assert correct == pytest.approx(metrics["eval_accuracy"])  # predictions line up with their inputs

    classify = pipeline("text-classification", model=str(out))
    assert classify("a wonderful and brilliant story")[0]["label"] == "positive"
    assert classify("a dull and dreadful plot")[0]["label"] == "negative"


def test_predictions_follow_the_dataset_order_under_length_grouped_training(
    tiny_bert, sentiment_csvs, tmp_path
):
    """group_by_length (the recipe's default) groups training batches only: predict() returns every
    validation example in the dataset's order and leaves the Trainer's arguments as they were; a
    plain Trainer, whose evaluation batches that strategy would reorder, is refused."""
    from transformers import Trainer

    from recipes_lib.training import predict

    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(sentiment_csvs[0])]
    argv += ["--validation_file", str(sentiment_csvs[1]), "--output_dir", str(tmp_path / "out"), *TINY]
    setup = bert_cls.build(argv)
    trainer, validation = setup.trainer, setup.tokenized["validation"]
    assert trainer.args.train_sampling_strategy == "group_by_length"
    lengths = [len(ids) for ids in validation["input_ids"]]
    assert lengths != sorted(lengths)  # an order that grouping by length would change
    args_before = trainer.args.to_dict()
    output = predict(trainer, validation, "eval")
    assert output.label_ids.tolist() == validation["labels"]  # row i is example i
    assert trainer.args.to_dict() == args_before

    plain = Trainer(model=trainer.model, args=trainer.args, data_collator=trainer.data_collator)
    plain.processing_class = trainer.processing_class
    with pytest.raises(ConfigError, match="would not line up with examples"):
        predict(plain, validation, "eval")


def test_eval_on_start_records_the_metrics_before_fine_tuning(tiny_bert, sentiment_csvs, tmp_path):
    metrics = run(tiny_bert, *sentiment_csvs, tmp_path / "out", "--eval_on_start", "true")
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["eval_accuracy_before"] < 0.7 and results["eval_accuracy"] >= 0.9
    assert results["eval_accuracy"] == metrics["eval_accuracy"]
    assert results["eval_loss_before"] > results["eval_loss"]


def test_sentence_pairs_are_encoded_as_pairs(tiny_bert, pair_csvs, tmp_path):
    # Learning which segment holds the animal takes a few epochs before it clicks; 10 leave margin.
    metrics = run(tiny_bert, *pair_csvs, tmp_path / "out", "--num_train_epochs", "10")
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_f1"] >= 0.9


def test_float_labels_train_a_regression(tiny_bert, regression_csvs, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_bert, *regression_csvs, out)
    assert metrics["eval_pearson"] >= 0.8 and metrics["eval_spearmanr"] >= 0.8
    assert "eval_mse" in metrics and "eval_accuracy" not in metrics
    config = AutoConfig.from_pretrained(out)
    assert config.num_labels == 1 and config.problem_type == "regression"


def test_same_seed_same_metrics_and_other_seed_differs(tiny_bert, sentiment_csvs, tmp_path):
    short = ["--num_train_epochs", "1", "--max_train_samples", "200"]
    a = run(tiny_bert, *sentiment_csvs, tmp_path / "a", *short)
    b = run(tiny_bert, *sentiment_csvs, tmp_path / "b", *short)
    c = run(tiny_bert, *sentiment_csvs, tmp_path / "c", *short, "--seed", "7")
    assert a["eval_loss"] == b["eval_loss"] and a["train_loss"] == b["train_loss"]
    assert a["eval_loss"] != c["eval_loss"]
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in "abc"}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_rerun_resumes_from_the_last_checkpoint_and_matches(tiny_bert, sentiment_csvs, tmp_path):
    per_epoch = ["--save_strategy", "epoch", "--num_train_epochs", "2", "--max_train_samples", "320"]
    full = run(tiny_bert, *sentiment_csvs, tmp_path / "full", *per_epoch)
    # A crash after the first epoch's checkpoint: only the config and that checkpoint remain.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(tmp_path / "full" / "resolved_config.yaml", crashed)
    first = min((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(first, crashed / first.name)
    config = (crashed / "resolved_config.yaml").read_text().replace(str(tmp_path / "full"), str(crashed))
    (crashed / "resolved_config.yaml").write_text(config)

    resumed = run(tiny_bert, *sentiment_csvs, crashed, *per_epoch)
    state = json.loads((crashed / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-6)
    assert resumed["eval_accuracy"] == full["eval_accuracy"]


def test_finished_or_different_run_in_output_dir_is_kept(tiny_bert, sentiment_csvs, tmp_path):
    out = tmp_path / "out"
    short = ["--num_train_epochs", "1", "--max_train_samples", "100"]
    run(tiny_bert, *sentiment_csvs, out, *short)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputDirError, match="finished run"):
        run(tiny_bert, *sentiment_csvs, out, *short)
    with pytest.raises(OutputDirError, match="another run"):
        run(tiny_bert, *sentiment_csvs, out, *short, "--learning_rate", "5e-4")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = run(tiny_bert, *sentiment_csvs, out, *short, "--overwrite_output_dir", "true")
    assert again["eval_accuracy"] > 0


def test_columns_are_configurable_and_missing_ones_are_named(tiny_bert, tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in __import__("fixtures").sentiment_rows(300, 9)]
    train = write_csv(tmp_path / "train.csv", rows[:240])
    dev = write_csv(tmp_path / "dev.csv", rows[240:])
    with pytest.raises(DataError, match="review, stars"):
        run(tiny_bert, train, dev, tmp_path / "a", "--num_train_epochs", "1")
    metrics = run(tiny_bert, train, dev, tmp_path / "b", "--text_column", "review", "--label_column", "stars")
    assert metrics["eval_accuracy"] >= 0.9


def test_non_utf8_data_needs_data_encoding(tiny_bert, tmp_path):
    rows = [
        {"text": r["text"] + " café", "label": r["label"]}
        for r in __import__("fixtures").sentiment_rows(300, 9)
    ]
    train = write_csv(tmp_path / "train.csv", rows[:240], encoding="latin-1")
    dev = write_csv(tmp_path / "dev.csv", rows[240:], encoding="latin-1")
    with pytest.raises(DataError, match="data_encoding"):
        run(tiny_bert, train, dev, tmp_path / "a", "--num_train_epochs", "1")
    metrics = run(tiny_bert, train, dev, tmp_path / "b", "--data_encoding", "latin-1")
    predictions = read_jsonl(tmp_path / "b" / "eval_predictions.jsonl")
    assert predictions[0]["text"].endswith("café") and metrics["eval_accuracy"] >= 0.9


def test_unknown_key_in_process_raises_naming_it(tiny_bert, sentiment_csvs, tmp_path):
    with pytest.raises(ConfigError, match="'--max_seq_lenght'; did you mean '--max_seq_length'"):
        run(tiny_bert, *sentiment_csvs, tmp_path / "o", "--max_seq_lenght", "64")


def test_command_line_errors_are_one_line_with_an_exit_code(tiny_bert, sentiment_csvs, tmp_path):
    cmd = [sys.executable, RUN_PY, "--train_file", str(sentiment_csvs[0]), "--output_dir",
           str(tmp_path / "o"), "--model_name_or_path", str(tiny_bert), "--learning_rat", "1e-3"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == ConfigError.exit_code
    assert (
        result.stderr.strip().splitlines()[-1]
        == ("error: unknown command-line option '--learning_rat'; did you mean '--learning_rate'? ").strip()
    )
    assert "Traceback" not in result.stderr


def test_test_files_are_predicted_labelled_ones_scored_consistently(tiny_bert, sentiment_csvs, tmp_path):
    from fixtures import sentiment_rows

    rows = sentiment_rows(60, seed=11)
    labelled = write_csv(tmp_path / "test_labelled.csv", rows)
    unlabelled = write_csv(tmp_path / "test_unlabelled.csv", [{"text": r["text"]} for r in rows])

    metrics = run(tiny_bert, *sentiment_csvs, tmp_path / "a", "--test_file", str(labelled))
    predictions = read_jsonl(tmp_path / "a" / "test_predictions.jsonl")
    assert [p["text"] for p in predictions] == [r["text"] for r in rows]  # one row per example, in order
    accuracy = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert metrics["test_accuracy"] == pytest.approx(accuracy) and accuracy >= 0.9
    assert json.loads((tmp_path / "a" / "all_results.json").read_text())["test_f1"] == metrics["test_f1"]

    metrics = run(tiny_bert, *sentiment_csvs, tmp_path / "b", "--test_file", str(unlabelled))
    predictions = read_jsonl(tmp_path / "b" / "test_predictions.jsonl")
    assert len(predictions) == 60 and "test_accuracy" not in metrics
    assert {p["prediction"] for p in predictions} <= {"negative", "positive"}
    assert all(0.5 <= p["score"] <= 1 for p in predictions)  # the probability of the predicted class

    unseen = write_csv(tmp_path / "test_unseen.csv", [{"text": "x", "label": "neutral"}])
    with pytest.raises(DataError, match="test labels \\['neutral'\\] never occur in train"):
        run(tiny_bert, *sentiment_csvs, tmp_path / "c", "--test_file", str(unseen))
    assert not (tmp_path / "c" / "all_results.json").exists()


def test_a_user_config_without_speed_keys_gets_the_recipe_defaults(tiny_bert, sentiment_csvs, tmp_path):
    """A minimal config of the user's own, from another folder: length grouping and per-batch
    loss averaging apply anyway, and the resolved config says so."""
    import yaml

    train, dev = sentiment_csvs
    config = tmp_path / "mine" / "my.yaml"
    config.parent.mkdir()
    config.write_text(
        f"model_name_or_path: {tiny_bert}\ntrain_file: {train}\nvalidation_file: {dev}\n"
        f"output_dir: {tmp_path / 'out'}\nlearning_rate: 1.0e-3\nnum_train_epochs: 2\n"
        "per_device_train_batch_size: 16\nseed: 3\nuse_cpu: true\nreport_to: none\n"
    )
    metrics = bert_cls.main(["--config", str(config)])
    resolved = yaml.safe_load((tmp_path / "out" / "resolved_config.yaml").read_text())
    assert resolved["train_sampling_strategy"] == "group_by_length"
    assert resolved["average_tokens_across_devices"] is False
    assert metrics["eval_accuracy"] >= 0.8
    # The final evaluation is in the log history, after the last training step, so the curves end with it.
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    last_eval = [e for e in history if "eval_accuracy" in e][-1]
    assert last_eval["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert last_eval["step"] == max(e["step"] for e in history)
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 10_000


def test_resume_compares_what_defines_the_run_not_what_the_machine_filled_in(
    tiny_bert, sentiment_csvs, tmp_path
):
    """An unfinished run (checkpoints, no all_results.json) whose machine-filled keys differ still
    resumes; another global batch, or another hyperparameter, is refused with the key named."""
    import yaml

    out = tmp_path / "out"
    short = [
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--max_train_samples",
        "100",
    ]
    run(tiny_bert, *sentiment_csvs, out, *short)
    (out / "all_results.json").unlink()  # as if killed after its last checkpoint
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    info = json.loads((out / "run_info.json").read_text())

    # Trained on a machine with TensorBoard and a GPU (bf16 chosen by the config layer), resumed here.
    (out / "resolved_config.yaml").write_text(
        yaml.safe_dump({**resolved, "report_to": ["tensorboard"], "bf16": True})
    )
    (out / "run_info.json").write_text(json.dumps({**info, "machine_keys": ["bf16", "report_to"]}))
    metrics = run(tiny_bert, *sentiment_csvs, out, *short)
    assert metrics["eval_accuracy"] > 0 and (out / "all_results.json").is_file()

    # Two processes of batch 16 then; one process of 16 now: another global batch.
    (out / "all_results.json").unlink()
    (out / "run_info.json").write_text(json.dumps({**info, "world_size": 2}))
    with pytest.raises(OutputDirError, match="global batch .* 32 there, 16 now"):
        run(tiny_bert, *sentiment_csvs, out, *short)
    # One process of batch 32 is the same global batch: accepted, and the run finishes.
    run(tiny_bert, *sentiment_csvs, out, *short, "--per_device_train_batch_size", "32")
    assert (out / "all_results.json").is_file()
    with pytest.raises(OutputDirError, match="another run .*learning_rate"):
        run(tiny_bert, *sentiment_csvs, out, *short, "--learning_rate", "5e-4")
