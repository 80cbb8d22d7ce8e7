"""The steps every recipe's run.py takes around `transformers.Trainer`, one helper per step.

Before training: `setup_logging`, `prepare_output_dir` (resume a checkpoint of the same run,
never clobber a finished or different run, record the resolved config) and the callbacks a
recipe gives its Trainer: `NonFiniteLossGuard` and `PeakMemory`.
After training, in the order run.py calls them: `train_metrics`, `predict` (a split in dataset
order, logged so the curves end with it), `save_results`, `write_predictions` and `finish_run`
(trainer_state.json, all_results.json, curves, model card, the printed table). Each is one
line in run.py that a user can delete or reorder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import resource
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    PredictionOutput,
    TrainOutput,
    get_last_checkpoint,
)

from recipes_lib.config import RunArguments, resolved_config
from recipes_lib.errors import ConfigError, OutputDirError, TrainingError
from recipes_lib.metrics import GENERAL, greater_is_better, without_timings
from recipes_lib.reporting import RUN_INFO, plot_training_curves, run_info, write_model_card
from recipes_lib.strategies import StrategyArguments, parameter_counts

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "resolved_config.yaml"
ALL_RESULTS = "all_results.json"  # written last: its presence marks a finished run


def setup_logging(training_args: TrainingArguments) -> None:
    """INFO logs on the main process, warnings only on the others (as the HF examples do)."""
    level = training_args.get_process_log_level()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level
    )
    logging.getLogger("recipes_lib").setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(level)


# ---- Before training: the output folder and resuming


def prepare_output_dir(training_args: TrainingArguments, run_args: RunArguments, *parsed: Any) -> str | None:
    """Check `output_dir`, write the resolved config there, and return a checkpoint to resume.

    `parsed` is every dataclass parse_config returned. A folder holding a checkpoint of the
    same configuration resumes from its last complete checkpoint; one holding a finished run, a
    run of another configuration, or files that are not a run raises OutputDirError unless
    `overwrite_output_dir` is set. Under several processes the main one decides first (and sets
    incomplete checkpoints aside); the others look after it, so every rank resumes from the same
    checkpoint, or every rank stops with the same error.
    """
    with training_args.main_process_first(desc="checking output_dir", local=False):
        return _prepare_output_dir(training_args, run_args, resolved_config(*parsed))


def _prepare_output_dir(
    training_args: TrainingArguments, run_args: RunArguments, config: dict[str, Any]
) -> str | None:
    out = Path(training_args.output_dir)
    last_checkpoint = None
    # A run that failed before its first checkpoint leaves only start-up files: not a run to keep.
    holds_run = out.is_dir() and any(
        p.name not in (RESOLVED_CONFIG, RUN_INFO) and not p.name.startswith(".") for p in out.iterdir()
    )
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
            changed = _changed_keys(out, config, run_args.machine_keys, training_args.world_size)
            if changed:
                key, before, now = changed[0]
                raise OutputDirError(
                    f"output_dir {out} holds another run ({key}: {before!r} there, {now!r} now); "
                    "pick another output_dir or pass --overwrite_output_dir"
                )
            if (out / ALL_RESULTS).is_file():
                raise OutputDirError(
                    f"output_dir {out} already holds a finished run of this config; "
                    "pick another output_dir or pass --overwrite_output_dir to train again"
                )
            last_checkpoint = last_complete_checkpoint(out, move_incomplete=training_args.should_save)
            if last_checkpoint is not None:
                logger.warning("resuming from %s", last_checkpoint)
    if training_args.should_save:
        info = run_info(run_args.recipe, run_args.config_file, training_args.world_size)
        info["machine_keys"] = run_args.machine_keys
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False))
            atomic_write(out / RUN_INFO, json.dumps(info, indent=1))
        except OSError as err:  # read-only, no permission, disk full: before any training time is spent
            raise OutputDirError(
                f"cannot write to output_dir {out}: {err.strerror or err}; "
                "pick a writable folder with free space"
            ) from err
    return last_checkpoint


def _changed_keys(
    out: Path, config: dict[str, Any], machine_keys: Sequence[str], world_size: int
) -> list[tuple[str, Any, Any]]:
    """The keys whose values differ between the run in `out` and `config`. What the machine filled
    in (TensorBoard when installed, bf16/tf32 on a GPU), then or now, does not define the run, nor
    does the number of processes as long as the global batch stays the same."""
    previous = yaml.safe_load((out / RESOLVED_CONFIG).read_text(encoding="utf-8")) or {}
    try:
        info = json.loads((out / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    ignored = {"overwrite_output_dir", "expected", *machine_keys, *info.get("machine_keys", [])}
    batch_keys = ("per_device_train_batch_size", "gradient_accumulation_steps")
    keys = sorted((set(previous) | set(config)) - ignored - set(batch_keys))
    changed = [(k, previous.get(k), config.get(k)) for k in keys if previous.get(k) != config.get(k)]
    before = _global_batch(previous, info.get("world_size", world_size))
    now = _global_batch(config, world_size)
    if before != now:
        changed.append(("global batch (per_device_train_batch_size x processes x accumulation)", before, now))
    return changed


def _global_batch(config: dict[str, Any], world_size: int) -> int:
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    per_device = config.get("per_device_train_batch_size", defaults["per_device_train_batch_size"])
    accumulation = config.get("gradient_accumulation_steps", defaults["gradient_accumulation_steps"])
    return per_device * world_size * accumulation


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


# ---- What every recipe's Trainer gets: one call, `add_run_guards(trainer, strategy_args)`


def add_run_guards(trainer: Trainer, strategy_args: StrategyArguments) -> PeakMemory:
    """Attach to `trainer` what every recipe promises, and return the peak-memory meter.

    - `NonFiniteLossGuard`: a NaN/inf loss or gradient stops the run (TrainingError, exit code 6)
      before it reaches the weights, so every checkpoint on disk stays usable;
    - `PeakMemory`: `peak_memory_mb` in all_results.json;
    - `count_flops_once`: Trainer's FLOPs count without a walk over the model after every step;
    - with `early_stopping_patience`: transformers' `EarlyStoppingCallback` on
      `metric_for_best_model`, and `load_best_model_at_end`, so the run ends on its best checkpoint
      (checked here: it needs evaluations, and a checkpoint at each of them).

    Call it once, after building the Trainer and before training; `tests/test_guards.py` fails
    for a recipe whose Trainer lacks it.
    """
    if strategy_args.early_stopping_patience is not None:
        enable_best_model_at_end(trainer.args)
        trainer.add_callback(
            EarlyStoppingCallback(
                strategy_args.early_stopping_patience, strategy_args.early_stopping_threshold
            )
        )
    peak_memory = PeakMemory()
    trainer.add_callback(peak_memory)
    trainer.add_callback(NonFiniteLossGuard(trainer))
    count_flops_once(trainer)
    return peak_memory


def has_run_guards(trainer: Trainer) -> bool:
    """Whether `add_run_guards` was called on `trainer` (the guard and the meter are attached)."""
    kinds = {type(cb) for cb in trainer.callback_handler.callbacks}
    return {NonFiniteLossGuard, PeakMemory} <= kinds and "floating_point_ops" in vars(trainer)


def enable_best_model_at_end(args: TrainingArguments) -> None:
    """Early stopping ends on the best checkpoint: turn on `load_best_model_at_end` (metric:
    `metric_for_best_model`, loss when unset; its direction by `recipes_lib.metrics.greater_is_better`
    unless `greater_is_better` is set), refusing settings that leave no checkpoint to pick."""
    if args.eval_strategy == "no":
        raise ConfigError("early_stopping_patience needs evaluations: set eval_strategy to epoch or steps")
    if args.save_strategy != "best" and (
        args.save_strategy != args.eval_strategy
        or (args.eval_strategy == "steps" and args.save_steps % args.eval_steps != 0)
    ):
        raise ConfigError(
            "early_stopping_patience keeps the best checkpoint, so save_strategy must equal eval_strategy "
            f"(and save_steps be a multiple of eval_steps); got eval_strategy={args.eval_strategy.value}, "
            f"save_strategy={args.save_strategy.value}"
        )
    args.load_best_model_at_end = True
    if args.metric_for_best_model is None:
        args.metric_for_best_model = "loss"
    if args.greater_is_better is None:
        args.greater_is_better = greater_is_better(args.metric_for_best_model)


def fused_head_on_answer_tokens(training_args: TrainingArguments) -> None:
    """Make TRL's fused LM head score only the labelled (answer) tokens on a CPU too.

    TRL 1.16's SFTTrainer and DPOTrainer project the hidden states onto the vocabulary in chunks
    (`trl.trainer.utils.add_fused_lm_head`). On CUDA/XPU they project only the positions that
    carry a label; on any other device every position, the prompt's included, with its entropy
    and top-1 as well: fixed tile shapes spare compilers such as Neuron's a recompilation per
    batch. An eager CPU compiles nothing, so that only costs time. Measured on 2 CPU cores
    (SmolLM2-135M-Instruct + LoRA, 8 x 80 tokens, 6 answer tokens each): 3.7 s a step scoring
    every position, 2.2 s scoring the answers, the same loss; the model's own loss took 2.9 s.
    TRL has no setting for it, so this rebinds the device test `trl.trainer.utils` reads
    (process-wide; the chunked kernels keep their own test). Left alone under `torch_compile`,
    and where a TRL release no longer has the test.
    """
    import trl.trainer.utils as trl_utils

    device_test = getattr(trl_utils, "_use_triton", None)
    if device_test is None or training_args.torch_compile or getattr(device_test, "answers_only", False):
        return

    def answers_only(device: torch.device) -> bool:
        return device.type == "cpu" or device_test(device)

    answers_only.answers_only = True  # type: ignore[attr-defined]
    trl_utils._use_triton = answers_only


# ---- Callbacks a recipe passes to Trainer(callbacks=[...])


class NonFiniteLossGuard(TrainerCallback):
    """Stop with a TrainingError before a NaN/inf loss or gradient reaches the weights, so every
    checkpoint on disk stays finite; every process stops at the same step under DDP (the norm is
    taken after the gradients are averaged).

    Costs no pass over the gradients: it reads the total gradient norm Trainer computes before
    every optimizer step anyway (to clip the gradients, or, with `max_grad_norm: 0`, to log
    their norm), kept on its way out of `trainer.accelerator.clip_grad_norm_`; one scalar read
    per step. Where that norm is not available (DeepSpeed) it takes one fused norm itself.
    Skipped under fp16, whose loss scaler already skips inf steps. Built with the trainer:
    `trainer.add_callback(NonFiniteLossGuard(trainer))`.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.grad_norm: torch.Tensor | float | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control, **kwargs) -> None:
        # Here rather than in __init__: a hyperparameter search builds a new accelerator per trial.
        accelerator = self.trainer.accelerator
        clip = accelerator.clip_grad_norm_
        if getattr(clip, "keeps_norm_for", None) is self:
            return

        def clip_and_keep_norm(*clip_args: Any, **clip_kwargs: Any) -> Any:
            self.grad_norm = clip(*clip_args, **clip_kwargs)
            return self.grad_norm

        clip_and_keep_norm.keeps_norm_for = self
        accelerator.clip_grad_norm_ = clip_and_keep_norm

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control, **kwargs) -> None:
        norm, self.grad_norm = self.grad_norm, None
        if args.fp16:
            return
        if norm is None:  # no norm from Trainer this step: one fused pass
            grads = [p.grad for p in kwargs["model"].parameters() if p.grad is not None]
            norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else 0.0
        if not math.isfinite(float(norm)):
            raise TrainingError(
                f"the loss or its gradients became NaN/inf at step {state.global_step + 1}; the last "
                "checkpoint in output_dir is intact. Lower learning_rate, check the data for NaN labels, "
                "or use bf16 instead of fp16"
            )


