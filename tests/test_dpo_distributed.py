"""recipes/dpo under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): both ranks
train, the loss is the one-process loss with the same global batch, and each rank leaves its
process group before it exits.

A rank that exits with its gloo process group still open can abort (SIGABRT, "terminate called
without an active exception"): gloo's worker thread frees the last collective's tensors, which
needs the GIL, while the interpreter shuts down (Python's pthread_exit unwinds through C++). The
rank that finishes first (rank 1: it skips the report) hit it in about 1 run in 30 here and once in
CI; the launcher then kills rank 0 before it writes all_results.json. Leaving the group first
(finish_run's last step, in every recipe) closes that window, which the exit probe below checks on every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_recipe
from fixtures_gpt import build_tiny_gpt2, flags, tiny_config, write_jsonl
from test_dpo import color_pairs

dpo = load_recipe("dpo")
RUN_PY = str(REPO / "recipes" / "dpo" / "run.py")
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu"]

# Imported by every Python process of the launch (PYTHONPATH): at exit, each rank writes whether
# it still held its process group.
EXIT_PROBE = """
import atexit
import os
import sys
from pathlib import Path


def note_process_group():
    dist = sys.modules.get("torch.distributed")
    still_open = dist is not None and dist.is_available() and dist.is_initialized()
    Path(os.environ["EXIT_PROBE_DIR"], "rank" + os.environ["RANK"]).write_text(
        "open" if still_open else "closed"
    )


if "RANK" in os.environ:  # a launched worker, not the launcher
    atexit.register(note_process_group)
"""


def logged_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def test_two_processes_give_the_loss_of_one_and_leave_their_process_group(tmp_path):
    chat_gpt2 = build_tiny_gpt2(tmp_path / "chat_gpt2", n_positions=64, chat=True)
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(64, seed=61))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(10, seed=62))
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        use_lora=True,
        max_steps=2,
        logging_steps=1,
        eval_on_start=False,
        generation_eval=False,
    )
    # One process, 16 pairs a step (in this process: one interpreter start less).
    dpo.main([*argv, *flags(per_device_train_batch_size=16, output_dir=tmp_path / "one")])

    # Two processes, 8 pairs each: the same 16 pairs a step.
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(EXIT_PROBE)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH")])),
        "EXIT_PROBE_DIR": str(probe),
    }
    two = [*ACCELERATE, "--num_processes", "2", RUN_PY, *argv]
    two += flags(per_device_train_batch_size=8, output_dir=tmp_path / "two")
    result = subprocess.run(two, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["world_size"] == 2
    one_losses = logged_losses(tmp_path / "one")
    assert len(one_losses) == 2
    assert logged_losses(tmp_path / "two") == pytest.approx(one_losses, abs=1e-4)
    exits = {p.name: p.read_text() for p in probe.glob("rank*")}
    assert exits == {"rank0": "closed", "rank1": "closed"}
