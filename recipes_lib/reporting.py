"""What one run leaves for people: curves, confusion matrix, model card, run_info.json.

`plot_training_curves` and `write_confusion_matrix` draw PNGs in `output_dir`;
`write_model_card` adds the final metrics and the configuration to Trainer's model card;
`run_info` records which recipe, config and hardware produced a run. (`recipes report` reads
run folders back: recipes_lib/commands/report.py.)
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recipes_lib.metrics import GENERAL, main_metric, metric_base

if TYPE_CHECKING:  # transformers is imported where it is used: `recipes report` reads RUN_INFO alone
    from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"


def pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported lazily and headless
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


def run_info(recipe: str | None, config_file: str | None, world_size: int) -> dict[str, Any]:
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


def plot_training_curves(
    log_history: Sequence[dict[str, Any]], path: Path, args: TrainingArguments | None = None
) -> Path | None:
    """The losses and the main eval metric over steps, as lines, with the evaluation before
    training (step 0) and the final one marked and labelled. The main metric
    (`metric_for_best_model`, else `recipes_lib.metrics.main_metric`'s) gets its own panel unless it
    is a loss, and the zero-shot benchmark scores (`general_eval`) theirs."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [e for e in log_history if "eval_loss" in e and "step" in e]
    logged = {k for e in log_history for k in e if metric_base(k) != "loss"}
    main = main_metric(logged, getattr(args, "metric_for_best_model", None))
    panels = []
    if train or evals:
        panels.append(
            ("loss", [("train loss", train), ("eval loss", [(e["step"], e["eval_loss"]) for e in evals])])
        )
    if main is not None:
        panels.append(
            (main, [(main, [(e["step"], e[main]) for e in log_history if main in e and "step" in e])])
        )
    general = sorted({k for e in log_history for k in e if k.startswith(GENERAL)})
    if general:  # zero-shot benchmark scores (general_eval): before and after training
        points = {k: [(e["step"], e[k]) for e in log_history if k in e and "step" in e] for k in general}
        panels.append(("general ability (zero-shot accuracy)", [(k, points[k]) for k in general]))
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels, strict=True):
        for label, points in lines:
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(
                steps, values, marker="o" if len(points) < 30 and label != "train loss" else None, label=label
            )
            if label != "train loss":
                _mark_before_and_after(ax, points)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mark_before_and_after(ax: Any, points: list[tuple[int, float]]) -> None:
    marks = []
    if points[0][0] == 0:
        marks.append(("before", points[0]))
    if len(points) > 1 or not marks:
        marks.append(("after", points[-1]))
    for name, (step, value) in marks:
        ax.scatter([step], [value], s=80, zorder=3, edgecolors="black")
        ax.annotate(f"{name}: {value:.4g}", (step, value), textcoords="offset points", xytext=(6, 6))


def write_model_card(
    trainer: Trainer, metrics: dict[str, Any], card: dict[str, Any], resolved_config: Path
) -> None:
    """Trainer's model card (README.md) plus the final metrics and the resolved configuration."""
    from transformers import Trainer

    out = Path(trainer.args.output_dir)
    try:  # transformers' own card, also for TRL's trainers (whose override takes other arguments)
        Trainer.create_model_card(trainer, **card)
    except Exception as err:  # the card is a nicety; offline Hub lookups must not fail the run
        logger.warning("model card not written: %s", err)
        return
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    config = resolved_config.read_text(encoding="utf-8") if resolved_config.is_file() else ""
    with open(out / "README.md", "a", encoding="utf-8") as readme:
        readme.write(f"\n## Final metrics\n\n| metric | value |\n|---|---|\n{rows}\n")
        readme.write(f"\n## Configuration\n\nRepeat this run with `--config {resolved_config.name}`:\n\n")
        readme.write(f"```yaml\n{config}```\n")


def write_confusion_matrix(
    output_dir: Path, references: Iterable[int], predictions: Iterable[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """`confusion_matrix.json` (rows = true class, columns = predicted) and a PNG of it."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(list(references), list(predictions), labels=list(range(len(label_names))))
    result = {"labels": list(label_names), "matrix": matrix.tolist()}
    (output_dir / "confusion_matrix.json").write_text(json.dumps(result, indent=1))
    plt = pyplot()
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
