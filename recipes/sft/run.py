"""Instruction tuning (SFT) of a causal language model on TRL's SFTTrainer: it learns to answer.

    accelerate launch recipes/sft/run.py           # SmolLM2-135M-Instruct + LoRA on tweets (offline assets)
    python recipes/sft/run.py --train_file qa.jsonl --model_name_or_path my/model
    python recipes/sft/run.py --config my.yaml --use_lora false --learning_rate 2e-5

The data is in one of TRL's standard shapes, told apart by its columns:
- prompt/completion (`prompt` and `completion` columns, plain strings or lists of messages; or a
  `prompt_template` that builds the prompt from any columns, and any column as the completion):
  the loss is on the completion only;
- chat (`messages`, a list of {role, content}): the loss is on every assistant turn, including the
  token that ends it, under any chat template.
SFTTrainer formats, tokenises, masks, pads (or packs) and computes the loss. This script adds what
the recipes promise: the config contract, resume, results files, and every validation prompt
answered greedily before and after training and scored (exact match; accuracy and F1 when the
answers are labels) into eval_predictions.jsonl.
"""

from __future__ import annotations

import contextlib
import logging
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from jinja2 import TemplateError
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, set_seed
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import has_generation_markers

from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import DataArguments, load_splits, require_columns
from recipes_lib.errors import ConfigError, DataError, exit_on_error, loading_model
from recipes_lib.general_eval import GeneralEval, GeneralEvalArguments
from recipes_lib.generation import (
    AnswerScorer,
    ScoresAnswersAtEvaluation,
    answer_labels,
    chat_prompt,
    end_of_turn_ids,
    evaluate_in_bf16,
    normalize,
)
from recipes_lib.strategies import StrategyArguments, apply_strategy, merge_lora_into
from recipes_lib.training import (
    PeakMemory,
    add_run_guards,
    finish_run,
    fused_head_on_answer_tokens,
    metrics_before_training,
    prepare_output_dir,
    save_results,
    setup_logging,
    train_metrics,
)

logger = logging.getLogger(__name__)

# Settings this recipe needs under every config (the shipped ones or yours) unless the config or
# the command line sets the key; resolved_config.yaml records what applied.
RECIPE_DEFAULTS = {
    # TRL turns activation checkpointing on: it saves memory on long sequences and costs ~20-30% of
    # each step in recomputation. Short examples and small models fit without it.
    "activation_checkpointing": False,
    # The answers' loss before training (step 0 of the log) beside the final one.
    "eval_on_start": True,
    # Evaluation keeps the loss, not every token's logits over the vocabulary.
    "prediction_loss_only": True,
    # Random batches keep each batch's mix of answers; length-grouped batches of label data lean
    # towards one answer where length goes with it (tweets: accuracy 0.58 random vs 0.42 grouped).
    "train_sampling_strategy": "random",
    # LoRA on every linear layer of a decoder LM (the QLoRA paper's finding), not peft's q/v only:
    # 5-class news topics in 40 steps, accuracy 0.87 vs 0.65 (issue 24's measurement).
    "lora_target_modules": ["all-linear"],
    # No dropout on the adapters' input: runs of a few hundred steps do not overfit, and dropout
    # costs ~20% of a LoRA step on a CPU (measured on SmolLM2-135M, recipes/sft/README.md).
    "lora_dropout": 0.0,
    # Every weight that trains is used in each forward pass: no unused-parameter search under DDP.
    "ddp_find_unused_parameters": False,
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct", metadata={"help": "Hub model id or local folder."}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "A .gguf file in model_name_or_path."})
    # trust_remote_code is SFTConfig's own key.
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2, ...; null: the model's default."}
    )


