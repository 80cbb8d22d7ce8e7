"""Real 2-process data parallelism on CPU (gloo), through accelerate and torchrun.

On a machine without GPUs the recipes turn on `use_cpu` by themselves when a launcher starts
several processes, so they join one gloo group; every test asserts the world size.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO
from fixtures import build_tiny_bert, regression_rows, sentiment_rows, write_csv

BIN = Path(sys.executable).parent
BERT_RUN = str(REPO / "recipes" / "bert_cls" / "run.py")
LAUNCHERS = {
    "accelerate": [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"],
    "torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2"],
}


def launch(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # DDP does not search the autograd graph for unused weights every step (each recipe sets
    # ddp_find_unused_parameters: every weight that trains is used in each forward pass).
    assert "find_unused_parameters=True was specified" not in result.stderr
    return result


@pytest.fixture(scope="module")
def bert_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_bert")
    # No dropout, so a 2-process run and a 1-process run see identical forward passes.
    model = build_tiny_bert(d / "model", dropout=0.0)
    train = write_csv(d / "train.csv", sentiment_rows(320, seed=21))
    dev = write_csv(d / "dev.csv", sentiment_rows(101, seed=22))  # odd: the last batch is uneven
    args = ["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--use_cpu", "true",
            "--eval_strategy", "no", "--save_strategy", "no", "--train_sampling_strategy", "random",
            "--logging_steps", "5"]  # fmt: skip
    single = d / "single"
    launch(
        [sys.executable, BERT_RUN, *args, "--per_device_train_batch_size", "16", "--output_dir", str(single)],
        d,
    )
    return d, args, dev, single


def losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_bert_cls_two_processes_match_one_with_the_same_global_batch(bert_setup, launcher):
    d, args, dev, single = bert_setup
    out = d / f"ddp_{launcher}"
    result = launch([*LAUNCHERS[launcher], BERT_RUN, *args, "--per_device_train_batch_size", "8",
                     "--output_dir", str(out)], d)  # fmt: skip
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    table_headers = [line for line in result.stdout.splitlines() if line.startswith("metric ")]
    assert len(table_headers) == 1  # only the main process prints the final table

    # Every eval example predicted exactly once, despite 101 examples over 2 processes.
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    expected = collections.Counter((r["text"], r["label"]) for r in csv.DictReader(dev.open()))
    assert collections.Counter((p["text"], p["label"]) for p in predictions) == expected

    ddp, one = (json.loads((p / "all_results.json").read_text()) for p in (out, single))
    assert ddp["eval_samples"] == 101
    assert losses(out) == pytest.approx(losses(single), rel=1e-3)  # the same optimisation path
    assert ddp["eval_accuracy"] == pytest.approx(one["eval_accuracy"], abs=0.01)
    assert ddp["eval_loss"] == pytest.approx(one["eval_loss"], rel=0.02)


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_accelerate_config_loads_with_accelerates_loader(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.distributed_type is not None
    if config.distributed_type.value == "FSDP":
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if config.distributed_type.value == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] in (2, 3)


# ---- gpt_clm and resnet_img: the same launch, with dropout / batch norm, so metrics are close, not equal


def one_and_two_processes(run_py: str, args: list[str], cwd: Path) -> tuple[dict, dict]:
    """all_results of 1 process x batch 16 (in cwd/one) and 2 processes x batch 8 (in cwd/two)."""
    launch([sys.executable, run_py, *args, "--per_device_train_batch_size", "16", "--output_dir", "one"], cwd)
    two_processes = [*LAUNCHERS["accelerate"], run_py, *args, "--per_device_train_batch_size", "8"]
    launch([*two_processes, "--output_dir", "two"], cwd)
    one, two = (json.loads((cwd / d / "all_results.json").read_text()) for d in ("one", "two"))
    return one, two


def test_gpt_clm_two_processes(tmp_path):
    from fixtures_gpt import build_tiny_gpt2, pattern_lines, write_lines

    model = build_tiny_gpt2(tmp_path / "model")
    train = write_lines(tmp_path / "train.txt", pattern_lines(400, seed=51))
    dev = write_lines(tmp_path / "dev.txt", pattern_lines(101, seed=52))
    run_py = str(REPO / "recipes" / "gpt_clm" / "run.py")
    args = ["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--block_size", "32", "--num_train_epochs", "1", "--learning_rate", "3e-3", "--use_cpu", "true",
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
            "--sample_prompts", "the cat"]  # fmt: skip
    one, two = one_and_two_processes(run_py, args, tmp_path)
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["world_size"] == 2
    assert two["eval_samples"] == one["eval_samples"]  # every eval block counted once
    assert two["perplexity_before"] == pytest.approx(one["perplexity_before"], rel=0.01)
    assert two["perplexity"] < two["perplexity_before"] / 2
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=0.15)
    assert len((tmp_path / "two" / "samples.jsonl").read_text().splitlines()) == 1  # written once


def test_resnet_img_two_processes(tmp_path):
    from fixtures_img import build_tiny_resnet, write_colour_folder

    model = build_tiny_resnet(tmp_path / "model", size=32)
    train = write_colour_folder(tmp_path / "train", 30, seed=61)
    val = write_colour_folder(tmp_path / "val", 17, seed=62)  # 102 images, 101 used
    run_py = str(REPO / "recipes" / "resnet_img" / "run.py")
    args = ["--model_name_or_path", str(model), "--from_scratch", "true", "--train_dir", str(train),
            "--validation_dir", str(val), "--max_eval_samples", "101", "--num_train_epochs", "3",
            "--learning_rate", "3e-3", "--use_cpu", "true", "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--dataloader_num_workers", "0"]  # fmt: skip
    one, two = one_and_two_processes(run_py, args, tmp_path)
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["world_size"] == 2
    predictions = [
        json.loads(x) for x in (tmp_path / "two" / "eval_predictions.jsonl").read_text().splitlines()
    ]
    assert len(predictions) == 101 and len({p["image"] for p in predictions}) == 101
    matrix = json.loads((tmp_path / "two" / "confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == 101
    assert two["eval_accuracy"] >= 0.9 and two["eval_accuracy"] == pytest.approx(
        one["eval_accuracy"], abs=0.05
    )


def test_a_plain_multi_process_launch_on_cpu_forms_one_group(bert_setup):
    """`accelerate launch` with our multi_cpu config and no --use_cpu: one DDP group, not two
    processes training alone into the same folder."""
    d, args, _, _ = bert_setup
    args = [a for a in args if a not in ("--use_cpu", "true")]
    out = d / "no_use_cpu"
    config = str(REPO / "configs" / "accelerate" / "multi_cpu.yaml")
    overrides = ["--per_device_train_batch_size", "8", "--max_steps", "10", "--output_dir", str(out)]
    launch([str(BIN / "accelerate"), "launch", "--config_file", config, BERT_RUN, *args, *overrides], d)
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    assert state["epoch"] == pytest.approx(10 * 16 / 320)  # global batch 2 x 8: half an epoch


def test_a_nan_loss_stops_every_rank_at_the_same_step(bert_setup, tmp_path):
    """A label that makes the loss inf: both processes stop with the error line at the same step
    (the gradient norm is taken after DDP averaged the gradients), none hangs, and every
    checkpoint written before holds finite weights."""
    import torch
    from safetensors.torch import load_file

    d, args, _, _ = bert_setup
    rows = regression_rows(160, seed=41)
    rows[100]["label"] = 1e39  # inf in float32
    train = write_csv(tmp_path / "train.csv", rows)
    dev = write_csv(tmp_path / "dev.csv", regression_rows(20, seed=42))
    out = tmp_path / "out"
    model = args[args.index("--model_name_or_path") + 1]
    cmd = [*LAUNCHERS["accelerate"], BERT_RUN, "--model_name_or_path", model, "--train_file", str(train),
           "--validation_file", str(dev), "--output_dir", str(out), "--per_device_train_batch_size", "8",
           "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
           "--learning_rate", "1e-3", "--use_cpu", "true", "--report_to", "none",
           "--train_sampling_strategy", "sequential"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    stops = [line for line in result.stderr.splitlines() if line.startswith("error: ") and "NaN/inf" in line]
    assert len(stops) == 2 and stops[0] == stops[1], result.stderr[-3000:]
    assert "at step 7;" in stops[0]  # rows 96-111 in file order, a global batch of 16
    assert not (out / "all_results.json").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps[-1] == 6  # the last save before step 7 (save_total_limit keeps the newest)
    for checkpoint in out.glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint.name


def kill_run(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the launcher and every worker whose command line names `marker` (torch's launcher
    starts workers in sessions of their own, so killing its group is not enough)."""
    pids = {proc.pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.add(int(entry.name))
            except OSError:
                pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def test_two_process_run_killed_mid_training_resumes_on_every_rank(bert_setup, tmp_path):
    """SIGKILL of the launcher and both workers after a complete checkpoint, then a checkpoint left
    half-written (what a kill during a save leaves): the same command resumes on both ranks from
    the same step, finishes without hanging, and ends where an uninterrupted run ends."""
    d, args, _, _ = bert_setup
    args = [*args, "--per_device_train_batch_size", "8", "--max_steps", "30", "--save_strategy", "steps",
            "--save_steps", "10", "--num_train_epochs", "3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    launch([*LAUNCHERS["accelerate"], BERT_RUN, *args, "--output_dir", str(reference)], d)

    out = tmp_path / "crashed"
    cmd = [*LAUNCHERS["accelerate"], BERT_RUN, *args, "--output_dir", str(out)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(cmd, cwd=d, env=env, start_new_session=True, **quiet)
    deadline = time.time() + 300
    while not (out / "checkpoint-10" / "trainer_state.json").is_file() and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    kill_run(proc, str(out))
    assert not (out / "all_results.json").exists()

    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    partial = out / f"checkpoint-{int(newest.name.split('-')[1]) + 10}"
    if not partial.exists():
        shutil.copytree(newest, partial)
    (partial / "trainer_state.json").unlink(missing_ok=True)

    resumed = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / newest.name}" in resumed.stderr
    assert (out / f"incomplete-{partial.name}").is_dir()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 30
    results, ref = (json.loads((p / "all_results.json").read_text()) for p in (out, reference))
    assert abs(results["eval_loss"] - ref["eval_loss"]) < 1e-4, (results["eval_loss"], ref["eval_loss"])
