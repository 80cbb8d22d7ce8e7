"""Fine-tune a causal language model (GPT-style) on plain text and report perplexity.

    accelerate launch recipes/gpt_clm/run.py                               # gpt2 on WikiText-2 (run_clm)
    accelerate launch recipes/gpt_clm/run.py --config configs/lora.yaml    # the same with LoRA adapters
    python recipes/gpt_clm/run.py --config configs/demo.yaml               # SmolLM2 + LoRA on Hamlet, offline
    python recipes/gpt_clm/run.py --train_file corpus.txt --model_name_or_path my/model --block_size 512

Texts (a `text` column, or the lines of .txt files) are tokenised, concatenated and cut into
blocks of exactly `block_size` tokens, so no compute goes to padding; perplexity is measured
before and after training, and `sample_prompts` are continued greedily before and after into
samples.jsonl. Keys are the fields below plus TrainingArguments.

Prompt/completion and chat data (instruction tuning) is another recipe's job: recipes/sft
(recipes/sft/README.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
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
from recipes_lib.general_eval import GeneralEval, GeneralEvalArguments
from recipes_lib.strategies import StrategyArguments, apply_strategy, merge_lora_into
from recipes_lib.training import (
    PeakMemory,
    add_run_guards,
    atomic_write,
    finish_run,
    metrics_before_training,
    predict,
    prepare_output_dir,
    save_results,
    setup_logging,
    train_metrics,
)

logger = logging.getLogger(__name__)

# TrainingArguments this recipe needs, applied under every config (the shipped ones or yours)
# unless the config or the command line sets the key; resolved_config.yaml records them.
TRAINING_DEFAULTS = {
    # Evaluation keeps the loss, not every block's logits (block_size x vocabulary floats each).
    "prediction_loss_only": True,
    # Perplexity before training on the same eval blocks (step 0 of the log), beside the final one.
    "eval_on_start": True,
    # Every weight that trains (all, LoRA's, or the untied output layer) is used in each forward
    # pass, so DDP need not traverse the autograd graph each step looking for unused ones.
    "ddp_find_unused_parameters": False,
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="gpt2", metadata={"help": "Hub model id or local folder."})
    gguf_file: str | None = field(default=None, metadata={"help": "A .gguf file in model_name_or_path."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repo."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2, ...; null: the model's default."}
    )


@dataclass
class TextArguments:
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line breaks of .txt files."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training block; null: min(1024, the model's positions)."}
    )

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


@dataclass
class SampleArguments:
    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "Continued greedily before and after training into samples.jsonl."}
    )
    sample_max_new_tokens: int = field(default=50, metadata={"help": "Length of each sample in tokens."})

    def __post_init__(self) -> None:
        if self.sample_max_new_tokens < 1:
            raise ValueError(f"sample_max_new_tokens must be >= 1, got {self.sample_max_new_tokens}")


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: Trainer
    training_args: TrainingArguments
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    sample_args: SampleArguments
    blocks: DatasetDict  # every split packed into block_size blocks
    max_positions: int  # the model's context: samples stay within it
    general: GeneralEval  # zero-shot tasks (general_eval) scored before and after training
    model_card: dict[str, Any]


# ---- Data: plain text only


def require_plain_text(ds: Dataset, text_column: str) -> None:
    """DataError when `text_column` is missing: prompt/completion and chat data get a line saying
    that they are recipes/sft's, anything else the missing column and the columns there are."""
    columns = set(ds.column_names)
    if text_column not in columns and ("messages" in columns or {"prompt", "completion"} <= columns):
        shape = "chat data (messages)" if "messages" in columns else "prompt/completion data"
        raise DataError(
            f"text_column {text_column!r} not found and these are {shape}: gpt_clm trains on plain text; "
            "use recipes/sft for prompt/completion and chat data (recipes/sft/README.md)"
        )
    require_columns(ds, [text_column], what="text_column")