@dataclass
class ChatDataArguments:
    """Which columns hold the conversation, and how a prompt/completion row becomes one."""

    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    completion_column: str = field(
        default="completion", metadata={"help": "Column holding the answer (a label column works too)."}
    )
    messages_column: str = field(
        default="messages", metadata={"help": "Column holding a conversation: a list of {role, content}."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Builds each prompt from the row's columns, e.g. 'Sentiment of: {text}'."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message put first in every example; null: none of ours."}
    )
    use_chat_template: bool | None = field(
        default=None,
        metadata={"help": "Format with the tokenizer's chat template; null: when it has one."},
    )
    balance_answers: bool = field(
        default=False,
        metadata={
            "help": "When the answers are labels: train on as many examples of each as the rarest has "
            "(a seeded sample of the others), so a few hundred steps do not teach the majority answer."
        },
    )


@dataclass
class GenerationArguments:
    """The validation answers, generated and scored at every evaluation."""

    generation_eval: bool = field(
        default=True,
        metadata={
            "help": "Generate and score the validation answers at every evaluation (before training, "
            "each eval_strategy evaluation, the final one): eval_accuracy, eval_f1, eval_exact_match."
        },
    )
    generation_eval_max_examples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluations during training score a fixed, seeded subset of this many examples; "
            "null: all. Before training and the final evaluation always score every example."
        },
    )
    generation_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest generated answer; null: the longest training answer."}
    )
    eval_bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Evaluate (loss and generated answers) under bf16 autocast; null: where the hardware "
            "computes bf16 natively (a CPU with AVX512-BF16 or AMX, a bf16 GPU) and training is in float32."
        },
    )

    def __post_init__(self) -> None:
        for key in ("generation_max_new_tokens", "generation_eval_max_examples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


class AnswerScoringSFTTrainer(ScoresAnswersAtEvaluation, SFTTrainer):
    """SFTTrainer whose every evaluation also generates the answers and scores them
    (recipes_lib.generation), so the best checkpoint and early stopping can go by what the model
    answers, not only by its loss."""


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: AnswerScoringSFTTrainer
    training_args: SFTConfig
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    test_examples: Dataset | None  # the test split as SFTTrainer takes it, if there is one
    answer_scorer: AnswerScorer | None  # the answers generated and scored at each evaluation
    general: GeneralEval  # zero-shot tasks (general_eval) scored before and after training
    model_card: dict[str, Any]


# ---- Data: each row in one of TRL's shapes


def data_format(train: Dataset, args: ChatDataArguments) -> str:
    """chat when there is a messages column, prompt_completion with a completion column and a
    prompt (column or template); anything else is not SFT data (DataError saying what is)."""
    columns = train.column_names
    if args.messages_column in columns:
        return "chat"
    if args.completion_column in columns and (args.prompt_template or args.prompt_column in columns):
        if args.prompt_template:  # each {field} of the template must be a column
            fields = [f for _, f, _, _ in string.Formatter().parse(args.prompt_template) if f]
            require_columns(train, [f.split(".")[0].split("[")[0] for f in fields], "prompt_template field")
        return "prompt_completion"
    raise DataError(
        f"no {args.messages_column!r} column and no {args.prompt_column!r} (or prompt_template) and "
        f"{args.completion_column!r} columns (columns: {', '.join(columns)}); set messages_column, or "
        "prompt_column/prompt_template and completion_column. For plain text use recipes/gpt_clm"
    )


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):  # TRL's conversational prompt/completion: lists of messages
        return [{"role": m["role"], "content": m["content"] or ""} for m in value]
    return [{"role": role, "content": "" if value is None else str(value)}]


def to_conversation(row: dict[str, Any], fmt: str, args: ChatDataArguments) -> dict[str, list]:
    """One row as TRL's conversational prompt/completion: the turns before the (last) answer, and
    the answer; `system_prompt` first unless the row has its own system turn."""
    if fmt == "chat":
        try:
            messages = _turns(row[args.messages_column] or [], "user")
        except (KeyError, TypeError) as err:
            raise DataError(
                f"a message must have a role and a content: {row[args.messages_column]!r:.200}"
            ) from err
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not answers:
            raise DataError(f"a conversation has no assistant turn to learn from: {messages!r:.200}")
        prompt, completion = messages[: answers[-1]], messages[answers[-1] :]
    else:
        if args.prompt_template is not None:
            text = args.prompt_template.format_map({k: "" if v is None else v for k, v in row.items()})
        else:
            text = row[args.prompt_column]
        prompt = _turns(text, "user")
        completion = _turns(row[args.completion_column], "assistant")
    if not completion[-1]["content"].strip():
        raise DataError(f"an example has an empty answer (prompt: {prompt[-1]['content']!r:.120})")
    if args.system_prompt is not None and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": args.system_prompt})
    return {"prompt": prompt, "completion": completion}


