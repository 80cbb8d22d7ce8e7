"""Preference tuning (DPO) of a causal LM on TRL's DPOTrainer: it learns which answer is preferred.

    accelerate launch recipes/dpo/run.py       # SmolLM2-135M-Instruct + LoRA on tweet pairs (offline assets)
    python recipes/dpo/run.py --train_file pairs.jsonl --model_name_or_path my/model
    python recipes/dpo/run.py --model_name_or_path outputs/sft/tweets   # SFT first, then DPO

The data is in one of TRL's preference shapes, told apart by its columns:
- explicit prompt: `prompt`, `chosen` and `rejected` columns, plain strings or lists of messages
  (or a `prompt_template` that builds the prompt from any columns);
- implicit prompt: `chosen` and `rejected` conversations that share their first turns (the prompt);
- labelled rows (`rejected_from_labels`): a label column as the chosen answer and another of the
  labels, drawn per row, as the rejected one.
DPOTrainer formats, tokenises, pads and computes the preference loss against a reference model: with
LoRA the same model with its adapters off (no second copy), else a frozen copy. This script adds what
the recipes promise: the config contract, resume, results files, the held-out preference metrics
(eval_rewards/accuracies, eval_rewards/margins, eval_logps/chosen) before and after training, and,
when the chosen answers are labels, every validation prompt answered greedily and scored.
"""

from __future__ import annotations

import contextlib
import copy
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
from peft import AutoPeftModelForCausalLM, LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, set_seed
from trl import DPOConfig, DPOTrainer
from trl.data_utils import extract_prompt

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
    # TRL turns activation checkpointing on: it saves memory on long sequences and recomputes every
    # forward pass. Short pairs on a small model fit without it (BENCHMARKS.md: its cost per pair).
    "activation_checkpointing": False,
    # The preference metrics before training (step 0 of the log) beside the final ones: at step 0
    # the policy is the reference, so eval_loss is ln 2 and the rewards are 0.
    "eval_on_start": True,
    # Evaluation keeps the loss and TRL's preference metrics, not every token's logits.
    "prediction_loss_only": True,
    # LoRA on every linear layer of a decoder LM (the QLoRA paper's finding), not peft's q/v only.
    "lora_target_modules": ["all-linear"],
    # No dropout on the adapters' input: runs of a few hundred steps do not overfit, dropout costs
    # ~20% of a CPU step, and DPOTrainer turns the model's own dropout off (disable_dropout).
    "lora_dropout": 0.0,
    # Every weight that trains is used in each forward pass: no unused-parameter search under DDP.
    "ddp_find_unused_parameters": False,
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Hub model id, local folder, or a LoRA adapter folder (an sft output)."},
    )
    continue_adapter: bool = field(
        default=False,
        metadata={
            "help": "When model_name_or_path is a LoRA adapter folder (e.g. recipes/sft's output): false "
            "merges it into its base weights and trains new adapters (use_lora) or every weight, against "
            "the merged model as the reference; true keeps training that adapter, against a frozen copy "
            "of it (TRL's 'ref' adapter)."
        },
    )
    # trust_remote_code is DPOConfig's own key.
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2, ...; null: the model's default."}
    )


