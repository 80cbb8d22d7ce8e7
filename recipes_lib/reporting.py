"""What a finished run leaves for people: plots, run facts, and tables beside baselines.

`plot_training_curves` and `write_confusion_matrix` draw PNGs in `output_dir`;
`run_facts` records which recipe, config and hardware produced a run; `report_rows` reads
run folders back and compares their metric with the config's `expected:` block.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RUN_FACTS = "run_info.json"
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "error")


def lower_is_better(metric: str) -> bool:
    """True for losses, perplexity, MSE and error rates."""
    return any(word in metric for word in LOWER_IS_BETTER)


def metric_key(name: str) -> str:
    """The key of a metric in all_results.json: `accuracy` -> `eval_accuracy`; `eval_*` and the
    derived `perplexity*` keys stay as they are."""
    return name if name.startswith(("eval_", "perplexity")) else f"eval_{name}"


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported lazily and headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def hardware_description() -> str:
    """e.g. '1x NVIDIA H200' or 'CPU: AMD EPYC 9654 (2 cores)'."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores)"


def run_facts(recipe: str | None, config_file: str | None, world_size: int) -> dict[str, Any]:
    """Which recipe, config, hardware and library versions produced a run."""
    import torch
    import transformers

    return {
        "recipe": recipe,
        "config_file": config_file,
        "hardware": hardware_description(),
        "world_size": world_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and every logged eval metric over steps, one panel each, as a PNG."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    eval_keys = sorted(
        {
            k
            for e in log_history
            for k in e
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
        }
    )
    panels = ([("train loss", train)] if train else []) + [
        (key, [(e["step"], e[key]) for e in log_history if key in e and "step" in e]) for key in eval_keys
    ]
    panels = [(name, points) for name, points in panels if points]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, panels, strict=False):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_confusion_matrix(
    output_dir: Path, references: Iterable[int], predictions: Iterable[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """`confusion_matrix.json` (rows = true class, columns = predicted) and a PNG of it."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(list(references), list(predictions), labels=list(range(len(label_names))))
    result = {"labels": list(label_names), "matrix": matrix.tolist()}
    (output_dir / "confusion_matrix.json").write_text(json.dumps(result, indent=1))
    plt = _pyplot()
    size = min(12, 2 + 0.5 * len(label_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=45, ha="right")
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(label_names) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(output_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    return result


# ---- reading runs back: `recipes report`

REPORT_COLUMNS = ["recipe", "config", "model", "dataset", "metric", "value", "expected", "delta", "within",
                  "runtime_s", "samples_per_s", "hardware", "run_dir"]  # fmt: skip


def _main_metric(results: dict[str, Any]) -> str | None:
    for key in ("perplexity", "eval_accuracy", "eval_pearson", "eval_f1", "eval_loss"):
        if key in results:
            return key
    return next((k for k in results if k.startswith("eval_")), None)


def report_row(run_dir: Path) -> dict[str, Any]:
    """One table row for a finished run folder (all_results.json + resolved_config.yaml)."""
    run_dir = Path(run_dir)
    results_path = run_dir / "all_results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (no all_results.json)")
    results = json.loads(results_path.read_text())
    config_path = run_dir / "resolved_config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    facts = json.loads((run_dir / RUN_FACTS).read_text()) if (run_dir / RUN_FACTS).is_file() else {}
    expected = config.get("expected") or {}
    metric = expected.get("metric") or _main_metric(results)
    value = results.get(metric)
    row: dict[str, Any] = {
        "recipe": facts.get("recipe") or "",
        "config": Path(facts["config_file"]).name if facts.get("config_file") else "",
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
        "hardware": facts.get("hardware", ""),
        "run_dir": str(run_dir),
    }
    if value is not None and expected.get("value") is not None:
        delta = float(value) - float(expected["value"])
        tolerance = float(expected.get("tolerance", 0.0))
        row["delta"] = delta
        lower_better = lower_is_better(metric)
        if abs(delta) <= tolerance:
            row["within"] = "yes"
        elif (delta < 0) == lower_better:
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
