"""`recipes demo`: fine-tune real checkpoints on real data, offline, with all three recipes.

Fetches the assets (`recipes assets`) into the cache, runs each DEMO row's config (`configs/...`)
as a subprocess, and tables the main metric before and after fine-tuning in summary.json.
Runs go `--jobs` at a time (default 2), the cores shared out between them: on 2 cores, two
1-thread runs side by side finish sooner than the same runs one after another with 2 threads,
as much of each run (loading, tokenising, generating, the loop itself) keeps only one core busy.
Each run's output goes to `<output>/logs/<run>.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recipes_lib.commands import assets
from recipes_lib.commands.list_recipes import aligned_table
from recipes_lib.commands.locate import find_recipe
from recipes_lib.errors import RecipeError

# run name (its folder), recipe, its config in configs/, the metrics in all_results.json each with
# the same metric before fine-tuning, model and data shown
DEMO = [
    (
        "bert_cls",
        "bert_cls",
        "demo.yaml",
        [("eval_f1", "eval_f1_before")],
        "all-MiniLM-L6-v2",
        "tweets sentiment (3 classes)",
    ),
    (
        "gpt_clm",
        "gpt_clm",
        "demo.yaml",
        [("perplexity", "perplexity_before")],
        "SmolLM2-135M + LoRA",
        "Shakespeare",
    ),
    (
        "gpt_clm_sft",
        "gpt_clm",
        "sft_tweets.yaml",
        [("eval_accuracy", "eval_accuracy_before"), ("eval_f1", "eval_f1_before")],
        "SmolLM2-135M-Instruct + LoRA",
        "tweets sentiment as chat (SFT)",
    ),
    (
        "resnet_img",
        "resnet_img",
        "demo.yaml",
        [("eval_accuracy", "eval_accuracy_before")],
        "ResNet (from scratch)",
        "digits 32x32",
    ),
]


LONGEST_FIRST = ["gpt_clm_sft", "bert_cls", "gpt_clm", "resnet_img"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune real checkpoints on real data offline, all three recipes")
    p.add_argument("--output", default="outputs/demo", help="folder for the runs and summary.json")
    p.add_argument("--cache", help="asset cache (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, sharing the cores (default 2)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    cache = assets.cache_dir(args.cache).resolve()
    print(f"preparing offline assets in {cache} ...", flush=True)
    assets.prepare_all(cache)
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "RECIPES_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def train(row: tuple) -> None:
        name, recipe, config, _, model, data = row
        run_dir, log = out / name, logs / f"{name}.log"
        run_py = find_recipe(recipe) / "run.py"
        cmd = [sys.executable, str(run_py), "--config", f"configs/{config}", "--output_dir", str(run_dir)]
        cmd += ["--overwrite_output_dir", "true", "--disable_tqdm", "true"]
        say(f"=== {name}: {model} on {data} -> {run_dir} (log: {log})")
        start = time.perf_counter()
        with open(log, "w") as f:
            code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        if code != 0:
            say("\n".join(log.read_text(errors="replace").splitlines()[-15:]))  # the end of its log
            raise RecipeError(f"the {name} demo failed (exit {code}); its output is in {log}")
        say(f"=== {name} done in {time.perf_counter() - start:.0f} s")

    # The longest runs first, so the last one to start is a short one.
    order = sorted(DEMO, key=lambda row: LONGEST_FIRST.index(row[0]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for finished in [pool.submit(train, row) for row in order]:
            finished.result()  # a failed run's RecipeError, here
    summary = []
    for name, _, _, metrics, model, data in DEMO:
        run_dir = out / name
        results = json.loads((run_dir / "all_results.json").read_text())
        for metric, before_key in metrics:
            summary.append(
                {
                    "recipe": name,
                    "model": model,
                    "data": data,
                    "metric": metric,
                    "before": results.get(before_key),
                    "after": results.get(metric),
                    "train_seconds": results.get("train_runtime"),
                    "samples_per_second": results.get("train_samples_per_second"),
                    "output_dir": str(run_dir),
                }
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = [("recipe", "model", "data", "metric", "before", "after", "train s", "samples/s", "output")]
    for s in summary:
        numbers = (
            _num(s["before"]),
            _num(s["after"]),
            _num(s["train_seconds"], 1),
            _num(s["samples_per_second"], 1),
        )
        rows.append((s["recipe"], s["model"], s["data"], s["metric"], *numbers, s["output_dir"]))
    print("\n" + aligned_table(rows))
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


def say(line: str) -> None:
    """One whole line at once: runs finish in parallel threads."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