@dataclass
class PreferenceDataArguments:
    """Which columns hold the prompt and the two answers, and how a row becomes a pair."""

    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    chosen_column: str = field(
        default="chosen", metadata={"help": "Column holding the preferred answer (or conversation)."}
    )
    rejected_column: str = field(
        default="rejected", metadata={"help": "Column holding the other answer (or conversation)."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Builds each prompt from the row's columns, e.g. 'Sentiment of: {text}'."},
    )
    rejected_from_labels: bool = field(
        default=False,
        metadata={
            "help": "No rejected column: the chosen column holds labels (2 to 50 distinct values in train), "
            "and each row's rejected answer is another of them, drawn per row (seeded). Classification "
            "data as preference pairs."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message put first in every prompt; null: none of ours."}
    )
    use_chat_template: bool | None = field(
        default=None,
        metadata={"help": "Format with the tokenizer's chat template; null: when it has one."},
    )


@dataclass
class GenerationArguments:
    """The validation answers, generated and scored at every evaluation."""

    generation_eval: bool | None = field(
        default=None,
        metadata={
            "help": "Generate the validation prompts' answers at every evaluation and score them against "
            "the chosen answers (eval_accuracy, eval_f1, eval_exact_match); null: when the chosen "
            "answers are labels (2 to 50 distinct ones in train)."
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
        default=None,
        metadata={"help": "Longest generated answer; null: the longest chosen training answer."},
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


class AnswerScoringDPOTrainer(ScoresAnswersAtEvaluation, DPOTrainer):
    """DPOTrainer whose every evaluation can also generate the answers and score them
    (recipes_lib.generation), beside TRL's preference metrics."""


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: AnswerScoringDPOTrainer
    training_args: DPOConfig
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    test_pairs: Dataset | None  # the test split as DPOTrainer takes it, if there is one
    answer_scorer: AnswerScorer | None  # the answers generated and scored at each evaluation
    general: GeneralEval  # zero-shot tasks (general_eval) scored before and after training
    model_card: dict[str, Any]


# ---- Data: each row as one of TRL's preference pairs


def data_format(train: Dataset, args: PreferenceDataArguments) -> str:
    """explicit (a prompt column or template beside the answers) or implicit (chosen and rejected
    conversations whose shared first turns are the prompt); anything else is one DataError line."""
    columns = train.column_names
    answers = [args.chosen_column] + ([] if args.rejected_from_labels else [args.rejected_column])
    missing = [c for c in answers if c not in columns]
    if missing:
        raise DataError(
            f"no {missing[0]!r} column (columns: {', '.join(columns)}): preference data needs "
            f"{args.chosen_column!r} and {args.rejected_column!r} answers (set chosen_column/"
            "rejected_column, or rejected_from_labels for labelled rows); for prompt/completion data "
            "use recipes/sft"
        )
    if args.prompt_template:  # each {field} of the template must be a column
        fields = [f for _, f, _, _ in string.Formatter().parse(args.prompt_template) if f]
        require_columns(train, [f.split(".")[0].split("[")[0] for f in fields], "prompt_template field")
        return "explicit"
    if args.prompt_column in columns:
        return "explicit"
    if isinstance(train[0][args.chosen_column], list) and not args.rejected_from_labels:
        return "implicit"
    raise DataError(
        f"no {args.prompt_column!r} column and no prompt_template, and the answers are not conversations "
        f"that hold the prompt (columns: {', '.join(columns)}); set prompt_column or prompt_template"
    )


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):  # TRL's conversational shape: lists of messages
        try:
            return [{"role": m["role"], "content": m["content"] or ""} for m in value]
        except (KeyError, TypeError) as err:
            raise DataError(f"a message must have a role and a content: {value!r:.200}") from err
    return [{"role": role, "content": "" if value is None else str(value)}]


def other_label(chosen: str, labels: list[str], seed: int, index: int) -> str:
    """A label other than `chosen`, the same for a row on every run (seeded by the row's index)."""
    others = [label for label in labels if normalize(label) != normalize(chosen)]
    return others[np.random.default_rng([seed, index]).integers(len(others))]


def to_pair(
    row: dict[str, Any], index: int, fmt: str, args: PreferenceDataArguments, labels: list[str], seed: int
) -> dict[str, list]:
    """One row as TRL's conversational preference pair: the prompt turns, the chosen and the
    rejected answer turns; `system_prompt` first unless the row has its own system turn."""
    chosen = row[args.chosen_column]
    rejected = other_label(str(chosen), labels, seed, index) if args.rejected_from_labels else None
    rejected = row[args.rejected_column] if rejected is None else rejected
    if fmt == "implicit":
        split = extract_prompt({"chosen": _turns(chosen, "user"), "rejected": _turns(rejected, "user")})
        prompt, chosen_turns, rejected_turns = split["prompt"], split["chosen"], split["rejected"]
    else:
        if args.prompt_template is not None:
            text = args.prompt_template.format_map({k: "" if v is None else v for k, v in row.items()})
        else:
            text = row[args.prompt_column]
        prompt = _turns(text, "user")
        chosen_turns, rejected_turns = _turns(chosen, "assistant"), _turns(rejected, "assistant")
    shown = prompt[-1]["content"] if prompt else ""
    for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        if not turns or not turns[-1]["content"].strip():
            raise DataError(f"an example has an empty {name} answer (prompt: {shown!r:.120})")
    if chosen_turns == rejected_turns:
        raise DataError(
            f"an example's chosen and rejected answers are identical ({chosen_turns[-1]['content']!r:.80}; "
            f"prompt: {shown!r:.120}): it carries no preference; drop it or fix the rejected answer"
        )
    if args.system_prompt is not None and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": args.system_prompt})
    return {"prompt": prompt, "chosen": chosen_turns, "rejected": rejected_turns}


def chosen_labels(train: Dataset, args: PreferenceDataArguments) -> list[str]:
    """rejected_from_labels: the distinct chosen answers of train (stripped), refused (ConfigError)
    unless there are 2 to 50 of them."""
    if not args.rejected_from_labels:
        return []
    values = sorted({str(v).strip() for v in train[args.chosen_column] if v is not None and str(v).strip()})
    if not answer_labels(values):
        raise ConfigError(
            f"rejected_from_labels: the {args.chosen_column!r} column holds {len(values)} distinct answers, "
            "not labels (2 to 50); give a rejected column instead"
        )
    return values


def shown_prompt(prompt: list[dict[str, str]], fmt: str) -> str | list[dict[str, str]]:
    """The prompt as the predictions files show it, without the system turn: the prompt text of a
    single-turn prompt, the turns before the answer otherwise."""
    turns = [m for m in prompt if m["role"] != "system"]
    return turns[0]["content"] if len(turns) == 1 else turns


def as_text(pair: dict[str, list]) -> dict[str, str]:
    """Without a chat template: TRL's plain preference pair, the prompt's turns one per paragraph
    and a line break before the answers (DPOTrainer appends eos to each answer)."""
    return {
        "prompt": "\n\n".join(m["content"] for m in pair["prompt"]) + "\n",
        "chosen": "\n\n".join(m["content"] for m in pair["chosen"]),
        "rejected": "\n\n".join(m["content"] for m in pair["rejected"]),
    }


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, PreferenceDataArguments, GenerationArguments, DataArguments, StrategyArguments)
        + (GeneralEvalArguments, RunArguments, DPOConfig),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=RECIPE_DEFAULTS | precision_default(),
    )
    (
        model_args,
        pair_args,
        generation_args,
        data_args,
        strategy_args,
        general_args,
        run_args,
        training_args,
    ) = parsed
    if "gradient_checkpointing" in run_args.explicit_keys:  # else the recipe's default would win silently
        raise ConfigError("gradient_checkpointing: deprecated name; set activation_checkpointing instead")
    name = model_args.model_name_or_path
    adapter_folder = (Path(name) / "adapter_config.json").is_file()
    if model_args.continue_adapter and not adapter_folder:
        raise ConfigError(f"continue_adapter: {name} is not a LoRA adapter folder (no adapter_config.json)")
    if model_args.continue_adapter and (strategy_args.use_lora or strategy_args.freeze_backbone):
        raise ConfigError("continue_adapter trains the folder's adapter: set use_lora, freeze_backbone false")
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Tokenizer: its chat template formats every pair; its pad token pads the batches.
    with loading_model(name, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_chat_template = pair_args.use_chat_template
    if use_chat_template is None:
        use_chat_template = tokenizer.chat_template is not None
    if use_chat_template and tokenizer.chat_template is None:
        raise ConfigError(f"use_chat_template: {name} has no chat template; set use_chat_template: false")

    # ---- Data: Hub dataset or local jsonl/csv/parquet; validation carved from train if missing.
    # Each row becomes TRL's conversational preference pair (prompt, chosen and rejected turns).
    raw = load_splits(data_args, seed=training_args.seed)
    fmt = data_format(raw["train"], pair_args)
    labels = chosen_labels(raw["train"], pair_args)
    with training_args.main_process_first(desc="formatting"):
        pairs = raw.map(
            to_pair,
            with_indices=True,
            fn_kwargs={"fmt": fmt, "args": pair_args, "labels": labels, "seed": training_args.seed},
            remove_columns=raw["train"].column_names,
            load_from_cache_file=not data_args.overwrite_cache,
        )
    if not use_chat_template and any(len(p) > 1 for p in pairs["train"]["chosen"]):
        raise ConfigError("multi-turn answers need a chat template; set use_chat_template: true")
    # What DPOTrainer trains on: conversational pairs under the chat template, else plain text.
    examples = pairs
    if not use_chat_template:
        examples = pairs.map(as_text, remove_columns=["prompt", "chosen", "rejected"])

    # ---- Generated answers: each validation/test prompt as the model will be asked, the chosen
    # answer as the reference, where an answer stops, how long it may be, the labels it is scored over.
    train_references = [c[-1]["content"] for c in pairs["train"]["chosen"]]
    generation_eval = generation_args.generation_eval
    if generation_eval is None:
        generation_eval = bool(answer_labels(train_references))
    answer_scorer = None
    stop_ids = end_of_turn_ids(tokenizer, use_chat_template)
    if generation_eval:
        with template_errors():
            answers = {
                "eval" if split == "validation" else split: {
                    "prompts": [ask(p, tokenizer, use_chat_template) for p in pairs[split]["prompt"]],
                    "shown": [shown_prompt(p, fmt) for p in pairs[split]["prompt"]],
                    "references": [c[-1]["content"] for c in pairs[split]["chosen"]],
                }
                for split in pairs
                if split != "train"
            }
        others = [r for a in answers.values() for r in a["references"]]
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in train_references)
        answer_scorer = AnswerScorer(
            answers,
            label_names=answer_labels(train_references, others),
            max_new_tokens=generation_args.generation_max_new_tokens or longest + len(stop_ids),
            stop_ids=stop_ids,
            max_examples=generation_args.generation_eval_max_examples,
            seed=training_args.seed,
        )

    # ---- Model: pretrained, or an sft output folder (a LoRA adapter: merged, or trained on).
    set_seed(training_args.seed)  # before the LoRA adapters are initialised
    attn = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    with loading_model(name, run_args.allow_pickle_checkpoints):
        if adapter_folder:
            model = AutoPeftModelForCausalLM.from_pretrained(
                name, is_trainable=model_args.continue_adapter, **attn
            )
            if not model_args.continue_adapter:
                model = model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name, trust_remote_code=training_args.trust_remote_code, **attn
            )
    # Saved with the model: pipeline("text-generation") stops where an answer ends.
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # ---- Which weights train, and the reference model. LoRA (use_lora, through DPOTrainer's
    # peft_config): the reference is the same model with its adapters off, no second copy. Every
    # weight or the output layer alone: a frozen copy, made here (TRL would reload it from the
    # base checkpoint, not from a merged sft model); none with precompute_ref_log_probs.
    peft_config = lora_config(strategy_args) if strategy_args.use_lora else None
    ref_model = None
    if peft_config is None and not model_args.continue_adapter and not training_args.precompute_ref_log_probs:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if strategy_args.freeze_backbone:
        model = apply_strategy(model, strategy_args, task_type="CAUSAL_LM")

    # ---- Trainer: TRL tokenises, pads per batch and computes the preference loss (on a CPU over
    # the answer tokens only, as on a GPU).
    fused_head_on_answer_tokens(training_args)
    with template_errors():
        trainer = AnswerScoringDPOTrainer(
            model=model,
            ref_model=ref_model,
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
    # TRL drops a pair whose prompt fills max_length (nothing of its answers would be left): refused
    # here instead, so no example is lost silently.
    refuse_long_prompts(trainer.train_dataset, examples["train"], "train", training_args.max_length)
    refuse_long_prompts(trainer.eval_dataset, examples["validation"], "validation", training_args.max_length)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        test_pairs=examples.get("test"),
        answer_scorer=answer_scorer,
        general=general,
        model_card={
            "finetuned_from": name,
            "dataset": data_args.dataset_name or data_args.train_file,
            "tasks": "text-generation",
        },
    )


