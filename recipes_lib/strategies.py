"""How much of a model fine-tunes, and when training stops: the same keys in every recipe.

`StrategyArguments` holds the config keys (LoRA, a frozen backbone, early stopping);
`apply_strategy` turns a freshly built model into the model to train. `from_scratch` (random
weights) is a model-loading choice and lives in each recipe's ModelArguments; the optimizer is
TrainingArguments' own `optim`; early stopping is transformers' `EarlyStoppingCallback`, which
`recipes_lib.training.add_run_guards` attaches when `early_stopping_patience` is set. `parameter_counts`
feeds the `trainable_params` and `total_params` entries of every run's `all_results.json`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, TrainingArguments

from recipes_lib.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class StrategyArguments:
    """Which weights train (all, LoRA adapters, or the head only) and when to stop early."""

    use_lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scale: updates are multiplied by alpha/r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt, or [all-linear] for every linear layer but the head; null: "
            "peft's default for the architecture (BERT: query, value), every linear layer for a decoder "
            "LM classifier (decoder_classifier_defaults), else every Linear/Conv2d layer of the backbone."
        },
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Save the adapters merged into the weights (loads without peft)."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the task head (classifier, score), which starts from random "
            "weights; the rest trains at learning_rate. null: learning_rate, except for a decoder LM "
            "classifier (decoder_classifier_defaults)."
        },
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Train only the head (linear probing); the backbone stays as loaded."},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations without improving metric_for_best_model, and "
            "load the best checkpoint at the end. Needs eval_strategy = save_strategy."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "How much the metric must improve to count as better."}
    )

    def __post_init__(self) -> None:
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ValueError(f"head_learning_rate must be > 0, got {self.head_learning_rate}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
        if self.merge_lora and not self.use_lora:
            raise ValueError("merge_lora needs use_lora: true")
        if self.use_lora and self.freeze_backbone:
            raise ValueError("use_lora and freeze_backbone are two strategies; set one of them")


def apply_strategy(
    model: PreTrainedModel,
    strategy: StrategyArguments,
    task_type: str | None = None,
) -> nn.Module:
    """The model to train: `model` itself, with its backbone frozen, or wrapped in LoRA adapters.

    `task_type` is peft's name for the task ("SEQ_CLS", "CAUSAL_LM"; None for image
    classification). Touches the model only: early stopping is attached with the Trainer's other
    guards (`recipes_lib.training.add_run_guards`).
    """
    if strategy.freeze_backbone:
        freeze_backbone(model)
    if strategy.use_lora:
        model = add_lora(model, strategy, task_type)
    trainable, total = parameter_counts(model)
    logger.info(
        "trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    return model


def head_modules(model: PreTrainedModel) -> list[str]:
    """Names of the model's top-level modules outside its backbone that hold weights: the task
    head (`classifier`, `score`, `pre_classifier`, `lm_head`, ...)."""
    backbone = model.base_model
    if backbone is model:
        raise ConfigError(f"{type(model).__name__} has no separate backbone to freeze or adapt")
    return [
        name
        for name, module in model.named_children()
        if module is not backbone and any(True for _ in module.parameters())
    ]


# A decoder LM's head is new (random, std 0.02) and reads one token's hidden state, whose scale is
# set by the final norm (SmolLM2: rms ~1.6, one of 576 dimensions ~33 and ~40% of the squared
# norm): at a LoRA learning rate of 2e-4 it moves too little in a few dozen steps to undo its
# random start. 2e-3, a linear probe's rate, fixes that (recipes/bert_cls/README.md, decoder LMs).
DECODER_HEAD_LEARNING_RATE = 2e-3


def is_decoder_lm(config: PretrainedConfig) -> bool:
    """Whether `config` is a decoder-only language model (Llama, GPT-2, Qwen, Mistral, ...): one
    with a causal LM class and no masked LM class (BERT and RoBERTa have both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return (
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not config.is_encoder_decoder
    )


def decoder_classifier_defaults(strategy: StrategyArguments, learning_rate: float) -> None:
    """Fill the keys a config left null for a decoder LM with a new classification head: LoRA on
    every linear layer (peft's default for Llama is q_proj and v_proj alone), and the head at
    DECODER_HEAD_LEARNING_RATE (or learning_rate, if higher). Called before the resolved config is
    written, so resolved_config.yaml records the values used."""
    if strategy.lora_target_modules is None:
        strategy.lora_target_modules = ["all-linear"]
    if strategy.head_learning_rate is None:
        strategy.head_learning_rate = max(DECODER_HEAD_LEARNING_RATE, learning_rate)


# Trainer.get_decay_parameter_names' rule: no weight decay on biases and normalisation weights.
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def head_learning_rate_optimizer(
    model: nn.Module, args: TrainingArguments, head_learning_rate: float | None
) -> tuple[type, dict[str, Any]] | None:
    """Trainer's `optimizer_cls_and_kwargs` for a head that trains at its own learning rate:
    Trainer's optimizer (`optim`) and weight decay rule, with the head's parameters (head_modules:
    `score`, `classifier`, ...; under LoRA their trained copies) in param groups at
    `head_learning_rate`. The schedule (warmup, decay) scales every group alike. None (Trainer's
    own optimizer) when `head_learning_rate` is None."""
    if head_learning_rate is None:
        return None
    if args.fsdp or args.deepspeed:  # they replace the parameters after this list is made
        raise ConfigError(
            "head_learning_rate works with one process or DDP; under FSDP or DeepSpeed set it to null"
        )
    from transformers import Trainer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = set(head_modules(base))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    in_head = {n for n, _ in named if heads & set(n.split("."))}
    if not in_head:
        raise ConfigError(f"head_learning_rate: no trainable head parameters in {type(base).__name__}")
    groups = []
    for head, lr in ((False, args.learning_rate), (True, head_learning_rate)):
        for decay in (True, False):
            params = [
                p
                for n, p in named
                if (n in in_head) == head and (_NO_DECAY.search(n.lower()) is None) == decay
            ]
            if params:
                weight_decay = args.weight_decay if decay else 0.0
                groups.append({"params": params, "lr": lr, "weight_decay": weight_decay})
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls, {**optimizer_kwargs, "params": groups}


def freeze_backbone(model: PreTrainedModel) -> None:
    """Train only the head. A language model's head is usually tied to the input embeddings,
    so it gets its own copy (initialised from them) and that copy trains."""
    heads = head_modules(model)
    model.base_model.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        output = model.get_output_embeddings()
        if output is None:
            raise ConfigError(f"freeze_backbone: {type(model).__name__} has no head outside its backbone")
        output.weight = nn.Parameter(output.weight.detach().clone())
        model.config.get_text_config().tie_word_embeddings = False
        logger.info("freeze_backbone: the output layer is untied from the input embeddings and trains alone")
    logger.info("freeze_backbone: training only %s", ", ".join(heads))


def default_lora_targets(model: PreTrainedModel) -> list[str] | None:
    """None when peft knows the architecture (e.g. BERT: query, value; Llama: q_proj, v_proj),
    else the names of every Linear and Conv2d layer in the backbone (e.g. ResNet's convolutions)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    if model.config.model_type in KNOWN:
        return None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.base_model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }
    if not names:
        raise ConfigError(
            f"no Linear or Conv2d layers to adapt in {type(model).__name__}; set lora_target_modules"
        )
    return sorted(names)


def add_lora(model: PreTrainedModel, strategy: StrategyArguments, task_type: str | None) -> nn.Module:
    """Wrap `model` in LoRA adapters; for classifiers the (new) head trains in full beside them."""
    from peft import LoraConfig, get_peft_model

    heads = None if task_type == "CAUSAL_LM" else head_modules(model)
    targets = strategy.lora_target_modules or default_lora_targets(model)
    if targets == ["all-linear"]:  # peft's keyword: every linear layer but the output layer and head
        targets = "all-linear"
    config = LoraConfig(
        task_type=task_type,
        r=strategy.lora_r,
        lora_alpha=strategy.lora_alpha,
        lora_dropout=strategy.lora_dropout,
        target_modules=targets,
        modules_to_save=heads,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module name that matches nothing
        raise ConfigError(f"LoRA: {err}".splitlines()[0]) from err


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) weights count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora_into(output_dir: str | Path, model: nn.Module) -> nn.Module:
    """Fold trained LoRA adapters into the weights and save a plain model in place of the adapter."""
    merged = model.merge_and_unload()
    merged.save_pretrained(output_dir)
    for adapter_file in ("adapter_model.safetensors", "adapter_config.json"):
        (Path(output_dir) / adapter_file).unlink(missing_ok=True)
    return merged
