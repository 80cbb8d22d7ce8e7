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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
import yaml
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from recipes_lib.config import RunArguments, resolved_config
from recipes_lib.errors import ModelError, OutputDirError, TrainingError
from recipes_lib.reporting import RUN_FACTS, plot_training_curves, run_facts, write_confusion_matrix
from recipes_lib.search import active_sweep, run_search
from recipes_lib.strategies import PeakMemory, StrategyArguments, merge_lora_into, parameter_counts

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
    for args in parsed:
        if hasattr(args, "model_name_or_path"):
            refuse_pickle_only_model(args.model_name_or_path, run_args.allow_pickle_checkpoints)
    out = Path(training_args.output_dir)
    config = resolved_config(*parsed)
    comparable = {k: v for k, v in config.items() if k not in ("overwrite_output_dir", "expected")}
    last_checkpoint = None
    # A run that failed before its first checkpoint leaves only start-up files: not a run to keep.
    holds_run = out.is_dir() and any(p.name not in (RESOLVED_CONFIG, RUN_FACTS) for p in out.iterdir())
    if holds_run:
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
            last_checkpoint = last_complete_checkpoint(out, move_incomplete=training_args.should_save)
            if last_checkpoint is not None:
                logger.warning("resuming from %s", last_checkpoint)
    if training_args.should_save:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False))
        facts = run_facts(run_args.recipe, run_args.config_file, training_args.world_size)
        _atomic_write(out / RUN_FACTS, json.dumps(facts, indent=1))
    return last_checkpoint


def refuse_pickle_only_model(name_or_path: str, allow_pickle: bool) -> None:
    """A local model folder with pickle weights and no safetensors is refused unless allowed:
    unpickling can run arbitrary code. (Hub ids: transformers picks safetensors when the repo
    has them.)"""
    folder = Path(name_or_path)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern))
    if pickles:
        raise ModelError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}), which can run code when "
            "loaded; convert them to safetensors, or pass --allow_pickle_checkpoints true if you trust them"
        )


def _is_complete(checkpoint: Path) -> bool:
    # Trainer writes trainer_state.json last, so a checkpoint killed mid-write lacks a valid one.
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("adapter_model.*"))


