"""`recipes study RECIPE`: the same recipe, data and seed under several fine-tuning strategies.

    recipes study bert_cls --config configs/demo.yaml --strategies full,lora,freeze,scratch

Each strategy is one run of the recipe (a subprocess, in `OUTPUT/<strategy>`) with the
config plus that strategy's keys. A learning rate that suits full fine-tuning is too low for
LoRA adapters (few weights, starting at zero) or a frozen backbone (a linear probe), so each
strategy gets its own by a fixed rule, a multiple of the config's `learning_rate` (or of
`--learning_rate` given to the study):

    full 1x, lora 10x, freeze 100x, scratch 1x

A config's `study:` block (ignored by training) overrides any strategy's keys, the learning
rate included:

    study:
      lora: {learning_rate: 1.0e-3}
      freeze: {learning_rate: 1.0e-2}

The strategies are ranked by the recipe's main metric: `--metric`, else the config's
`expected.metric`, else the first finished run's main metric by `recipes_lib.metrics.main_metric`
(the `metric_for_best_model` its resolved_config.yaml records, else the first of accuracy,
Pearson, ..., perplexity in its all_results.json), best first by `greater_is_better`. The table
(metric, learning rate, trainable parameters, peak memory, time) is read back from each run and
written to `OUTPUT/study.json`; `OUTPUT/study_curves.png` plots the metric of every strategy over
training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from recipes_lib.commands.locate import find_recipe
from recipes_lib.errors import ConfigError
from recipes_lib.metrics import greater_is_better, main_metric, metric_key
from recipes_lib.reporting import pyplot

# recipes_lib.config and transformers are imported in the functions that use them, so that
# `recipes --help` does not load them.

# The keys each strategy sets; every other strategy key the config sets is reset, so a config with
# use_lora: true still gives a full fine-tune in the `full` row.
STRATEGIES: dict[str, dict[str, bool]] = {
    "full": {},
    "lora": {"use_lora": True},
    "freeze": {"freeze_backbone": True},
    "scratch": {"from_scratch": True},
}
RESET = {"use_lora": False, "merge_lora": False, "freeze_backbone": False, "from_scratch": False}
# Each strategy's learning rate as a multiple of the config's, unless its study block sets one.
LEARNING_RATE_SCALE = {"full": 1, "lora": 10, "freeze": 100, "scratch": 1}
STUDY_JSON, STUDY_PNG = "study.json", "study_curves.png"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="one recipe under several strategies (full, lora, freeze, scratch), side by side",
        epilog="Other --key value options go to every run, e.g. --max_train_samples 500.",
    )
    p.add_argument("recipe", help="recipe name (see `recipes list`) or a recipe folder")
    p.add_argument("--config", help="the recipe's YAML (default: its config.yaml)")
    p.add_argument(
        "--strategies",
        default="full,lora,freeze,scratch",
        help=f"comma-separated: {', '.join(STRATEGIES)}",
    )
    p.add_argument(
        "--output", help="folder for the runs, study.json and the curves (default: outputs/study/RECIPE)"
    )
    p.add_argument(
        "--metric",
        help="metric to compare (default: the config's expected metric, else metric_for_best_model, "
        "else the first of accuracy, pearson, ..., f1, perplexity, loss the runs report)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="rerun strategies whose folders hold finished runs"
    )
    p.set_defaults(fn=run, takes_overrides=True)


def run(args: argparse.Namespace) -> int:
    from recipes_lib.config import find_config

    recipe = find_recipe(args.recipe)
    config = find_config(args.config, recipe / "config.yaml").resolve()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    out = Path(args.output or f"outputs/study/{recipe.name}")
    rows = run_study(recipe / "run.py", config, strategies, out, args.metric, args.overrides, args.overwrite)
    print(f"\n{recipe.name} with {config.name}, seed and data shared by every strategy:\n")
    print(format_table(rows))
    print(f"study: {out / STUDY_JSON}\ncurves: {out / STUDY_PNG}")
    return 1 if any("error" in row for row in rows) else 0


def base_learning_rate(config: dict[str, Any]) -> float:
    """The config's learning_rate (read as the recipe reads it), else TrainingArguments' default."""
    from transformers import TrainingArguments

    from recipes_lib.config import convert

    value = config.get("learning_rate", TrainingArguments.__dataclass_fields__["learning_rate"].default)
    return convert("learning_rate", value, float)  # PyYAML reads 1e-4 (no dot) as a string


def learning_rate_rule(name: str, config: dict[str, Any], base_lr: float | None = None) -> tuple[Any, str]:
    """(learning rate, where it comes from) for strategy `name`: its study block, else the rule."""
    block = (config.get("study") or {}).get(name) or {}
    if isinstance(block, dict) and "learning_rate" in block:
        return block["learning_rate"], f"study.{name}"
    base = base_lr if base_lr is not None else base_learning_rate(config)
    scale = LEARNING_RATE_SCALE[name]
    return float(f"{scale * base:.6g}"), f"{scale}x learning_rate"  # 1e-3, not 0.0010000000000000002


def strategy_argv(name: str, config: dict[str, Any], base_lr: float | None = None) -> list[str]:
    """Command-line overrides for one strategy: its keys and learning rate (by the rule, from
    `base_lr` or the config's learning_rate), then the config's `study.<name>` block."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    # Only the keys the config sets need resetting (the rest are off by default), and a recipe
    # without one of them (recipes/sft has no from_scratch) takes no flag for it.
    reset = {key: value for key, value in RESET.items() if key in config}
    overrides: dict[str, Any] = {**reset, **STRATEGIES[name]}
    block = (config.get("study") or {}).get(name) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"study.{name}: must be a mapping of key: value, got {block!r}")
    overrides["learning_rate"], _ = learning_rate_rule(name, config, base_lr)
    overrides.update(block)
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def pop_learning_rate(extra_args: Sequence[str]) -> tuple[float | None, list[str]]:
    """`--learning_rate X` taken out of the options for every run: it is the base the
    strategies' learning rates are scaled from, not one rate for all of them."""
    rest, base = [], None
    args = list(extra_args)
    i = 0
    while i < len(args):
        if args[i] == "--learning_rate" and i + 1 < len(args):
            base = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--learning_rate="):
            base = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    if base is None:
        return None, rest
    from recipes_lib.config import convert

    return convert("--learning_rate", base, float), rest