def group_texts(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate the tokenised texts of `batch` and cut them into blocks of exactly `block_size`
    tokens, dropping the tail shorter than a block. Labels are the inputs (the model shifts them)."""
    stream = {key: list(chain.from_iterable(batch[key])) for key in batch}
    total = len(stream["input_ids"]) // block_size * block_size
    starts = range(0, total, block_size)
    blocks = {key: [ids[i : i + block_size] for i in starts] for key, ids in stream.items()}
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (
            ModelArguments,
            TextArguments,
            SampleArguments,
            DataArguments,
            StrategyArguments,
            GeneralEvalArguments,
            RunArguments,
            TrainingArguments,
        ),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=TRAINING_DEFAULTS,
    )
    model_args, text_args, sample_args, data_args, strategy_args, general_args, run_args, training_args = (
        parsed
    )
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset or local txt/jsonl/csv/parquet; validation carved from train if missing.
    raw = load_splits(data_args, seed=training_args.seed)
    require_plain_text(raw["train"], text_args.text_column)

    # ---- Tokenizer and block size. Packing never pads; the pad token (eos) is for generate().
    name = model_args.model_name_or_path
    gguf = model_args.gguf_file
    remote = model_args.trust_remote_code
    # A missing folder or Hub id, or pickle-only weights: one clear error line.
    with loading_model(name, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
        config = AutoConfig.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    block_size = text_args.block_size or min(1024, max_positions)
    if block_size > max_positions:
        logger.warning("block_size %d > the model's %d positions: clamped", block_size, max_positions)
        block_size = max_positions

    # ---- Tokenise, then pack into full blocks (labels = input_ids).
    add_newline = text_args.keep_linebreaks and (data_args.train_file or "").lower().endswith(".txt")

    def tokenize(batch: dict) -> dict:
        texts = [(text or "") + ("\n" if add_newline else "") for text in batch[text_args.text_column]]
        return tokenizer(texts, verbose=False)  # no length warning: long texts are cut into blocks next

    cached = {
        "num_proc": data_args.preprocessing_num_workers,
        "load_from_cache_file": not data_args.overwrite_cache,
    }
    with training_args.main_process_first(desc="tokenizing and packing"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, **cached)
        # Packed per map batch of 1,000 texts: each batch drops less than one block at its end.
        blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": block_size}, **cached)
    for split in blocks:
        if len(blocks[split]) == 0:
            raise DataError(f"the {split} split has fewer tokens than block_size ({block_size})")

    # ---- Model: pretrained (a GGUF unpacked to float32 weights, so it trains and saves), or random init.
    set_seed(training_args.seed)
    attention = (
        {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    )
    if model_args.from_scratch:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote, **attention)
    else:
        unpack = None
        if gguf:  # GgufConfig is not in early transformers 5.x releases: imported for GGUF files only
            from transformers import GgufConfig

            unpack = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(
            name,
            config=config,
            gguf_file=gguf,
            quantization_config=unpack,
            trust_remote_code=remote,
            **attention,
        )
    # Full fine-tuning, LoRA adapters (use_lora) or the output layer only (freeze_backbone).
    model = apply_strategy(model, strategy_args, task_type="CAUSAL_LM")

    # ---- Trainer: every block is block_size long, so the default collator just stacks them.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    # What every run promises: a NaN/inf loss stops it before reaching the weights, peak memory is
    # measured, FLOPs counted once, and with early_stopping_patience it stops early on its best checkpoint.
    peak_memory = add_run_guards(trainer, strategy_args)
    # General ability: the general_eval tasks scored zero-shot as training starts (and after it).
    general = GeneralEval(general_args, tokenizer)
    general.attach(trainer)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        sample_args=sample_args,
        blocks=blocks,
        max_positions=max_positions,
        general=general,
        model_card={
            "finetuned_from": None if model_args.from_scratch else name,
            "dataset": data_args.dataset_name or data_args.train_file,
            "tasks": "text-generation",
        },
    )


# ---- Samples and perplexity


def continue_prompts(
    trainer: Trainer, prompts: list[str], max_new_tokens: int, max_positions: int
) -> list[str]:
    """Each prompt and its greedy continuation (reruns match), within the model's positions. Every
    process generates them all, as a sharded model needs."""
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        new_tokens = max(1, min(max_new_tokens, max_positions - inputs["input_ids"].shape[1]))
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        samples.append(tokenizer.decode(output[0], skip_special_tokens=True))
    return samples


def write_samples(path: Path, prompts: list[str], before: list[str], after: list[str]) -> None:
    """samples.jsonl: one line per prompt, {"prompt", "before", "after"}."""
    rows = zip(prompts, before, after, strict=True)
    lines = [json.dumps({"prompt": p, "before": b, "after": a}, ensure_ascii=False) for p, b, a in rows]
    atomic_write(path, "\n".join(lines) + "\n")


def perplexity(loss: float) -> float:
    """exp(mean loss per token); inf instead of an OverflowError for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)
    prompts = setup.sample_args.sample_prompts or []
    sample_length = (setup.sample_args.sample_max_new_tokens, setup.max_positions)

    # ---- Before training: each sample prompt continued, to compare with the same after training.
    samples_before = continue_prompts(trainer, prompts, *sample_length)

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model.
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate: perplexity = exp(eval_loss), the mean loss per token; before is step 0's.
    output = predict(trainer, setup.blocks["validation"], "eval")
    eval_metrics = {**output.metrics, **metrics_before_training(trainer.state.log_history)}
    eval_metrics["perplexity"] = perplexity(eval_metrics["eval_loss"])
    if "eval_loss_before" in eval_metrics:
        eval_metrics["perplexity_before"] = perplexity(eval_metrics["eval_loss_before"])
    metrics |= save_results(trainer, "eval", eval_metrics)

    # ---- Test split, if any: its loss and perplexity.
    if "test" in setup.blocks:
        output = predict(trainer, setup.blocks["test"], "test")
        output.metrics["test_perplexity"] = perplexity(output.metrics["test_loss"])
        metrics |= save_results(trainer, "test", output.metrics)

    # ---- Samples: each prompt's greedy continuation before and after, one JSON line each.
    samples_after = continue_prompts(trainer, prompts, *sample_length)
    if prompts and trainer.is_world_process_zero():
        write_samples(out / "samples.jsonl", prompts, samples_before, samples_after)

    # ---- General ability (general_eval): the zero-shot scores now, beside step 0's, and the deltas.
    if setup.general:
        metrics |= save_results(trainer, "general", setup.general.after_training(trainer))

    # ---- LoRA: save the adapters folded into the weights, after evaluating the adapter model.
    if setup.strategy_args.merge_lora and trainer.is_world_process_zero():
        merge_lora_into(out, trainer.model)

    # ---- Report: trainer_state.json, all_results.json, training_curves.png, model card, table.
    finish_run(trainer, metrics, setup.model_card)
    return metrics


if __name__ == "__main__":
    exit_on_error(main)
