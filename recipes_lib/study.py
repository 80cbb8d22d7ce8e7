"""`recipes study`: the same recipe, data and seed under several fine-tuning strategies.

    recipes study bert_cls --config configs/demo.yaml --strategies full,lora,freeze,scratch

Each strategy is one run of the recipe (a subprocess, in `OUTPUT/<strategy>`) with the
config plus that strategy's keys. Learning rates that suit full fine-tuning are usually too
low for LoRA or a frozen backbone, so the config may carry a `study:` block of per-strategy
overrides, ignored by training:

    study:
      lora: {learning_rate: 1.0e-3}
      freeze: {learning_rate: 1.0e-2}

The table (metric, trainable parameters, peak memory, time) is read back from each run's
`all_results.json` and written to `OUTPUT/study.json`; `OUTPUT/study_curves.png` plots the
eval metric of every strategy over training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipes_lib.config import load_yaml
from recipes_lib.errors import ConfigError
from recipes_lib.reporting import _pyplot, metric_key

# The keys each strategy sets; every other strategy key is reset, so a config with
# use_lora: true still gives a full fine-tune in the `full` row.
STRATEGIES: dict[str, dict[str, bool]] = {
    "full": {},
    "lora": {"use_lora": True},
    "freeze": {"freeze_backbone": True},
    "scratch": {"from_scratch": True},
}
RESET = {"use_lora": False, "merge_lora": False, "freeze_backbone": False, "from_scratch": False}
STUDY_JSON, STUDY_PNG = "study.json", "study_curves.png"


def study_metric(config: dict[str, Any], metric: str | None = None) -> str:
    """The metric compared: --metric, else the config's expected metric, metric_for_best_model, eval_loss."""
    name = metric or (config.get("expected") or {}).get("metric") or config.get("metric_for_best_model")
    return metric_key(str(name or "loss"))


def strategy_argv(name: str, config: dict[str, Any]) -> list[str]:
    """Command-line overrides for one strategy: its keys, then the config's `study.<name>` block."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    overrides: dict[str, Any] = {**RESET, **STRATEGIES[name]}
    block = (config.get("study") or {}).get(name) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"study.{name}: must be a mapping of key: value, got {block!r}")
    overrides.update(block)
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


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
    config = load_yaml(config_path)
    metric = study_metric(config, metric)
    argvs = {name: strategy_argv(name, config) for name in strategies}  # all checked before any run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows = []
    for name, argv in argvs.items():
        out = output / name
        print(f"\n=== {name}: {run_py.parent.name} -> {out}", flush=True)  # noqa: T201 - progress
        cmd = [sys.executable, str(run_py), "--config", str(config_path), "--output_dir", str(out), *argv,
               *extra_args, *(["--overwrite_output_dir", "true"] if overwrite else [])]  # fmt: skip
        code = subprocess.run(cmd, env=env).returncode
        rows.append(study_row(name, out, metric, code))
    output.mkdir(parents=True, exist_ok=True)
    (output / STUDY_JSON).write_text(json.dumps(rows, indent=1))
    plot_study_curves(rows, metric, output / STUDY_PNG)
    return rows


def study_row(name: str, out: Path, metric: str, exit_code: int = 0) -> dict[str, Any]:
    """One strategy's row, read back from its run's all_results.json."""
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
    keys = ("trainable_params", "total_params", "peak_memory_mb", "train_runtime")
    return {**row, "value": results[metric], **{k: results.get(k) for k in keys}}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the study."""
    lines = [
        "| strategy | metric | value | trainable params | total params | trainable % | peak MB | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['strategy']} | {r['metric']} | failed: {r['error']} | | | | | |")
            continue
        share = 100 * r["trainable_params"] / r["total_params"] if r.get("total_params") else float("nan")
        lines.append(
            f"| {r['strategy']} | {r['metric']} | {r['value']:.4f} | {r['trainable_params']:,} | "
            f"{r['total_params']:,} | {share:.2f} | {r['peak_memory_mb']:.0f} | {r['train_runtime']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_study_curves(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """The eval metric over training (by epoch) for each strategy, in one PNG."""
    plt = _pyplot()
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
