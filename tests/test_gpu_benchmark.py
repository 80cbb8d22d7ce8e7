"""benchmarks/gpu_throughput.py --smoke: the GPU benchmark runs end to end on the CPU, through the
recipes' own Trainers (bert_cls, gpt_clm) and a raw loop on the same batches. Checks the script and
what it records, never a GPU figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

# What the recipes build (recipes/bert_cls/run.py, recipes/gpt_clm/run.py, recipes_lib/sampling.py):
# bert_cls: group_by_length batches from LengthBucketSampler through LengthBucketTrainer, dynamic
# padding; gpt_clm: a plain Trainer's random batches of packed blocks, all block_size long, stacked
# by default_data_collator; both with the NaN guard and peak-memory callbacks.
RECIPE_PATH = {
    "bert": {
        "recipe": "bert_cls",
        "collator": "DataCollatorWithPadding",
        "trainer": "LengthBucketTrainer",
        "sampler": "LengthBucketSampler",
        "train_sampling_strategy": "group_by_length",
    },
    "gpt": {
        "recipe": "gpt_clm",
        "collator": "default_data_collator",
        "trainer": "Trainer",
        "sampler": "SeedableRandomSampler",
        "train_sampling_strategy": "random",
    },
}


def test_gpu_benchmark_smoke_trains_through_the_recipes(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("OUT", None)
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    data = json.loads(out.read_text())
    assert "| model | loop |" in result.stdout  # the markdown table

    assert set(data["runs"]) == {"bert", "gpt"}
    for kind, expected in RECIPE_PATH.items():
        runs = data["runs"][kind]
        for loop in ("recipe", "raw"):
            run = runs[loop]
            assert run["timed_steps"] == 3, (kind, loop)
            assert run["tokens_per_second"] > 0, (kind, loop)
            assert run["processed_tokens_per_second"] >= run["tokens_per_second"], (kind, loop)
            assert 0 < run["padding_efficiency"] <= 1, (kind, loop)
            assert run["mfu"] > 0 and run["mfu_6n"] > 0, (kind, loop)
        assert runs["recipe_vs_raw"] > 0
        assert data["recipe_vs_raw"][kind] == runs["recipe_vs_raw"]
        # Both loops trained on the same batches: the same samples and tokens per step.
        assert runs["recipe"]["batch"] == runs["raw"]["batch"]
        assert runs["recipe"]["seq_mean"] == runs["raw"]["seq_mean"]

        path = runs["recipe_path"]
        for key in ("recipe", "trainer", "sampler", "collator", "train_sampling_strategy"):
            assert path[key] == expected[key], (kind, key)
        assert {"NonFiniteLossGuard", "PeakMemory"} <= set(path["callbacks"])
        assert path["optimizer_fused"] is True

    # bert_cls pads per batch and groups lengths: the synthetic texts vary, so some padding is left;
    # gpt_clm's packed blocks have none.
    assert data["runs"]["bert"]["recipe"]["padding_efficiency"] < 1
    assert data["runs"]["gpt"]["recipe"]["padding_efficiency"] == 1
