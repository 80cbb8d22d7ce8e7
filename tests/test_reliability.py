"""Crash safety, the bad-input contract and non-finite losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, load_recipe
from fixtures import regression_rows, sentiment_rows, write_csv
from safetensors.torch import load_file

from recipes_lib.errors import TrainingError, exit_on_error

RUN_PY = str(REPO / "recipes" / "bert_cls" / "run.py")
bert_cls = load_recipe("bert_cls")


def tensors_equal(a, b) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)


def test_killed_run_resumes_to_the_same_result(tiny_bert, tmp_path):
    """SIGKILL after a checkpoint, plus a checkpoint left half-written, then the same command again."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(2400, seed=31))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(100, seed=32))
    args = ["--model_name_or_path", str(tiny_bert), "--train_file", str(train), "--validation_file", str(dev),
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--per_device_train_batch_size", "8",
            "--use_cpu", "true", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "50",
            "--save_total_limit", "3", "--logging_steps", "25", "--pad_to_max_length", "true",
            "--max_seq_length", "64"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, RUN_PY, *args, "--output_dir", str(reference)], env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip

    out = tmp_path / "crashed"
    cmd = [sys.executable, RUN_PY, *args, "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-150" / "trainer_state.json").is_file() and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "all_results.json").exists()

    # What a kill during a save leaves: a checkpoint folder with a truncated model and no state.
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    partial = out / f"checkpoint-{int(newest.name.split('-')[1]) + 50}"
    shutil.copytree(newest, partial)
    (partial / "trainer_state.json").unlink()
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / f"incomplete-{partial.name}").is_dir()  # kept, but not resumed from
    ref_results = json.loads((reference / "all_results.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_loss", "eval_accuracy", "eval_f1"):
        assert results[key] == ref_results[key], key
    assert tensors_equal(out / "model.safetensors", reference / "model.safetensors")


def test_nan_loss_stops_with_an_error_and_keeps_the_last_good_checkpoint(tiny_bert, tmp_path):
    rows = regression_rows(400, seed=41)
    rows[250]["label"] = 1e39  # inf in float32: met at step 16 with batch 16 in file order
    train = write_csv(tmp_path / "train.csv", rows)
    dev = write_csv(tmp_path / "dev.csv", regression_rows(50, seed=42))
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="NaN/inf at step 16"):
        bert_cls.main([
            "--model_name_or_path", str(tiny_bert), "--train_file", str(train), "--validation_file", str(dev),
            "--output_dir", str(out), "--train_sampling_strategy", "sequential",
            "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "5",
            "--eval_strategy", "no", "--use_cpu", "true", "--learning_rate", "1e-3",
        ])  # fmt: skip
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-15"]
    import torch

    weights = load_file(out / "checkpoint-15" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "all_results.json").exists()


# ---- the bad-input contract: one line on stderr, a distinct exit code, nothing on disk lost


@pytest.fixture(scope="module")
def finished_run(tiny_bert, sentiment_csvs, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    bert_cls.main(["--model_name_or_path", str(tiny_bert), "--train_file", str(sentiment_csvs[0]),
                   "--validation_file", str(sentiment_csvs[1]), "--output_dir", str(out),
                   "--num_train_epochs", "1", "--max_train_samples", "64", "--use_cpu", "true",
                   "--save_strategy", "no"])  # fmt: skip
    return out


def bad_inputs(tmp):
    """(name, extra argv, exit code, words the message must contain)."""
    (tmp / "bad.yaml").write_text("learning_rate: 1e-4\nseed: [1\n")
    (tmp / "typo.yaml").write_text("learning_rat: 1e-4\n")
    write_csv(tmp / "latin1.csv", [{"text": "café olé", "label": "a"}] * 20, encoding="latin-1")
    write_csv(tmp / "cols.csv", [{"review": "good", "stars": 5}] * 20)
    write_csv(tmp / "unseen.csv", [{"text": "x", "label": "zzz"}] * 5)
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "data.xlsx").write_text("not supported")
    cols = str(tmp / "cols.csv")
    pickle_model = tmp / "pickle_model"  # what an old checkpoint folder looks like
    pickle_model.mkdir()
    (pickle_model / "config.json").write_text("{}")
    (pickle_model / "pytorch_model.bin").write_bytes(b"not loaded")
    return [
        ("config missing", ["--config", str(tmp / "nope.yaml")], 2, ["config file not found", "nope.yaml"]),
        ("yaml syntax", ["--config", str(tmp / "bad.yaml")], 2, ["YAML syntax error", "line 3"]),
        ("unknown key yaml", ["--config", str(tmp / "typo.yaml")], 2, ["learning_rat", "learning_rate"]),
        ("unknown key cli", ["--num_train_epoch", "1"], 2, ["--num_train_epoch", "--num_train_epochs"]),
        ("wrong type", ["--learning_rate", "fast"], 2, ["learning_rate", "fast"]),
        ("out of range", ["--per_device_train_batch_size", "0"], 2, ["per_device_train_batch_size", ">= 1"]),
        ("data file missing", ["--train_file", str(tmp / "missing.csv")], 3, ["not found", "missing.csv"]),
        ("unsupported type", ["--train_file", str(tmp / "data.xlsx")], 3, ["unsupported", ".xlsx"]),
        ("columns differ", ["--train_file", cols], 3, ["different columns", "review, stars"]),
        ("column missing", ["--train_file", cols, "--validation_file", cols], 3, ["no text column", "stars"]),
        ("label column missing", ["--label_column", "sentiment"], 3, ["'sentiment' not found", "text"]),
        ("not utf-8", ["--train_file", str(tmp / "latin1.csv")], 3, ["UTF-8", "data_encoding"]),
        ("empty split", ["--validation_file", str(tmp / "empty.csv")], 3, ["validation", "no examples"]),
        ("unseen labels", ["--validation_file", str(tmp / "unseen.csv")], 3, ["zzz", "never occur in train"]),
        ("model unavailable", ["--model_name_or_path", "no-such-org/no-such-model"], 4,
         ["no-such-org/no-such-model", "HF_HUB_OFFLINE"]),
        ("pickle weights", ["--model_name_or_path", str(pickle_model)], 4, ["pickle", "allow_pickle"]),
        ("another run", ["--learning_rate", "0.5"], 5, ["holds another run", "learning_rate"]),
        ("finished run", [], 5, ["finished run", "--overwrite_output_dir"]),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(18))
def test_bad_input_gets_one_line_and_an_exit_code(
    case, finished_run, tiny_bert, sentiment_csvs, tmp_path, capsys
):
    name, extra, code, words = bad_inputs(tmp_path)[case]
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    # Config errors stop before the output folder is looked at, and the output-folder errors need
    # the finished run; data and model errors come after the folder check, so they get a new folder.
    out = finished_run if code in (2, 5) else tmp_path / "new_out"
    argv = ["--model_name_or_path", str(tiny_bert), "--train_file", str(sentiment_csvs[0]),
            "--validation_file", str(sentiment_csvs[1]), "--output_dir", str(out),
            "--num_train_epochs", "1", "--max_train_samples", "64", "--use_cpu", "true",
            "--save_strategy", "no", *extra]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        exit_on_error(bert_cls.main, argv)
    assert exit_info.value.code == code, name
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err_lines) == 1, name
    for word in words:
        assert word in err_lines[0], (name, err_lines[0])
    after = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert after == before, f"{name}: files of the finished run changed"
    if out != finished_run:  # at most the start-up record, which a rerun reuses
        assert {p.name for p in out.glob("*")} <= {"resolved_config.yaml", "run_info.json"}, name