def count_flops_once(trainer: Trainer) -> None:
    """Make `trainer` count the model's parameters once instead of after every step.

    Trainer adds up `total_flos` (6 x input elements x parameters per step, what `train_flos` and
    the model card report) by calling `model.num_parameters()` after every step, a walk over every
    module and parameter of the model: ~0.5 ms a step on a small ResNet, ~1% of its CPU step. The
    count does not change while training, so this takes it once; `total_flos` stays the same.
    """
    model = trainer.model
    main_input = getattr(model, "main_input_name", "input_ids")
    if not hasattr(model, "num_parameters"):  # not a transformers model: Trainer counts nothing either
        return
    n_params = model.num_parameters(exclude_embeddings=True)

    def floating_point_ops(inputs: dict[str, Any]) -> int:
        return 6 * inputs[main_input].numel() * n_params if main_input in inputs else 0

    trainer.floating_point_ops = floating_point_ops


class PeakMemory(TrainerCallback):
    """Peak memory during training, in MiB: CUDA max allocated on a GPU, else the process's peak
    resident set size (reset when training starts where Linux allows it)."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None

    def on_train_begin(self, args: TrainingArguments, state, control, **kwargs) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # "5" resets VmHWM, the peak RSS, to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def on_train_end(self, args: TrainingArguments, state, control, **kwargs) -> None:
        self.peak_mb = peak_memory_mb()


def peak_memory_mb() -> float:
    """CUDA max allocated on a GPU, else the peak RSS of this process (MiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- After training


def train_metrics(trainer: Trainer, result: TrainOutput, peak: PeakMemory | None = None) -> dict[str, Any]:
    """Trainer's train metrics plus `train_samples`, `trainable_params`, `total_params` and
    `peak_memory_mb`."""
    trainable, total = parameter_counts(trainer.model)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["train_samples"] = len(trainer.train_dataset)
    metrics.update(trainable_params=trainable, total_params=total)
    metrics["peak_memory_mb"] = round(peak.peak_mb or 0.0, 1) if peak is not None else None
    return metrics


def predict(trainer: Trainer, dataset: Dataset, split: str = "eval") -> PredictionOutput:
    """Predict `dataset` in its own order, with metrics named `<split>_*` when it has labels.

    The metrics are logged (trainer_state.json's log history, TensorBoard), so the curves end
    with the final evaluation. Every example counts once under several processes. The order is
    the Trainer's evaluation order: the dataset's, except in a plain Trainer with
    `train_sampling_strategy: group_by_length`, which groups evaluation batches by length too;
    that is refused, as the predictions would not line up with the examples
    (`recipes_lib.sampling.LengthBucketTrainer` groups training batches only).
    """
    sampler = trainer._get_eval_sampler(dataset)
    if sampler is not None and not isinstance(sampler, SequentialSampler):
        raise ConfigError(
            f"{type(trainer).__name__} evaluates in another order than the dataset's "
            f"({type(sampler).__name__}, from train_sampling_strategy: "
            f"{trainer.args.train_sampling_strategy}), so predictions would not line up with examples; "
            "use recipes_lib.sampling.LengthBucketTrainer, or another train_sampling_strategy"
        )
    output = trainer.predict(dataset, metric_key_prefix=split)
    output.metrics[f"{split}_samples"] = len(dataset)
    trainer.log(without_timings(output.metrics))
    return output


def metrics_before_training(log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The step-0 evaluation (`eval_on_start: true`, or an evaluate() before train()) as
    `eval_<name>_before`, to sit beside the final metrics."""
    first = next((e for e in log_history if e.get("step") == 0 and "eval_loss" in e), None)
    if first is None:
        return {}
    return {f"{k}_before": v for k, v in without_timings(first).items() if k.startswith("eval_")}


def save_results(trainer: Trainer, split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Print `metrics` as Trainer does and write `<split>_results.json`; returns them."""
    trainer.log_metrics(split, metrics)
    trainer.save_metrics(split, metrics, combined=False)
    return metrics


def write_predictions(path: Path, inputs: Dataset, decoded: list[dict[str, Any]]) -> None:
    """One JSON object per example: its input columns merged with its decoded prediction."""
    if len(decoded) != len(inputs):
        raise RuntimeError(f"{len(decoded)} predictions for {len(inputs)} examples")
    lines = [
        json.dumps({**row, **pred}, ensure_ascii=False, default=str)
        for row, pred in zip(inputs, decoded, strict=True)
    ]
    atomic_write(path, "\n".join(lines) + "\n")


def finish_run(trainer: Trainer, metrics: dict[str, Any], model_card: dict[str, Any] | None = None) -> None:
    """Write trainer_state.json, all_results.json (last, so it marks a finished run),
    training_curves.png and the model card, and print the final metrics. Then every process
    leaves its process group (nothing to do in one process): left open, a rank that finishes
    first (the others skip the report) can abort at exit, SIGABRT "terminate called without an
    active exception", as gloo's worker thread frees its last collective, which needs the GIL,
    while the interpreter shuts down; the launcher then kills rank 0 before it writes
    all_results.json (pytorch#190489; tests/test_dpo_distributed.py)."""
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = Path(trainer.args.output_dir)
        plot_training_curves(trainer.state.log_history, out / "training_curves.png", trainer.args)
        write_model_card(trainer, metrics, model_card or {}, out / RESOLVED_CONFIG)
        atomic_write(out / ALL_RESULTS, json.dumps(metrics, indent=4, sort_keys=True))
        print_metrics(metrics)
    trainer.accelerator.end_training()


def print_metrics(metrics: dict[str, Any]) -> None:
    """The run's final metrics as a two-column table on stdout."""
    prefixes = ("eval_", "test_", "perplexity", GENERAL)
    shown = without_timings({k: v for k, v in metrics.items() if k.startswith(prefixes) or k == "train_loss"})
    width = max((len(k) for k in shown), default=6)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    rows += [
        f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in shown.items()
    ]
    print("\n".join(rows))  # noqa: T201 - the run's final report


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a hidden temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
