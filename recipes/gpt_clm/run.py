"""Fine-tune a causal language model (GPT-style) on raw text and report perplexity.

    accelerate launch recipes/gpt_clm/run.py                               # gpt2 on WikiText-2 (run_clm)
    accelerate launch recipes/gpt_clm/run.py --config configs/lora.yaml    # the same with LoRA adapters
    python recipes/gpt_clm/run.py --train_file corpus.txt --model_name_or_path my/model --block_size 512

Texts are tokenised, concatenated and cut into blocks of exactly `block_size` tokens, so no
compute goes to padding. Keys are the fields below plus TrainingArguments.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import DataArguments, load_splits, require_columns
from recipes_lib.errors import DataError, exit_on_error, loading_model
from recipes_lib.strategies import StrategyArguments, apply_strategy
from recipes_lib.training import prepare_output_dir, setup_logging, train_and_evaluate

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="gpt2", metadata={"help": "Hub model id or local folder."})
    gguf_file: str | None = field(default=None, metadata={"help": "A .gguf file in model_name_or_path."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repo."})
    block_size: int | None = field(default=None, metadata={"help": "Tokens per block; null: min(1024, max)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line breaks of .txt files."})
    sample_prompt: str | None = field(default=None, metadata={"help": "Continued in output_dir/sample.txt."})
    sample_max_new_tokens: int = field(default=50, metadata={"help": "Length of the sample in tokens."})

    def __post_init__(self) -> None:
        for key in ("block_size", "sample_max_new_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


def group_texts(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate the tokenised texts of `batch` and cut them into blocks of exactly `block_size`
    tokens, dropping the tail shorter than a block. Labels are the inputs (the model shifts them)."""
    stream = {key: list(chain.from_iterable(batch[key])) for key in batch}
    total = len(stream["input_ids"]) // block_size * block_size
    starts = range(0, total, block_size)
    blocks = {key: [ids[i : i + block_size] for i in starts] for key, ids in stream.items()}
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def perplexity(loss: float) -> float:
    """exp(mean loss per token); inf instead of an OverflowError for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def main(argv: list[str] | None = None) -> dict[str, float]:
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, DataArguments, StrategyArguments, RunArguments, TrainingArguments),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
    )
    model_args, data_args, strategy_args, run_args, training_args = parsed
    training_args.prediction_loss_only = True  # eval keeps the loss, not every block's logits (huge)
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset or local txt/jsonl/csv; validation carved from train if missing.
    raw = load_splits(data_args, seed=training_args.seed)
    require_columns(raw["train"], [model_args.text_column], what="text_column")
    add_newline = model_args.keep_linebreaks and (data_args.train_file or "").lower().endswith(".txt")

    # ---- Tokenizer and block size. Packing never pads; the pad token (eos) is for generate().
    name, gguf, remote = model_args.model_name_or_path, model_args.gguf_file, model_args.trust_remote_code
    with loading_model(name):  # a missing folder or Hub id: one clear error line
        tokenizer = AutoTokenizer.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
        config = AutoConfig.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    block_size = model_args.block_size or min(1024, max_positions)
    if block_size > max_positions:
        logger.warning("block_size %d > the model's %d positions: clamped", block_size, max_positions)
        block_size = max_positions

    # ---- Tokenise, then pack into full blocks (labels = input_ids).
    def tokenize(batch: dict) -> dict:
        texts = [(text or "") + ("\n" if add_newline else "") for text in batch[model_args.text_column]]
        return tokenizer(texts, verbose=False)  # no length warning: long texts are cut into blocks next

    procs, reuse = data_args.preprocessing_num_workers, not data_args.overwrite_cache
    cached = {"num_proc": procs, "load_from_cache_file": reuse}
    with training_args.main_process_first(desc="tokenizing and packing"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, **cached)
        # Packed per map batch of 1,000 texts: each batch drops less than one block at its end.
        blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": block_size}, **cached)
    for split in ("train", "validation"):
        if len(blocks[split]) == 0:
            raise DataError(f"the {split} split has fewer tokens than block_size ({block_size})")

    # ---- Model: pretrained (a GGUF unpacked to float32 weights, so it trains and saves), or random init.
    set_seed(training_args.seed)
    if model_args.from_scratch:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
    else:
        if gguf:  # GgufConfig is not in early transformers 5.x releases: imported for GGUF files only
            from transformers import GgufConfig
        unpack = GgufConfig(dequantize=True) if gguf else None
        model = AutoModelForCausalLM.from_pretrained(
            name, config=config, gguf_file=gguf, quantization_config=unpack, trust_remote_code=remote
        )

    # ---- Full fine-tuning, LoRA adapters (use_lora; merge_lora folds them in when saving), or the
    # output layer only (freeze_backbone); early stopping.
    model = apply_strategy(model, strategy_args, training_args, task_type="CAUSAL_LM")

    # ---- Trainer: every block is block_size long, so the default collator just stacks them.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )

    # ---- Perplexity before training, on the same eval blocks (logged as eval_loss at step 0).
    before = trainer.evaluate()

    # ---- Train, save, evaluate: perplexity = exp(eval_loss), the mean loss per token.
    base, source = None if model_args.from_scratch else name, data_args.dataset_name or data_args.train_file
    card = {"finetuned_from": base, "dataset": source, "tasks": "text-generation"}
    metrics = train_and_evaluate(
        trainer,
        last_checkpoint,
        extra_metrics={"perplexity_before": perplexity(before["eval_loss"])},
        derived_metrics=lambda m: {"perplexity": perplexity(m["eval_loss"])},
        model_card=card,
        strategy=strategy_args,
    )

    # ---- Sample: greedy (reruns match), within the model's positions; on every process, since
    # a sharded model needs them all.
    if model_args.sample_prompt:
        model = trainer.model
        inputs = tokenizer(model_args.sample_prompt, return_tensors="pt").to(model.device)
        new_tokens = min(model_args.sample_max_new_tokens, max_positions - inputs["input_ids"].shape[1])
        output = model.eval().generate(
            **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        sample = tokenizer.decode(output[0], skip_special_tokens=True)
        logger.info("sample: %s", sample)
        if training_args.should_save:
            (Path(training_args.output_dir) / "sample.txt").write_text(sample + "\n", encoding="utf-8")
    return metrics


if __name__ == "__main__":
    exit_on_error(main)
