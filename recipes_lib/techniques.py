"""Training techniques beyond what `transformers.Trainer` does by itself, as timm's and
torchvision's reference training scripts use them; each is one visible line in a run.py.

- `soft_target_loss`: cross-entropy on class indices or class probabilities (MixUp/CutMix),
  label smoothing applied once, for `Trainer(compute_loss_func=...)`.
- `OptimizerWithoutNormDecay`: Trainer's optimizer with normalization layers and biases out of
  weight decay, for `Trainer(optimizer_cls_and_kwargs=...)`.
- `step_decay`: the learning rate x 0.1 every N epochs (ResNet paper, torchvision's V1 recipe).
- `WeightEMA`: an exponential moving average of the weights, evaluated and saved, restored on resume.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

# Layers whose parameters no_decay_on_norm keeps out of weight decay (torchvision's norm_classes).
NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def soft_target_loss(label_smoothing: float) -> Any:
    """Trainer's `compute_loss_func`: cross-entropy on class indices (evaluation, unmixed batches)
    or class probabilities (MixUp/CutMix batches), label smoothing applied once, to either.

    Trainer then gives the model no labels, so neither the model's own loss nor Trainer's label
    smoother runs. The sum over examples is divided by the examples in the whole accumulated (and,
    under DDP, gathered) batch: Trainer's `num_items_in_batch` counts label entries, num_classes per
    example for probabilities."""

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"].float()
        losses = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")
        if num_items_in_batch is None:
            return losses.mean()
        examples = num_items_in_batch / labels.shape[-1] if labels.ndim == 2 else num_items_in_batch
        return losses.sum() / examples

    return loss


class OptimizerWithoutNormDecay:
    """Trainer's optimizer (`optim`, `optim_args`, learning_rate, weight_decay) with every
    normalization layer's parameters and every bias in a group without weight decay, torchvision's
    `norm_weight_decay=0`. Trainer's own grouping exempts biases and LayerNorm, not BatchNorm.

    For `Trainer(optimizer_cls_and_kwargs=(partial(OptimizerWithoutNormDecay, args), {}))`: Trainer
    calls that factory, then the result with the model it trains."""

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        norm = {
            id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)
        }
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if id(param) in norm or name.endswith("bias") else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return optimizer_cls(groups, **optimizer_kwargs)


def step_decay(trainer: Trainer, every_epochs: int) -> torch.optim.lr_scheduler.StepLR:
    """Learning rate x 0.1 every `every_epochs` epochs on Trainer's own optimizer (created here).
    Trainer steps the scheduler once per optimizer step, so epochs are counted in those steps."""
    args = trainer.args
    batches = len(trainer.train_dataset) / (args.train_batch_size * args.world_size)
    batches = math.floor(batches) if args.dataloader_drop_last else math.ceil(batches)
    steps_per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return torch.optim.lr_scheduler.StepLR(
        trainer.create_optimizer(), every_epochs * steps_per_epoch, gamma=0.1
    )


class WeightEMA(TrainerCallback):
    """An exponential moving average of the weights and BatchNorm statistics (`ema_decay`), kept by
    torch.optim.swa_utils.AveragedModel as torchvision's reference does.

    Updated after every optimizer step; during warmup it follows the weights (the reference resets
    it there). Evaluations during training swap it in, so early stopping and the best checkpoint
    judge it; `copy_to(model)` after training makes it the model that is evaluated and saved. Each
    checkpoint holds it in ema.safetensors, and resuming restores it. One process or DDP (each
    process keeps the same copy); FSDP and DeepSpeed shard the weights, which this does not handle.
    """

    FILE = "ema.safetensors"

    def __init__(self, decay: float, resume_from: str | None = None) -> None:
        self.decay = decay
        self.resume_from = resume_from
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        self.trained: dict[str, torch.Tensor] | None = None  # the trained weights while the average is in

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(self.decay)
        self.averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=multi_avg_fn, use_buffers=True
        )
        if self.resume_from is not None:
            self.load(Path(self.resume_from))

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step <= args.get_warmup_steps(state.max_steps):
            self.averaged.n_averaged.fill_(0)  # the next update copies the weights
        self.averaged.update_parameters(model)
        # Counters (BatchNorm's num_batches_tracked) are copied, not averaged.
        for mine, theirs in zip(self.averaged.module.buffers(), model.buffers(), strict=True):
            if not mine.is_floating_point():
                mine.copy_(theirs)
        if control.should_evaluate:  # Trainer evaluates right after this step
            self.swap_in(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs) -> None:
        if control.should_evaluate and self.trained is None:
            self.swap_in(model)

    def on_evaluate(self, args, state, control, model=None, **kwargs) -> None:
        if self.trained is not None:  # back to the trained weights before a checkpoint is written
            model.load_state_dict(self.trained)
            self.trained = None

    def on_save(self, args, state, control, **kwargs) -> None:
        if args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_file({k: v.contiguous() for k, v in self.averaged.state_dict().items()}, folder / self.FILE)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.load(Path(state.best_model_checkpoint))  # the average that was judged best

    def swap_in(self, model: nn.Module) -> None:
        self.trained = {k: v.clone() for k, v in model.state_dict().items()}
        self.copy_to(model)

    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into `model`."""
        model.load_state_dict(self.averaged.module.state_dict())

    def load(self, checkpoint: Path) -> None:
        if (checkpoint / self.FILE).is_file():
            self.averaged.load_state_dict(load_file(checkpoint / self.FILE))
        else:
            logger.warning(
                "%s holds no %s: the weight average restarts from the weights", checkpoint, self.FILE
            )