def refuse_long_prompts(prepared: Dataset, given: Dataset, split: str, max_length: int | None) -> None:
    """One DataError line when DPOTrainer dropped pairs of `split` whose prompt alone has
    `max_length` tokens or more."""
    dropped = len(given) - len(prepared)
    if dropped:
        raise DataError(
            f"{dropped} {split} example(s) have a prompt of max_length ({max_length}) tokens or more, so "
            "no token of their answers fits; raise max_length or shorten those prompts"
        )


def precision_default() -> dict[str, bool]:
    """TRL's configs turn bf16 on everywhere; here it is off (float32) unless a GPU supports it,
    where the config layer turns it on (as in every recipe)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return {}
    return {"bf16": False}


def lora_config(strategy_args: StrategyArguments) -> LoraConfig:
    """peft's LoRA settings from the strategy keys; `all-linear` adapts every linear layer but the
    output layer (DPOTrainer refuses an adapter there)."""
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


def ask(prompt: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, templated: bool) -> list[int]:
    """Token ids that ask for the answer: the prompt turns with the template's generation prompt,
    or the plain prompt text, as DPOTrainer formats it for training."""
    if templated:
        return chat_prompt(prompt, tokenizer)
    return tokenizer(as_text({"prompt": prompt, "chosen": [], "rejected": []})["prompt"])["input_ids"]


def warn_if_chosen_falls(metrics: dict[str, Any]) -> None:
    """DPO widens the margin between the answers, which it can do by lowering both: a chosen
    answer's log-probability that falls while the margin grows means the policy drifts away from
    answering (issue 26: generations got worse). Said once, with the remedies."""
    keys = ("eval_logps/chosen", "eval_logps/chosen_before")
    keys += ("eval_rewards/margins", "eval_rewards/margins_before")
    if not all(k in metrics for k in keys):
        return
    if metrics[keys[0]] < metrics[keys[1]] and metrics[keys[2]] > metrics[keys[3]]:
        logger.warning(
            "the chosen answers' log-probability fell (%.3f -> %.3f) while the margin grew (%.3f -> %.3f): "
            "the policy prefers the chosen answers less in absolute terms; add an NLL term on them "
            "(loss_type: [sigmoid, sft]), lower the learning rate or raise beta, or start from an sft model",
            metrics[keys[1]],
            metrics[keys[0]],
            metrics[keys[3]],
            metrics[keys[2]],
        )


def as_test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """DPOTrainer logs its preference metrics with the eval_ prefix whatever the split: the test
    split's keep test_ (eval_rewards/accuracies of the test evaluation -> test_rewards/accuracies)."""
    return {(f"test_{k[5:]}" if k.startswith("eval_") else k): v for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)
    scorer = setup.answer_scorer

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model. Every
    # evaluation (the one before training included: eval_on_start) gives TRL's preference metrics
    # and, when they are scored, the generated answers' scores.
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate every validation pair: loss, rewards/accuracies and margins, the chosen answers'
    # log-probability; the same before training; generated answers in eval_predictions.jsonl.
    if scorer is not None:
        scorer.score_every_example()
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_samples"] = len(trainer.eval_dataset)
    eval_metrics |= metrics_before_training(trainer.state.log_history)
    warn_if_chosen_falls(eval_metrics)
    if scorer is not None and trainer.is_world_process_zero():
        scorer.write_predictions(out / "eval_predictions.jsonl", "eval")
    metrics |= save_results(trainer, "eval", eval_metrics)

    # ---- Test split, if any: its preference metrics and its generated answers, scored.
    if setup.test_pairs is not None:
        test_metrics = as_test_metrics(trainer.evaluate(setup.test_pairs, metric_key_prefix="test"))
        test_metrics["test_samples"] = len(setup.test_pairs)
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
