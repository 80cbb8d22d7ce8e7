"""`recipes demo`: fine-tune real checkpoints on real data, offline, with all three recipes.

Fetches the assets (`recipes assets`) into the cache, runs each DEMO row's config (`configs/...`)
as a subprocess, and tables the main metric before and after fine-tuning in summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune real checkpoints on real data offline, all three recipes")
    p.add_argument("--output", default="outputs/demo", help="folder for the runs and summary.json")
    p.add_argument("--cache", help="asset cache (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    cache = assets.cache_dir(args.cache).resolve()
    print(f"preparing offline assets in {cache} ...", flush=True)
    assets.prepare_all(cache)
    env = {**os.environ, "RECIPES_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    summary = []
    for name, recipe, config, metrics, model, data in DEMO:
        run_dir = out / name
        print(f"\n=== {name}: {model} on {data} -> {run_dir}", flush=True)
        run_py = find_recipe(recipe) / "run.py"
        cmd = [sys.executable, str(run_py), "--config", f"configs/{config}", "--output_dir", str(run_dir)]
        cmd += ["--overwrite_output_dir", "true"]
        if subprocess.run(cmd, env=env).returncode != 0:
            raise RecipeError(f"the {name} demo failed; its output is above and in {run_dir}")
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
    out.mkdir(parents=True, exist_ok=True)
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


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