def shown_prompt(prompt: list[dict[str, str]], fmt: str) -> str | list[dict[str, str]]:
    """The prompt as the predictions files show it, without the system turn: the prompt text of a
    prompt/completion row, the turns before the answer of a chat row."""
    turns = [m for m in prompt if m["role"] != "system"]
    return "\n\n".join(m["content"] for m in turns) if fmt == "prompt_completion" else turns


def balanced_answers(train: Dataset, seed: int) -> Dataset:
    """As many examples of each answer as the rarest answer has, a seeded sample of each, in a
    seeded order; refused (ConfigError) when the answers are not labels."""
    answers = [normalize(c[-1]["content"]) for c in train["completion"]]
    if not answer_labels(answers):
        raise ConfigError("balance_answers: the training answers are not labels (2 to 50 distinct ones)")
    rng = np.random.default_rng(seed)
    by_answer: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        by_answer.setdefault(answer, []).append(i)
    n = min(len(indices) for indices in by_answer.values())
    chosen = [i for indices in by_answer.values() for i in rng.choice(indices, n, replace=False)]
    logger.info("balance_answers: %d examples of each of %d answers", n, len(by_answer))
    return train.select(rng.permutation(chosen).tolist())


def as_text(example: dict[str, list]) -> dict[str, str]:
    """Without a chat template: TRL's plain prompt/completion, the prompt's turns one per paragraph
    and a line break before the answer (SFTTrainer appends eos to the completion)."""
    prompt = "\n\n".join(m["content"] for m in example["prompt"]) + "\n"
    return {"prompt": prompt, "completion": "\n\n".join(m["content"] for m in example["completion"])}


