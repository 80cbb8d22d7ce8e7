"""`recipes report RUN_DIR...`: finished runs in a table beside their expected (paper) numbers.

Each row is read back from a run folder: `all_results.json`, `resolved_config.yaml` (whose
`expected:` block holds the baseline) and `run_info.json` (recipe, config file, hardware). A row's
metric is the config's `expected.metric`, else the run's main metric by `recipes_lib.metrics`'
rule (`metric_for_best_model`, else the first of accuracy, Pearson, ..., perplexity it reports).

`recipes report --glue RUN_DIR...` prints the papers' GLUE table instead: one row per model, one
column per GLUE task in GLUE's metric for it (x100), and their average, beside the published rows
that the runs' configs carry (`expected.value` for `expected.model`, and `expected.published`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from recipes_lib.errors import RecipeError
from recipes_lib.metrics import greater_is_better, main_metric, metric_key
from recipes_lib.reporting import RUN_INFO

REPORT_COLUMNS = [
    "recipe",
    "config",
    "model",
    "dataset",
    "metric",
    "value",
    "expected",
    "delta",
    "within",
    "runtime_s",
    "samples_per_s",
    "hardware",
    "run_dir",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="table of finished runs beside their expected (paper) numbers")
    p.add_argument("run_dirs", nargs="+", help="output_dir folders of finished runs")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.add_argument("--output", help="write the table to this file instead of stdout")
    p.add_argument(
        "--glue",
        action="store_true",
        help="the papers' GLUE table: a row per model, a column per task (its GLUE metric), the average",
    )
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    try:
        rows = report_rows(args.run_dirs)
    except FileNotFoundError as err:
        raise RecipeError(str(err)) from err
    if args.glue:
        rows, columns = glue_table(args.run_dirs)
        text = format_csv(rows, columns) if args.format == "csv" else format_markdown(rows, columns)
    else:
        text = format_csv(rows) if args.format == "csv" else format_markdown(rows)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def report_row(run_dir: Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """One table row for a finished run folder (all_results.json + resolved_config.yaml), beside
    `expected` (default: the config's `expected` block)."""
    run_dir = Path(run_dir)
    results_path = run_dir / "all_results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (no all_results.json)")
    results = json.loads(results_path.read_text())
    config_path = run_dir / "resolved_config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    info = json.loads((run_dir / RUN_INFO).read_text()) if (run_dir / RUN_INFO).is_file() else {}
    expected = (config.get("expected") or {}) if expected is None else expected
    if expected.get("metric"):  # the baseline's metric, even when the run lacks it (an empty value)
        metric = metric_key(str(expected["metric"]))
    else:
        metric = main_metric(results, config.get("metric_for_best_model"))
    value = results.get(metric)
    row: dict[str, Any] = {
        "recipe": info.get("recipe") or "",
        "config": Path(info["config_file"]).name if info.get("config_file") else "",
        "model": config.get("model_name_or_path", ""),
        "dataset": "/".join(str(config[k]) for k in ("dataset_name", "dataset_config_name") if config.get(k))
        or (f"GLUE {config['glue_task']}" if config.get("glue_task") else None)
        or config.get("train_file")
        or config.get("train_dir")
        or ", ".join(config.get("general_eval") or [])  # a zero-shot run's benchmarks
        or "",
        "metric": metric or "",
        "value": value,
        "expected": expected.get("value"),
        "delta": None,
        "within": "",
        "runtime_s": results.get("train_runtime", results.get("general_runtime")),
        "samples_per_s": results.get("train_samples_per_second"),
        "hardware": info.get("hardware", ""),
        "run_dir": str(run_dir),
    }
    if value is not None and expected.get("value") is not None:
        delta = float(value) - float(expected["value"])
        tolerance = float(expected.get("tolerance", 0.0))
        row["delta"] = delta
        if abs(delta) <= tolerance:
            row["within"] = "yes"
        elif (delta > 0) == greater_is_better(metric):
            row["within"] = "better"
        else:
            row["within"] = "no"
    return row


def report_rows(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """A row per run, or per entry of its config's `expected` when that is a list (a zero-shot
    run's several benchmarks: `recipes zero-shot`)."""
    rows = []
    for run_dir in map(Path, run_dirs):
        config_path = run_dir / "resolved_config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        expected = config.get("expected") if isinstance(config, dict) else None
        if isinstance(expected, list):
            rows += [report_row(run_dir, entry) for entry in expected]
        else:
            rows.append(report_row(run_dir))
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:+.4g}" if column == "delta" else f"{value:.4g}"
    return str(value)


def format_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row[c]).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = REPORT_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def glue_table(run_dirs: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The papers' GLUE table from finished runs: a row per model (the median of its runs on a
    task, as the papers report medians of seeds), a column per task in GLUE's metric for it, x100,
    and the average of the tasks shown; then the published rows from the runs' `expected` blocks,
    averaged over the same tasks. A run's task is its `glue_task` (or the Hub's glue config)."""
    from recipes_lib.data import GLUE_TASKS  # imports datasets: only for this table

    names = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP"}
    names |= {"mnli": "MNLI-m", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
    runs: dict[str, dict[str, list[float]]] = {}
    published: dict[str, dict[str, float]] = {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        config_path = run_dir / "resolved_config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        task = config.get("glue_task")
        if task is None and str(config.get("dataset_name", "")).endswith("glue"):
            task = config.get("dataset_config_name")
        if task not in GLUE_TASKS:
            raise RecipeError(f"{run_dir} is not a GLUE run (no glue_task, no glue dataset_config_name)")
        results = json.loads((run_dir / "all_results.json").read_text())
        value = results.get(metric_key(GLUE_TASKS[task].metric))
        if value is not None:
            runs.setdefault(str(config.get("model_name_or_path", "")), {}).setdefault(task, []).append(
                100 * value
            )
        expected = config.get("expected") or {}
        if (
            expected.get("metric") == metric_key(GLUE_TASKS[task].metric)
            and expected.get("value") is not None
        ):
            published.setdefault(f"{expected.get('model', 'expected')} (published)", {})[task] = (
                100 * expected["value"]
            )
        for model, number in (expected.get("published") or {}).items():
            published.setdefault(f"{model} (published)", {})[task] = 100 * float(number)
    tasks = [t for t in GLUE_TASKS if any(t in scores for scores in runs.values())]
    columns = ["model", *[names[t] for t in tasks], "average"]
    rows = []
    medians = {model: {t: statistics.median(v) for t, v in s.items()} for model, s in runs.items()}
    for model, scores in [*medians.items(), *published.items()]:
        row: dict[str, Any] = {"model": model, **{names[t]: scores.get(t) for t in tasks}}
        shown = [scores[t] for t in tasks if t in scores]
        row["average"] = sum(shown) / len(shown) if len(shown) == len(tasks) else None
        rows.append(row)
    return rows, columns
