"""Fine-tune a BERT-style encoder (or a decoder LM with a head) for text classification or regression.

    accelerate launch recipes/bert_cls/run.py                                  # SST-2, BERT paper settings
    accelerate launch recipes/bert_cls/run.py --config configs/mrpc.yaml       # sentence pairs
    python recipes/bert_cls/run.py --train_file train.csv --validation_file dev.csv --learning_rate 3e-5

Single sentences or sentence pairs; string or integer labels are classes, float labels mean
regression (one output, MSE loss). A test split (`test_file`, or a Hub dataset's `test`) is
predicted after training into test_predictions.jsonl. A decoder LM (Llama, SmolLM2, GPT-2, Qwen)
works too: its last real token is classified. Keys are the fields below plus TrainingArguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, DatasetDict, Value
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import (
    DataArguments,
    check_label_sets,
    detect_text_columns,
    has_labels,
    load_splits,
    require_labels,
    with_label_names,
)
from recipes_lib.errors import exit_on_error, loading_model
from recipes_lib.metrics import classification_metrics, logits_of, regression_metrics, softmax
from recipes_lib.reporting import write_confusion_matrix
from recipes_lib.sampling import LengthBucketTrainer
from recipes_lib.strategies import (
    StrategyArguments,
    apply_strategy,
    decoder_classifier_defaults,
    head_learning_rate_optimizer,
    is_decoder_lm,
    merge_lora_into,
)
from recipes_lib.training import (
    PeakMemory,
    add_run_guards,
    finish_run,
    metrics_before_training,
    predict,
    prepare_output_dir,
    save_results,
    setup_logging,
    train_metrics,
    write_predictions,
)

# TrainingArguments this recipe needs, applied under every config (the shipped ones or yours)
# unless the config or the command line sets the key; resolved_config.yaml records them.
TRAINING_DEFAULTS = {
    # Batches of similar lengths: little padding, ~1.6x faster on short texts. LengthBucketTrainer
    # (below) gives each about the class mix of the data and serves them in random order.
    "train_sampling_strategy": "group_by_length",
    # The classification loss is a mean per batch; averaging tokens across devices (on by
    # default in transformers 5.x) would multiply it by the number of processes under DDP.
    "average_tokens_across_devices": False,
    # Every weight that trains (all, LoRA's, or the head's) is used in each forward pass, so DDP
    # need not traverse the autograd graph each step looking for unused ones (transformers' default).
    "ddp_find_unused_parameters": False,
}


@dataclass
class ModelArguments:
    """The pretrained encoder and its tokenizer."""

    model_name_or_path: str = field(
        default="bert-base-uncased",
        metadata={"help": "Hub model id or local folder of a pretrained encoder or decoder LM."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repo."})


@dataclass
class TaskArguments:
    """The task: which columns hold the text (and its pair) and the label, and how it is scored."""

    text_column: str | None = field(default=None, metadata={"help": "Default: sentence, text or sentence1."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text of a pair task."})
    label_column: str | None = field(default=None, metadata={"help": "Default: label."})
    metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Default: accuracy f1 precision recall matthews_correlation (mse pearson spearmanr "
            "for regression). Other names go to evaluate.load."
        },
    )


@dataclass
class TokenizationArguments:
    """How texts become token ids: truncation, and padding per batch or to a fixed length."""

    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every example to max_seq_length instead of per batch."}
    )
    length_group_batches: int | None = field(
        default=None,
        metadata={
            "help": "group_by_length: how many batches are sorted by length together (1: random "
            "batches; more: less padding). Default: 50 for classes; for a regression, one optimizer "
            "step's (gradient_accumulation_steps): random steps in micro-batches sorted by length."
        },
    )

    def __post_init__(self) -> None:
        if self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.length_group_batches is not None and self.length_group_batches < 1:
            raise ValueError(f"length_group_batches must be >= 1, got {self.length_group_batches}")


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: Trainer
    training_args: TrainingArguments
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    raw: DatasetDict  # the loaded splits, for the predictions files
    tokenized: DatasetDict
    columns: list[str]  # text (and pair) columns, then the label column
    label_names: list[str]  # empty for regression
    model_card: dict[str, Any]


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (
            ModelArguments,
            TaskArguments,
            TokenizationArguments,
            DataArguments,
            StrategyArguments,
            RunArguments,
            TrainingArguments,
        ),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=TRAINING_DEFAULTS,
    )
    model_args, task_args, tokenization_args, data_args, strategy_args, run_args, training_args = parsed
    setup_logging(training_args)
    # A decoder LM backbone (Llama, GPT-2, Qwen): LoRA on every linear layer and the new head at its
    # own, higher learning rate, where the config leaves them null (written to resolved_config.yaml).
    with loading_model(model_args.model_name_or_path, run_args.allow_pickle_checkpoints):
        backbone_config = AutoConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    if is_decoder_lm(backbone_config):
        decoder_classifier_defaults(strategy_args, training_args.learning_rate)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset or local csv/json/parquet; validation carved from train if missing.
    raw = load_splits(data_args, seed=training_args.seed)
    text_col, pair_col, label_col = detect_text_columns(
        raw["train"], task_args.text_column, task_args.text_pair_column, task_args.label_column
    )
    require_labels(raw, label_col)
    # A test split without labels (or GLUE's -1 placeholders) is predicted, not scored.
    if "test" in raw and not has_labels(raw["test"], label_col):
        raw["test"] = raw["test"].remove_columns([c for c in (label_col,) if c in raw["test"].column_names])

    # ---- Labels: ClassLabel names, else the sorted distinct values; floats mean regression.
    feature = raw["train"].features[label_col]
    is_regression = isinstance(feature, Value) and feature.dtype.startswith("float")
    if is_regression:
        label_names, label_to_id = [], {}
    elif isinstance(feature, ClassLabel):
        label_names = feature.names
        label_to_id = {i: i for i in range(len(label_names))}
    else:
        values = sorted(raw["train"].unique(label_col))  # unique(): one Arrow pass, not a loop
        label_names = [str(v) for v in values]
        label_to_id = {v: i for i, v in enumerate(values)}
    if not is_regression:
        check_label_sets(raw, label_col)  # two classes or more; no eval/test label unseen in train

    # ---- Tokenise: truncate only; padding happens per batch in the collator.
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    # A missing folder or Hub id, or pickle-only weights: one clear error line.
    with loading_model(tokenizer_name, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_name, trust_remote_code=model_args.trust_remote_code
        )
    if tokenizer.pad_token is None:  # decoder LMs (GPT-2, Llama) often have none: pad with eos
        tokenizer.pad_token = tokenizer.eos_token
    max_length = min(tokenization_args.max_seq_length, tokenizer.model_max_length)

    def preprocess(batch: dict) -> dict:
        texts = [[t or "" for t in batch[text_col]]]  # an empty cell is an empty text
        if pair_col is not None:
            texts.append([t or "" for t in batch[pair_col]])
        padding = "max_length" if tokenization_args.pad_to_max_length else False
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, padding=padding)
        if label_col in batch:
            labels = batch[label_col]
            encoded["labels"] = (
                [float(v) for v in labels] if is_regression else [label_to_id[v] for v in labels]
            )
        return encoded

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = DatasetDict(
            {
                split: ds.map(
                    preprocess,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    remove_columns=ds.column_names,
                    load_from_cache_file=not data_args.overwrite_cache,
                    desc=f"Tokenizing {split}",
                )
                for split, ds in raw.items()
            }
        )

    # ---- Model: seed first, so the new classification head is the same for the same seed.
    set_seed(training_args.seed)
    if is_regression:
        label_kwargs = {"num_labels": 1, "problem_type": "regression"}
    else:
        label_kwargs = {
            "id2label": dict(enumerate(label_names)),  # saved, so pipelines print class names
            "label2id": {name: i for i, name in enumerate(label_names)},
            "problem_type": "single_label_classification",
        }
    # pad_token_id: a decoder's head reads the last token that is not padding (left or right).
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        pad_token_id=tokenizer.pad_token_id,
        **label_kwargs,
    )
    if model_args.from_scratch:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=True,  # a checkpoint fine-tuned on other labels gets a fresh head
            trust_remote_code=model_args.trust_remote_code,
        )
    # Full fine-tuning, LoRA adapters (use_lora) or the head only (freeze_backbone).
    model = apply_strategy(model, strategy_args, task_type="SEQ_CLS")

    # ---- Metrics: computed locally (sklearn/scipy), so they work offline.
    if is_regression:
        compute_metrics = regression_metrics(task_args.metrics)
    else:
        compute_metrics = classification_metrics(len(label_names), task_args.metrics)

    # ---- Trainer: dynamic padding (on a GPU, multiples of 8 let fp16/bf16 use tensor cores; a CPU
    # gains nothing from them and would compute the extra padding).
    half_on_gpu = (training_args.fp16 or training_args.bf16) and training_args.device.type == "cuda"
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if half_on_gpu else None)
    # group_by_length batches come from recipes_lib.sampling.LengthBucketSampler: similar lengths,
    # each with the data's class mix, in random order (transformers' own sampler leans batches
    # towards a class where length goes with it, and serves them longest first: BENCHMARKS.md).
    # A regression's labels cannot be kept mixed: there, only one optimizer step's micro-batches
    # (gradient_accumulation_steps) are sorted together, so every step is a random draw.
    trainer = LengthBucketTrainer(
        length_group_batches=tokenization_args.length_group_batches,
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        # The new head at head_learning_rate, the rest at learning_rate (None: Trainer's optimizer).
        optimizer_cls_and_kwargs=head_learning_rate_optimizer(
            model, training_args, strategy_args.head_learning_rate
        ),
    )
    # A sequence-classification loss is a per-batch mean that ignores Trainer's num_items_in_batch,
    # but the models' forward takes **kwargs, so transformers 5.x takes the loss as already scaled for
    # gradient accumulation and would not divide it by gradient_accumulation_steps (transformers#47688).
    trainer.model_accepts_loss_kwargs = False
    # What every run promises: a NaN/inf loss stops it before reaching the weights, peak memory is
    # measured, FLOPs counted once, and with early_stopping_patience it stops early on its best checkpoint.
    peak_memory = add_run_guards(trainer, strategy_args)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        raw=raw,
        tokenized=tokenized,
        columns=[c for c in (text_col, pair_col) if c] + [label_col],
        label_names=label_names,
        model_card={
            "finetuned_from": None if model_args.from_scratch else model_args.model_name_or_path,
            "dataset": data_args.dataset_name or data_args.train_file,
            "tasks": "text-classification",
        },
    )


def decode(predictions: np.ndarray | tuple, label_names: list[str]) -> list[dict]:
    """Each example's prediction: the class name and its probability, or the regression value."""
    logits = logits_of(predictions)
    if not label_names:
        return [{"prediction": float(v)} for v in logits.reshape(-1)]
    probs = softmax(logits)
    return [
        {"prediction": label_names[i], "score": float(p[i])}
        for i, p in zip(probs.argmax(-1), probs, strict=True)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model with
    # its tokenizer and class names (what pipeline() loads).
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate every validation example in order; eval_on_start's step-0 metrics as *_before.
    output = predict(trainer, setup.tokenized["validation"], "eval")
    eval_metrics = {**output.metrics, **metrics_before_training(trainer.state.log_history)}
    metrics |= save_results(trainer, "eval", eval_metrics)
    if trainer.is_world_process_zero():
        inputs = with_label_names(setup.raw["validation"], setup.columns, setup.label_names)
        write_predictions(
            out / "eval_predictions.jsonl", inputs, decode(output.predictions, setup.label_names)
        )
        if setup.label_names:
            predicted = logits_of(output.predictions).argmax(-1)
            write_confusion_matrix(out, output.label_ids, predicted, setup.label_names)

    # ---- Predict the test split, if any; labelled test data also gets test_* metrics.
    if "test" in setup.tokenized:
        output = predict(trainer, setup.tokenized["test"], "test")
        metrics |= save_results(trainer, "test", output.metrics)
        if trainer.is_world_process_zero():
            inputs = with_label_names(setup.raw["test"], setup.raw["test"].column_names, setup.label_names)
            write_predictions(
                out / "test_predictions.jsonl", inputs, decode(output.predictions, setup.label_names)
            )

    # ---- LoRA: save the adapters folded into the weights, after evaluating the adapter model.
    if setup.strategy_args.merge_lora and trainer.is_world_process_zero():
        merge_lora_into(out, trainer.model)

    # ---- Report: trainer_state.json, all_results.json, training_curves.png, model card, table.
    finish_run(trainer, metrics, setup.model_card)
    return metrics


if __name__ == "__main__":
    exit_on_error(main)