def with_assistant_masks(example: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    """A conversation's token ids and the mask of every assistant turn in them, for a chat template
    without TRL's generation markers (TRL then builds the labels from `assistant_masks`).

    A turn starts where the conversation before it, rendered with the generation prompt, ends, and
    ends where the conversation up to it ends: its text and the token(s) closing it, so the model
    learns to stop. Needs a template that appends turns without rewriting earlier ones."""
    messages = example["prompt"] + example["completion"]
    ids = tokenizer.apply_chat_template(messages, return_dict=False)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, return_dict=False)
        through = tokenizer.apply_chat_template(messages[: i + 1], return_dict=False)
        if ids[: len(before)] != before or ids[: len(through)] != through:
            raise DataError(
                "the chat template renders a conversation's first turns differently from the whole "
                "conversation (it rewrites earlier turns), so the answers' tokens cannot be found; "
                "use a template that appends turns, or prompt/completion data"
            )
        mask[len(before) : len(through)] = [1] * (len(through) - len(before))
    return {"input_ids": ids, "assistant_masks": mask}


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, ChatDataArguments, GenerationArguments, DataArguments, StrategyArguments)
        + (GeneralEvalArguments, RunArguments, SFTConfig),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=RECIPE_DEFAULTS | precision_default(),
    )
    (
        model_args,
        chat_args,
        generation_args,
        data_args,
        strategy_args,
        general_args,
        run_args,
        training_args,
    ) = parsed
    if "gradient_checkpointing" in run_args.explicit_keys:  # else the recipe's default would win silently
        raise ConfigError("gradient_checkpointing: deprecated name; set activation_checkpointing instead")
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Tokenizer: its chat template formats every example; its pad token pads the batches.
    name, gguf = model_args.model_name_or_path, model_args.gguf_file
    with loading_model(name, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(
            name, gguf_file=gguf, trust_remote_code=training_args.trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_chat_template = chat_args.use_chat_template
    if use_chat_template is None:
        use_chat_template = tokenizer.chat_template is not None
    if use_chat_template and tokenizer.chat_template is None:
        raise ConfigError(f"use_chat_template: {name} has no chat template; set use_chat_template: false")

    # ---- Data: Hub dataset or local jsonl/csv/parquet; validation carved from train if missing.
    # Each row becomes TRL's conversational prompt/completion (the answer: the last assistant turn).
    raw = load_splits(data_args, seed=training_args.seed)
    fmt = data_format(raw["train"], chat_args)
    if fmt == "chat" and not use_chat_template:
        raise ConfigError("chat data (messages) needs a chat template; set use_chat_template: true")
    with training_args.main_process_first(desc="formatting"):
        conversations = raw.map(
            to_conversation,
            fn_kwargs={"fmt": fmt, "args": chat_args},
            remove_columns=raw["train"].column_names,
            load_from_cache_file=not data_args.overwrite_cache,
        )
    if chat_args.balance_answers:
        conversations["train"] = balanced_answers(conversations["train"], training_args.seed)
    # What SFTTrainer trains on. prompt/completion: the loss on the completion (completion_only_loss).
    # Chat: on every assistant turn; TRL's assistant_only_loss reads a template's generation markers,
    # and for templates without them (most) our own mask goes to TRL as `assistant_masks`.
    with template_errors():
        if not use_chat_template:
            examples = conversations.map(as_text, remove_columns=["prompt", "completion"])
        elif fmt == "prompt_completion":
            examples = conversations
        elif has_generation_markers(tokenizer.chat_template):
            training_args.assistant_only_loss = True
            examples = conversations.map(
                lambda ex: {"messages": ex["prompt"] + ex["completion"]},
                remove_columns=["prompt", "completion"],
            )
        else:
            with training_args.main_process_first(desc="masking assistant turns"):
                examples = conversations.map(
                    with_assistant_masks,
                    fn_kwargs={"tokenizer": tokenizer},
                    remove_columns=["prompt", "completion"],
                    load_from_cache_file=not data_args.overwrite_cache,
                )

        # ---- Generated answers: each validation/test prompt as the model will be asked, the answer
        # it should give, where an answer stops, how long it may be, and the labels it is scored over.
        answers = {
            "eval" if split == "validation" else split: {
                "prompts": [ask(c, tokenizer, use_chat_template) for c in conversations[split]],
                "shown": [shown_prompt(c["prompt"], fmt) for c in conversations[split]],
                "references": [c["completion"][-1]["content"] for c in conversations[split]],
            }
            for split in conversations
            if split != "train"
        }
    train_references = [c[-1]["content"] for c in conversations["train"]["completion"]]
    others = [r for a in answers.values() for r in a["references"]]
    stop_ids = end_of_turn_ids(tokenizer, use_chat_template)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in train_references)
    answer_scorer = None
    if generation_args.generation_eval:
        answer_scorer = AnswerScorer(
            answers,
            label_names=answer_labels(train_references, others),
            max_new_tokens=generation_args.generation_max_new_tokens or longest + len(stop_ids),
            stop_ids=stop_ids,
            max_examples=generation_args.generation_eval_max_examples,
            seed=training_args.seed,
        )

    # ---- Model: pretrained (a GGUF unpacked to float32 weights, so it trains and saves).
    set_seed(training_args.seed)  # before the LoRA adapters are initialised
    unpack = None
    if gguf:  # GgufConfig is not in early transformers 5.x releases: imported for GGUF files only
        from transformers import GgufConfig

        unpack = GgufConfig(dequantize=True)
    with loading_model(name, run_args.allow_pickle_checkpoints):
        model = AutoModelForCausalLM.from_pretrained(
            name,
            gguf_file=gguf,
            quantization_config=unpack,
            trust_remote_code=training_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,  # None: the model's default
        )
    # Saved with the model: pipeline("text-generation") stops where an answer ends.
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # ---- Which weights train: LoRA adapters through SFTTrainer's peft_config, the output layer
    # alone (freeze_backbone), or every weight.
    peft_config = lora_config(strategy_args) if strategy_args.use_lora else None
    if strategy_args.freeze_backbone:
        model = apply_strategy(model, strategy_args, task_type="CAUSAL_LM")

    # ---- Trainer: TRL tokenises, masks, pads per batch (or packs: `packing`) and computes the loss
    # (on a CPU over the answer tokens only, as on a GPU: 1.7x faster a step).
    fused_head_on_answer_tokens(training_args)
    with template_errors():
        trainer = AnswerScoringSFTTrainer(
            model=model,
            args=training_args,
            train_dataset=examples["train"],
            eval_dataset=examples["validation"],
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    trainer.answer_scorer = answer_scorer  # generated answers scored at every evaluation
    trainer.eval_bf16 = evaluate_in_bf16(generation_args.eval_bf16, training_args)  # ~2x faster where native
    # General ability: the general_eval tasks scored zero-shot as training starts (and after it).
    general = GeneralEval(general_args, tokenizer)
    general.attach(trainer)
    # What every run promises: a NaN/inf loss stops it before reaching the weights, peak memory is
    # measured, FLOPs counted once, and with early_stopping_patience it stops early on its best checkpoint.
    peak_memory = add_run_guards(trainer, strategy_args)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        test_examples=examples.get("test"),
        answer_scorer=answer_scorer,
        general=general,
        model_card={
            "finetuned_from": name,
            "dataset": data_args.dataset_name or data_args.train_file,
            "tasks": "text-generation",
        },
    )


def precision_default() -> dict[str, bool]:
    """TRL's configs turn bf16 on everywhere; here it is off (float32) unless a GPU supports it,
    where the config layer turns it on (as in every recipe)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return {}
    return {"bf16": False}


def lora_config(strategy_args: StrategyArguments) -> LoraConfig:
    """peft's LoRA settings from the strategy keys; `all-linear` adapts every linear layer but the
    output layer."""
    targets = strategy_args.lora_target_modules
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=strategy_args.lora_r,
        lora_alpha=strategy_args.lora_alpha,
        lora_dropout=strategy_args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )


@contextlib.contextmanager
def template_errors() -> Iterator[None]:
    """One DataError line for a conversation the chat template refuses (a role it does not know,
    a system turn where it allows none), wherever it is rendered."""
    try:
        yield
    except TemplateError as err:
        raise DataError(f"the chat template rejects a conversation: {err}") from err


def ask(conversation: dict[str, list], tokenizer: PreTrainedTokenizerBase, templated: bool) -> list[int]:
    """Token ids that ask for the answer: the prompt turns with the template's generation prompt,
    or the plain prompt text, as SFTTrainer formats it for training."""
    if templated:
        return chat_prompt(conversation["prompt"], tokenizer)
    return tokenizer(as_text(conversation)["prompt"])["input_ids"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)
    scorer = setup.answer_scorer

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model. Every
    # evaluation (the one before training included: eval_on_start) gives the loss on the answers'
    # tokens and the generated answers' scores.
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate every validation example: loss, exact match, and accuracy and F1 when the answers
    # are labels; the same before training; one line per example in eval_predictions.jsonl.
    if scorer is not None:
        scorer.score_every_example()
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_samples"] = len(trainer.eval_dataset)
    eval_metrics |= metrics_before_training(trainer.state.log_history)
    if scorer is not None and trainer.is_world_process_zero():
        scorer.write_predictions(out / "eval_predictions.jsonl", "eval")
    metrics |= save_results(trainer, "eval", eval_metrics)

    # ---- Test split, if any: its loss and its generated answers, scored.
    if setup.test_examples is not None:
        test_metrics = trainer.evaluate(setup.test_examples, metric_key_prefix="test")
        test_metrics["test_samples"] = len(setup.test_examples)
        if scorer is not None and trainer.is_world_process_zero():
            scorer.write_predictions(out / "test_predictions.jsonl", "test")
        metrics |= save_results(trainer, "test", test_metrics)

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
