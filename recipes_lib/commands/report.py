"""`recipes report RUN_DIR...`: finished runs in a table beside their expected (paper) numbers.

Each row is read back from a run folder: `all_results.json`, `resolved_config.yaml` (whose
`expected:` block holds the baseline) and `run_info.json` (recipe, config file, hardware). A row's
metric is the config's `expected.metric`, else the run's main metric by `recipes_lib.metrics`'
rule (`metric_for_best_model`, else the first of accuracy, Pearson, ..., perplexity it reports).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
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
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    try:
        rows = report_rows(args.run_dirs)
    except FileNotFoundError as err:
        raise RecipeError(str(err)) from err
    text = format_csv(rows) if args.format == "csv" else format_markdown(rows)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def report_row(run_dir: Path) -> dict[str, Any]:
    """One table row for a finished run folder (all_results.json + resolved_config.yaml)."""
    run_dir = Path(run_dir)
    results_path = run_dir / "all_results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (no all_results.json)")
    results = json.loads(results_path.read_text())
    config_path = run_dir / "resolved_config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    info = json.loads((run_dir / RUN_INFO).read_text()) if (run_dir / RUN_INFO).is_file() else {}
    expected = config.get("expected") or {}
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
        or config.get("train_file")
        or config.get("train_dir")
        or "",
        "metric": metric or "",
        "value": value,
        "expected": expected.get("value"),
        "delta": None,
        "within": "",
        "runtime_s": results.get("train_runtime"),
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
    return [report_row(Path(d)) for d in run_dirs]


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