def run_study(
    run_py: Path,
    config_path: Path,
    strategies: Sequence[str],
    output: Path,
    metric: str | None = None,
    extra_args: Sequence[str] = (),
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run each strategy and return one row per strategy; a failed run gets an `error` entry."""
    from recipes_lib.config import load_yaml

    config = load_yaml(config_path)
    base_lr, extra_args = pop_learning_rate(extra_args)
    # Every strategy's keys are checked before anything runs.
    argvs = {name: strategy_argv(name, config, base_lr) for name in strategies}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = []
    for name, argv in argvs.items():
        out = output / name
        print(f"\n=== {name}: {run_py.parent.name} -> {out}", flush=True)
        cmd = [sys.executable, str(run_py), "--config", str(config_path), "--output_dir", str(out), *argv]
        cmd += [*extra_args, *(["--overwrite_output_dir", "true"] if overwrite else [])]
        runs.append((name, out, subprocess.run(cmd, env=env).returncode))
    metric = study_metric(config, metric, [out for _, out, code in runs if code == 0])
    rows = []
    for name, out, code in runs:
        row = study_row(name, out, metric, code)
        row["learning_rate_from"] = learning_rate_rule(name, config, base_lr)[1]
        rows.append(row)
    rank_rows(rows, metric)
    output.mkdir(parents=True, exist_ok=True)
    (output / STUDY_JSON).write_text(json.dumps(rows, indent=1))
    plot_study_curves(rows, metric, output / STUDY_PNG)
    return rows


def study_metric(config: dict[str, Any], metric: str | None = None, run_dirs: Sequence[Path] = ()) -> str:
    """The metric compared: --metric, else the config's expected metric, else the main metric of the
    first finished run (its recorded metric_for_best_model, else recipes_lib.metrics' order)."""
    name = metric or (config.get("expected") or {}).get("metric")
    if name:
        return metric_key(str(name))
    for out in run_dirs:
        resolved, results = out / "resolved_config.yaml", out / "all_results.json"
        if not results.is_file():
            continue
        recorded = (yaml.safe_load(resolved.read_text()) if resolved.is_file() else None) or {}
        found = main_metric(json.loads(results.read_text()), recorded.get("metric_for_best_model"))
        if found:
            return found
    return "eval_loss"


def study_row(name: str, out: Path, metric: str, exit_code: int = 0) -> dict[str, Any]:
    """One strategy's row, read back from its run's all_results.json and resolved_config.yaml."""
    row: dict[str, Any] = {"strategy": name, "metric": metric, "output_dir": str(out)}
    results_file = out / "all_results.json"
    if exit_code != 0 or not results_file.is_file():
        return {**row, "error": f"the run failed (exit code {exit_code}); its output is above"}
    results = json.loads(results_file.read_text())
    if metric not in results:
        shown = ", ".join(
            k for k in results if k.startswith("eval_") and not k.endswith(("_runtime", "_second"))
        )
        return {**row, "error": f"{metric} is not in {results_file} ({shown})"}
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text()) or {}
    keys = ("trainable_params", "total_params", "peak_memory_mb", "train_runtime")
    return {
        **row,
        "value": results[metric],
        "learning_rate": resolved.get("learning_rate"),
        **{k: results.get(k) for k in keys},
    }


def rank_rows(rows: list[dict[str, Any]], metric: str) -> None:
    """Give each finished row its `rank` by `metric`: 1 is best (lowest for losses), ties share one."""
    sign = 1 if greater_is_better(metric) else -1
    values = [sign * r["value"] for r in rows if "error" not in r]
    for row in rows:
        if "error" not in row:
            row["rank"] = 1 + sum(v > sign * row["value"] for v in values)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the study."""
    lines = [
        "| strategy | metric | value | rank | learning rate | trainable params | total params | "
        "trainable % | peak MB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | {r['metric']} | failed: {r['error']} | | | | | | | |")
            continue
        share = 100 * r["trainable_params"] / r["total_params"] if r.get("total_params") else float("nan")
        lr = "" if r.get("learning_rate") is None else f"{float(r['learning_rate']):.3g}"
        lr += f" ({r['learning_rate_from']})"
        lines.append(
            f"| {r['strategy']} | {r['metric']} | {r['value']:.4f} | {r['rank']} | {lr} | "
            f"{r['trainable_params']:,} | "
            f"{r['total_params']:,} | {share:.2f} | {r['peak_memory_mb']:.0f} | {r['train_runtime']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_study_curves(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """The eval metric over training (by epoch) for each strategy, in one PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        if "error" in row:
            continue
        out = Path(row["output_dir"])
        history = json.loads((out / "trainer_state.json").read_text()).get("log_history", [])
        points = [(e.get("epoch", 0.0), e[metric]) for e in history if metric in e]
        final_epoch = max((e.get("epoch", 0.0) for e in history), default=0.0)
        if not points or points[-1][0] < final_epoch:
            points.append((final_epoch, row["value"]))  # the final evaluation after training
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=row["strategy"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by strategy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
