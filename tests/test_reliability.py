"""Crash safety and non-finite losses (the bad-input contract: test_bad_inputs.py)."""

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

from recipes_lib.errors import TrainingError

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


def test_the_nan_guard_takes_no_extra_pass_over_the_gradients(tiny_bert, tmp_path, monkeypatch):
    """The guard reads the gradient norm Trainer computes to clip: one norm over the gradients
    per optimizer step in all (Trainer's), with or without clipping (max_grad_norm 0 still logs
    the norm)."""
    import torch

    calls = []
    foreach_norm = torch._foreach_norm

    def counting_norm(*args, **kwargs):
        calls.append(1)
        return foreach_norm(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting_norm)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=3))
    for max_grad_norm in ("1.0", "0"):
        calls.clear()
        out = tmp_path / f"out-{max_grad_norm}"
        setup = bert_cls.build([
            "--model_name_or_path", str(tiny_bert), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "16", "--max_steps", "4", "--save_strategy", "no",
            "--eval_strategy", "no", "--use_cpu", "true", "--max_grad_norm", max_grad_norm,
            "--validation_split_percentage", "10",
        ])  # fmt: skip
        setup.trainer.train()
        assert setup.trainer.state.global_step == 4
        assert len(calls) == 4, (max_grad_norm, len(calls))
