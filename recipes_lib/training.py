"""Running a `transformers.Trainer` the same way in every recipe.

`prepare_output_dir` guards the output folder (resume a checkpoint of the same run, never
clobber a finished or different run) and records the resolved config; `train_and_evaluate`
trains, saves the model, evaluates, and writes the HF-convention results files plus
per-example predictions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import transformers
import yaml
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from recipes_lib.config import RunArguments, resolved_config
from recipes_lib.errors import OutputDirError

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "resolved_config.yaml"
PREDICTIONS = "eval_predictions.jsonl"


def setup_logging(training_args: TrainingArguments) -> None:
    """INFO logs on the main process, warnings only on the others (as the HF examples do)."""
    level = training_args.get_process_log_level()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level
    )
    logging.getLogger("recipes_lib").setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)


def prepare_output_dir(training_args: TrainingArguments, run_args: RunArguments, *parsed: Any) -> str | None:
    """Check `output_dir`, write the resolved config there, and return a checkpoint to resume.

    `parsed` is every dataclass parse_config returned. A folder holding a checkpoint of the
    same configuration resumes from its last checkpoint; one holding a finished run, a run of
    another configuration, or files that are not a run raises OutputDirError unless
    `overwrite_output_dir` is set.
    """
    out = Path(training_args.output_dir)
    config = resolved_config(*parsed)
    comparable = {k: v for k, v in config.items() if k not in ("overwrite_output_dir", "expected")}
    last_checkpoint = None
    if out.is_dir() and any(out.iterdir()):
        previous_path = out / RESOLVED_CONFIG
        if run_args.overwrite_output_dir:
            if training_args.should_save:
                for checkpoint in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                    shutil.rmtree(checkpoint, ignore_errors=True)
        elif not previous_path.is_file():
            raise OutputDirError(
                f"output_dir {out} is not empty and holds no run of this project; "
                "pick another output_dir or pass --overwrite_output_dir"
            )
        else:
            previous = yaml.safe_load(previous_path.read_text(encoding="utf-8")) or {}
            previous = {k: v for k, v in previous.items() if k not in ("overwrite_output_dir", "expected")}
            changed = sorted(
                k for k in set(previous) | set(comparable) if previous.get(k) != comparable.get(k)
            )
            if changed:
                key = changed[0]
                raise OutputDirError(
                    f"output_dir {out} holds another run ({key}: {previous.get(key)!r} there, "
                    f"{comparable.get(key)!r} now); pick another output_dir or pass --overwrite_output_dir"
                )
            if (out / "all_results.json").is_file():
                raise OutputDirError(
                    f"output_dir {out} already holds a finished run of this config; "
                    "pick another output_dir or pass --overwrite_output_dir to train again"
                )
            last_checkpoint = get_last_checkpoint(str(out))
            if last_checkpoint is not None:
                logger.warning("resuming from %s", last_checkpoint)
    if training_args.should_save:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False))
    return last_checkpoint


@contextlib.contextmanager
def _eval_in_dataset_order(trainer: Trainer) -> Iterator[None]:
    # group_by_length also reorders evaluation batches; predictions must line up with examples.
    strategy = trainer.args.train_sampling_strategy
    if strategy == "group_by_length":
        trainer.args.train_sampling_strategy = "random"
    try:
        yield
    finally:
        trainer.args.train_sampling_strategy = strategy


def train_and_evaluate(
    trainer: Trainer,
    resume_from_checkpoint: str | None = None,
    eval_inputs: Dataset | None = None,
    decode_predictions: Callable[[np.ndarray], list[dict[str, Any]]] | None = None,
    extra_metrics: dict[str, float] | None = None,
    model_card: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train (resuming if asked), save model + state, evaluate, and write results.

    Writes `train_results.json`, `eval_results.json`, `all_results.json`, `trainer_state.json`,
    the model with its processing class, a model card and, when `eval_inputs` and
    `decode_predictions` are given, `eval_predictions.jsonl`: one object per eval example
    with its input columns and the decoded prediction. `model_card` is passed to
    `Trainer.create_model_card` (finetuned_from, dataset, tasks, ...). Returns all metrics.
    """
    args = trainer.args
    train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    metrics: dict[str, float] = dict(train_result.metrics)
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)

    if trainer.eval_dataset is not None:
        with _eval_in_dataset_order(trainer):
            output = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
        eval_metrics = dict(output.metrics)
        eval_metrics["eval_samples"] = len(trainer.eval_dataset)
        eval_metrics.update(extra_metrics or {})
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
        if args.should_save and eval_inputs is not None and decode_predictions is not None:
            write_predictions(
                Path(args.output_dir) / PREDICTIONS, eval_inputs, decode_predictions(output.predictions)
            )
    elif extra_metrics:
        trainer.save_metrics("eval", extra_metrics)
        metrics.update(extra_metrics)

    if args.should_save:
        try:
            trainer.create_model_card(**(model_card or {}))
        except Exception as err:  # the card is a nicety; offline Hub lookups must not fail the run
            logger.warning("model card not written: %s", err)
        print_metrics(metrics)
    return metrics


def write_predictions(path: Path, inputs: Dataset, decoded: list[dict[str, Any]]) -> None:
    """One JSON object per example: its input columns merged with its decoded prediction."""
    if len(decoded) != len(inputs):
        raise RuntimeError(f"{len(decoded)} predictions for {len(inputs)} eval examples")
    lines = [
        json.dumps({**row, **pred}, ensure_ascii=False, default=str)
        for row, pred in zip(inputs, decoded, strict=True)
    ]
    _atomic_write(path, "\n".join(lines) + "\n")


def print_metrics(metrics: dict[str, float]) -> None:
    """The run's final metrics as a two-column table on stdout."""
    shown = {k: v for k, v in metrics.items() if k.startswith("eval_") or k in ("perplexity", "train_loss")}
    shown = {k: v for k, v in shown.items() if not k.endswith(("_per_second", "_runtime"))}
    width = max((len(k) for k in shown), default=6)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    rows += [
        f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in shown.items()
    ]
    print("\n".join(rows))  # noqa: T201 - the run's final report


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