def last_complete_checkpoint(out: Path, move_incomplete: bool = True) -> str | None:
    """The newest checkpoint that was completely written; incomplete ones are renamed
    `incomplete-checkpoint-N` (kept, never resumed from, never rotated)."""
    while (last := get_last_checkpoint(str(out))) is not None:
        if _is_complete(Path(last)):
            return last
        if not move_incomplete:
            return None
        logger.warning("%s was not completely written (killed mid-save?); not resuming from it", last)
        target = Path(last).with_name(f"incomplete-{Path(last).name}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(last, target)
    return None


class NonFiniteLossGuard(TrainerCallback):
    """Stop with a TrainingError before a NaN/inf gradient reaches the weights, so every
    checkpoint on disk stays finite. Skipped under fp16, whose loss scaler handles inf steps."""

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control, **kwargs) -> None:
        if args.fp16:
            return
        grads = [p.grad for p in kwargs["model"].parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads]).sum()):
            raise TrainingError(
                f"the loss or its gradients became NaN/inf at step {state.global_step + 1}; the last "
                "checkpoint in output_dir is intact. Lower learning_rate, check the data for NaN labels, "
                "or use bf16 instead of fp16"
            )


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
    derived_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None,
    label_names: Sequence[str] | None = None,
    strategy: StrategyArguments | None = None,
) -> dict[str, float]:
    """Train (resuming if asked), save model + state, evaluate, and write results.

    Writes `train_results.json`, `eval_results.json`, `all_results.json`, `trainer_state.json`,
    the model with its processing class, a model card and, when `eval_inputs` and
    `decode_predictions` are given, `eval_predictions.jsonl`: one object per eval example
    with its input columns and the decoded prediction. `model_card` is passed to
    `Trainer.create_model_card` (finetuned_from, dataset, tasks, ...). `derived_metrics` maps
    the eval metrics to more metrics saved with them (e.g. perplexity from eval_loss). With
    `label_names` (classification) a confusion matrix is written as JSON and PNG.
    `training_curves.png` plots the logged loss and eval metrics. `strategy` adds early
    stopping and merges LoRA adapters into the saved model (see `recipes_lib.strategies`).
    The train metrics include `trainable_params`, `total_params` and `peak_memory_mb`.
    Inside `recipes_lib.search.sweeping(...)`, runs the hyperparameter search instead.
    Returns all metrics.
    """
    args = trainer.args
    strategy = strategy or StrategyArguments()
    if not any(isinstance(cb, NonFiniteLossGuard) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(NonFiniteLossGuard())
    if strategy.early_stopping_patience is not None:
        trainer.add_callback(
            EarlyStoppingCallback(strategy.early_stopping_patience, strategy.early_stopping_threshold)
        )
    if (sweep := active_sweep()) is not None:
        return run_search(trainer, sweep)
    peak = PeakMemory()
    trainer.add_callback(peak)
    train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainable, total = parameter_counts(trainer.model)
    trainer.save_model()
    trainer.save_state()
    out = Path(args.output_dir)
    metrics: dict[str, float] = dict(train_result.metrics)
    metrics["train_samples"] = len(trainer.train_dataset)
    metrics.update(
        trainable_params=trainable, total_params=total, peak_memory_mb=round(peak.peak_mb or 0.0, 1)
    )
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)

    if trainer.eval_dataset is not None:
        with _eval_in_dataset_order(trainer):
            output = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
        eval_metrics = dict(output.metrics)
        eval_metrics["eval_samples"] = len(trainer.eval_dataset)
        eval_metrics.update(extra_metrics or {})
        eval_metrics.update(_metrics_before_training(trainer.state.log_history))
        if derived_metrics is not None:
            eval_metrics.update(derived_metrics(eval_metrics))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
        if args.should_save and eval_inputs is not None and decode_predictions is not None:
            write_predictions(out / PREDICTIONS, eval_inputs, decode_predictions(output.predictions))
        if args.should_save and label_names and output.label_ids is not None:
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            write_confusion_matrix(
                out, output.label_ids.reshape(-1), logits.argmax(-1).reshape(-1), label_names
            )
    elif extra_metrics:
        trainer.save_metrics("eval", extra_metrics)
        metrics.update(extra_metrics)

    if strategy.merge_lora and args.should_save:  # after evaluation: the adapter model is left as trained
        merge_lora_into(args.output_dir, trainer.model)
    if args.should_save:
        plot_training_curves(trainer.state.log_history, out / "training_curves.png")
        try:
            trainer.create_model_card(**(model_card or {}))
            _append_to_model_card(out, metrics)
        except Exception as err:  # the card is a nicety; offline Hub lookups must not fail the run
            logger.warning("model card not written: %s", err)
        print_metrics(metrics)
    return metrics


def _metrics_before_training(log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    # `eval_on_start: true` evaluates at step 0; keep those as eval_<name>_before beside the final ones.
    first = next((e for e in log_history if e.get("step") == 0 and "eval_loss" in e), None)
    if first is None:
        return {}
    return {f"{k}_before": v for k, v in first.items() if k.startswith("eval_") and not k.endswith(
        ("_runtime", "_per_second"))}  # fmt: skip


def _append_to_model_card(out: Path, metrics: dict[str, float]) -> None:
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    config = (out / RESOLVED_CONFIG).read_text(encoding="utf-8") if (out / RESOLVED_CONFIG).is_file() else ""
    with open(out / "README.md", "a", encoding="utf-8") as card:
        card.write(f"\n## Final metrics\n\n| metric | value |\n|---|---|\n{rows}\n")
        card.write(f"\n## Configuration\n\nRepeat this run with `--config {RESOLVED_CONFIG}`:\n\n")
        card.write(f"```yaml\n{config}```\n")


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
    shown = {k: v for k, v in metrics.items() if k.startswith(("eval_", "perplexity")) or k == "train_loss"}
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
