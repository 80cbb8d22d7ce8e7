"""Fine-tune a BERT-style encoder for text classification or regression (GLUE-style tasks).

    accelerate launch recipes/bert_cls/run.py                                  # SST-2, BERT paper settings
    accelerate launch recipes/bert_cls/run.py --config configs/mrpc.yaml       # sentence pairs
    python recipes/bert_cls/run.py --train_file train.csv --validation_file dev.csv --learning_rate 3e-5

Single sentences or sentence pairs; string or integer labels are classes, float labels mean
regression (one output, MSE loss). Keys are the fields below plus TrainingArguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Value
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
from recipes_lib.data import DataArguments, detect_text_columns, load_splits, require_labels
from recipes_lib.errors import DataError, exit_on_error, loading_model
from recipes_lib.metrics import classification_metrics, regression_metrics
from recipes_lib.strategies import StrategyArguments, apply_strategy
from recipes_lib.training import prepare_output_dir, setup_logging, train_and_evaluate


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="bert-base-uncased",
        metadata={"help": "Hub model id or local folder of a pretrained encoder."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repo."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every example to max_seq_length instead of per batch."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Default: sentence, text or sentence1."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text of a pair task."})
    label_column: str | None = field(default=None, metadata={"help": "Default: label."})
    metrics: list[str] | None = field(
        default=None, metadata={"help": "Default: accuracy f1 precision recall matthews_correlation (mse "
                                "pearson spearmanr for regression). Other names go to evaluate.load."}
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, DataArguments, StrategyArguments, RunArguments, TrainingArguments),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
    )
    model_args, data_args, strategy_args, run_args, training_args = parsed
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset or local csv/json/parquet; validation carved from train if missing.
    raw = load_splits(data_args, seed=training_args.seed)
    text_col, pair_col, label_col = detect_text_columns(
        raw["train"], model_args.text_column, model_args.text_pair_column, model_args.label_column
    )
    require_labels(raw, label_col)

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
        unseen = sorted(set(raw["validation"].unique(label_col)) - set(values), key=str)
        if unseen:
            raise DataError(f"validation labels {unseen[:5]} never occur in train (train has {label_names})")

    # ---- Tokenise: truncate only; padding happens per batch in the collator.
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    with loading_model(tokenizer_name):  # a missing folder or Hub id: one clear error line
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_name, trust_remote_code=model_args.trust_remote_code
        )
    max_length = min(model_args.max_seq_length, tokenizer.model_max_length)

    def preprocess(batch: dict) -> dict:
        texts = [[t or "" for t in batch[text_col]]]
        if pair_col is not None:
            texts.append([t or "" for t in batch[pair_col]])
        padding = "max_length" if model_args.pad_to_max_length else False
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, padding=padding)
        labels = batch[label_col]
        encoded["labels"] = [float(v) for v in labels] if is_regression else [label_to_id[v] for v in labels]
        return encoded

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = raw.map(
            preprocess,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=raw["train"].column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Tokenizing",
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
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, **label_kwargs
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
    # Full fine-tuning, LoRA adapters (use_lora) or the head only (freeze_backbone); early stopping.
    model = apply_strategy(model, strategy_args, training_args, task_type="SEQ_CLS")

    # ---- Metrics: computed locally (sklearn/scipy), so they work offline.
    if is_regression:
        compute_metrics = regression_metrics(model_args.metrics)
    else:
        compute_metrics = classification_metrics(len(label_names), model_args.metrics)

    # ---- Trainer: dynamic padding; multiples of 8 let fp16/bf16 use tensor cores.
    collator = DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if (training_args.fp16 or training_args.bf16) else None
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )

    # ---- Train, save, evaluate; eval_predictions.jsonl pairs each input with its prediction.
    def decode(predictions: np.ndarray) -> list[dict]:
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        if is_regression:
            return [{"prediction": float(v)} for v in logits.reshape(-1)]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [
            {"prediction": label_names[i], "score": float(p[i])}
            for i, p in zip(probs.argmax(-1), probs, strict=True)
        ]

    eval_inputs = raw["validation"].select_columns([c for c in (text_col, pair_col, label_col) if c])
    if isinstance(feature, ClassLabel):
        eval_inputs = eval_inputs.cast_column(label_col, Value("string")).map(
            lambda ex: {label_col: label_names[int(ex[label_col])]}
        )
    card = {
        "finetuned_from": None if model_args.from_scratch else model_args.model_name_or_path,
        "dataset": data_args.dataset_name or data_args.train_file,
        "tasks": "text-classification",
    }
    return train_and_evaluate(
        trainer, last_checkpoint, eval_inputs=eval_inputs, decode_predictions=decode, model_card=card,
        label_names=label_names or None, strategy=strategy_args,
    )  # fmt: skip


if __name__ == "__main__":
    exit_on_error(main)
