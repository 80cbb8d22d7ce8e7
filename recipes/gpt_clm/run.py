"""Fine-tune a causal language model (GPT-style): continue plain text, or learn to answer prompts.

    accelerate launch recipes/gpt_clm/run.py                               # gpt2 on WikiText-2 (run_clm)
    accelerate launch recipes/gpt_clm/run.py --config configs/lora.yaml    # the same with LoRA adapters
    python recipes/gpt_clm/run.py --config configs/sft_tweets.yaml         # SmolLM2 answers a question (SFT)
    python recipes/gpt_clm/run.py --train_file corpus.txt --model_name_or_path my/model --block_size 512

Three data shapes, told apart by their columns (or set with `data_format`):
- text (a `text` column, or .txt lines): tokenised, concatenated and cut into blocks of exactly
  `block_size` tokens, so no compute goes to padding; perplexity before and after.
- prompt_completion (`prompt` and `completion` columns) and chat (`messages`, a list of
  {role, content}): supervised fine-tuning. Each example is formatted with the tokenizer's chat
  template, the loss is on the answers only, batches hold examples of similar lengths padded per
  batch (or flattened, `padding_free`), and every validation answer is generated greedily before
  and after training and scored (exact match; accuracy and F1 when the answers are labels).
`sample_prompts` are continued greedily before and after training into samples.jsonl. Keys are
the fields below plus TrainingArguments.
"""

from __future__ import annotations

import json
import logging
import math
import string
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import DataArguments, load_splits, require_columns
from recipes_lib.errors import ConfigError, DataError, exit_on_error, loading_model
from recipes_lib.metrics import classification_metrics
from recipes_lib.sampling import LengthBucketTrainer
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
    write_predictions,
)

logger = logging.getLogger(__name__)

# TrainingArguments this recipe needs, applied under every config (the shipped ones or yours)
# unless the config or the command line sets the key; resolved_config.yaml records them.
TRAINING_DEFAULTS = {
    # Evaluation keeps the loss, not every block's logits (block_size x vocabulary floats each).
    "prediction_loss_only": True,
    # Perplexity before training on the same eval examples (step 0 of the log), beside the final one.
    "eval_on_start": True,
    # Prompt/completion and chat examples in batches of similar lengths: little padding, the
    # batches in random order (LengthBucketTrainer, below). Text blocks all have block_size
    # tokens, so for them this is a plain shuffle.
    "train_sampling_strategy": "group_by_length",
    # Every weight that trains (all, LoRA's, or the untied output layer) is used in each forward
    # pass, so DDP need not traverse the autograd graph each step looking for unused ones.
    "ddp_find_unused_parameters": False,
}

DATA_FORMATS = ("text", "prompt_completion", "chat")
IGNORE_INDEX = -100  # the label of a token the loss skips (PyTorch's cross-entropy ignore_index)
MAX_LABELS = 50  # answers count as labels (accuracy, F1) when train has at most this many distinct ones
# What tokenising a prompt/completion or chat example gives: the model inputs, then where its last
# answer starts, how many tokens it has, and the prompt and answer as text.
SFT_COLUMNS = [
    "input_ids",
    "attention_mask",
    "labels",
    "answer_start",
    "answer_tokens",
    "prompt",
    "reference",
]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="gpt2", metadata={"help": "Hub model id or local folder."})
    gguf_file: str | None = field(default=None, metadata={"help": "A .gguf file in model_name_or_path."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repo."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2, ...; null: the model's default."}
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per block (text) or per example (longer ones are cut); null: min(1024, max)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line breaks of .txt files."})
    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "Continued greedily before and after training into samples.jsonl."}
    )
    sample_max_new_tokens: int = field(default=50, metadata={"help": "Length of each sample in tokens."})
    # ---- Prompt/completion and chat data (supervised fine-tuning)
    data_format: str | None = field(
        default=None,
        metadata={
            "help": (
                "text, prompt_completion or chat; null: chat when there is a messages_column, else "
                "prompt_completion when there are prompt (or prompt_template) and completion columns, "
                "else text."
            )
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    completion_column: str = field(
        default="completion", metadata={"help": "Column holding the answer (a label column works too)."}
    )
    messages_column: str = field(
        default="messages", metadata={"help": "Column holding a conversation: a list of {role, content}."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": (
                "Builds each prompt from the row's columns, e.g. 'Sentiment of: {text}'; "
                "replaces prompt_column."
            )
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message put first in every example; null: none of ours."}
    )
    use_chat_template: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Format examples with the tokenizer's chat template; null: when it has one. "
                "Without one: prompt + completion + eos."
            )
        },
    )
    completion_only_loss: bool = field(
        default=True,
        metadata={"help": "Loss on the assistant's answers only, not on prompts and other turns."},
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": (
                "Each batch as one row without padding, position ids restarting per example. Refused "
                "unless the attention keeps the examples apart (flash_attention_2; checked otherwise)."
            )
        },
    )
    generation_eval: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Generate each validation answer before and after training and score it "
                "(eval_predictions.jsonl); null: true for prompt_completion and chat data."
            )
        },
    )
    generation_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest generated answer; null: the longest training answer."}
    )

    def __post_init__(self) -> None:
        for key in ("block_size", "sample_max_new_tokens", "generation_max_new_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if self.data_format is not None and self.data_format not in DATA_FORMATS:
            raise ValueError(
                f"data_format must be one of {', '.join(DATA_FORMATS)}, got {self.data_format!r}"
            )


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: Trainer
    training_args: TrainingArguments
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    model_args: ModelArguments
    data_format: str
    examples: DatasetDict  # what the model trains and is evaluated on: blocks, or formatted examples
    answers: DatasetDict  # validation/test prompts and reference answers (prompt/completion and chat data)
    label_names: list[str]  # the distinct answers when they are labels, else empty
    generation_eval: bool
    max_new_tokens: int | None  # for the generated answers
    stop_ids: list[int]  # where a generated answer ends: the end-of-turn token (and eos)
    sample_inputs: list[list[int]]  # sample_prompts as token ids (as a user turn for SFT data)
    max_positions: int
    model_card: dict[str, Any]


# ---- Plain text: packing


def group_texts(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate the tokenised texts of `batch` and cut them into blocks of exactly `block_size`
    tokens, dropping the tail shorter than a block. Labels are the inputs (the model shifts them)."""
    stream = {key: list(chain.from_iterable(batch[key])) for key in batch}
    total = len(stream["input_ids"]) // block_size * block_size
    starts = range(0, total, block_size)
    blocks = {key: [ids[i : i + block_size] for i in starts] for key, ids in stream.items()}
    blocks["labels"] = [list(block) for block in blocks["input_ids"]]
    return blocks


# ---- Prompt/completion and chat: examples as conversations, the answers' tokens found in them


def detect_data_format(columns: list[str], args: ModelArguments) -> str:
    """`data_format` when set; else chat when there is a messages column, prompt_completion when
    there are prompt (or a prompt_template) and completion columns, else text."""
    if args.data_format is not None:
        return args.data_format
    if args.messages_column in columns:
        return "chat"
    if args.completion_column in columns and (args.prompt_template or args.prompt_column in columns):
        return "prompt_completion"
    return "text"


def require_format_columns(ds: Dataset, data_format: str, args: ModelArguments) -> None:
    """DataError naming the key whose column is missing (and the columns there are)."""
    if data_format == "text":
        require_columns(ds, [args.text_column], what="text_column")
    elif data_format == "chat":
        require_columns(ds, [args.messages_column], what="messages_column")
    else:
        require_columns(ds, [args.completion_column], what="completion_column")
        if args.prompt_template is None:
            require_columns(ds, [args.prompt_column], what="prompt_column")
        else:
            fields = [f for _, f, _, _ in string.Formatter().parse(args.prompt_template) if f]
            require_columns(ds, [f.split(".")[0].split("[")[0] for f in fields], what="prompt_template field")


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    # TRL's conversational prompt/completion rows hold lists of messages instead of strings.
    if isinstance(value, list):
        return list(value)
    return [{"role": role, "content": "" if value is None else str(value)}]


def example_messages(row: dict[str, Any], data_format: str, args: ModelArguments) -> list[dict[str, str]]:
    """One example as a conversation: a chat row's messages, or a prompt/completion row as a user
    turn and an assistant turn; `system_prompt` first when set."""
    if data_format == "chat":
        messages = row[args.messages_column] or []
    else:
        if args.prompt_template is not None:
            prompt = args.prompt_template.format_map({k: "" if v is None else v for k, v in row.items()})
        else:
            prompt = row[args.prompt_column]
        messages = [*_turns(prompt, "user"), *_turns(row[args.completion_column], "assistant")]
    try:
        messages = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
    except (KeyError, TypeError) as err:
        raise DataError(f"a message must be a mapping with role and content, got {messages!r:.200}") from err
    if args.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": args.system_prompt})
    return messages


def render_chat(
    turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, generation_prompt: bool = False
) -> list[int]:
    """Token ids of `turns` under the chat template; control tokens typed inside a message (a
    tweet quoting <|im_end|>) stay text."""
    return tokenizer.apply_chat_template(
        turns, add_generation_prompt=generation_prompt, sanitize_control_tokens=True, return_dict=False
    )


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, use_chat_template: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """The conversation's token ids and the (start, end) span of each assistant turn in them.

    With the chat template, a turn starts where the conversation before it, rendered with the
    generation prompt, ends, and ends where the conversation up to it ends: the turn's text and
    its end-of-turn token(s). Without one, each message's text is tokenised in turn and each
    assistant turn ends with the eos token (TRL's prompt + completion + eos).
    """
    if not use_chat_template:
        ids: list[int] = []
        spans = []
        for i, message in enumerate(messages):
            piece = tokenizer(message["content"], add_special_tokens=i == 0)["input_ids"]
            if message["role"] == "assistant":
                piece = [*piece, tokenizer.eos_token_id]
                spans.append((len(ids), len(ids) + len(piece)))
            ids += piece
        return ids, spans
    ids = render_chat(messages, tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(messages[:i], tokenizer, generation_prompt=True) if i else []
        through = render_chat(messages[: i + 1], tokenizer) if i + 1 < len(messages) else ids
        if ids[: len(before)] != before or ids[: len(through)] != through:
            raise DataError(
                "the chat template renders a conversation's first turns differently from the whole "
                "conversation (it rewrites earlier turns), so the answers' tokens cannot be found; "
                "set use_chat_template: false or use a template that appends turns"
            )
        spans.append((len(before), len(through)))
    return ids, spans


def sft_features(
    messages: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    use_chat_template: bool,
    completion_only_loss: bool,
    max_length: int,
) -> dict[str, Any]:
    """Model inputs of one conversation, cut at `max_length` tokens: labels are the input ids on
    the assistant turns and IGNORE_INDEX elsewhere (everywhere the inputs, without
    completion_only_loss). Also the last answer's start, length and text, to generate it later."""
    ids, spans = tokenize_conversation(messages, tokenizer, use_chat_template)
    if not spans:
        raise DataError(f"an example has no assistant turn to learn from: {messages!r:.200}")
    labels = [IGNORE_INDEX] * len(ids) if completion_only_loss else list(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    start, end = spans[-1]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {
        "input_ids": ids[:max_length],
        "attention_mask": [1] * min(len(ids), max_length),
        "labels": labels[:max_length],
        "answer_start": start,
        "answer_tokens": end - start,
        "reference": messages[last]["content"],
    }


def shown_prompt(messages: list[dict[str, str]], data_format: str) -> str | list[dict[str, str]]:
    """The prompt as the predictions files show it: a prompt/completion row's prompt text, a chat
    row's turns before its last answer; without the system prompt."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    turns = [m for m in messages[:last] if m["role"] != "system"]
    if data_format == "prompt_completion":
        return "\n".join(m["content"] for m in turns)
    return turns


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool) -> list[int]:
    """Where a generated answer stops: the special token that ends an assistant turn under the
    chat template (SmolLM2: <|im_end|>), and eos."""
    stop = [tokenizer.eos_token_id]
    if use_chat_template:
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        ids, spans = tokenize_conversation(probe, tokenizer, use_chat_template=True)
        special = set(tokenizer.all_special_ids)
        stop += [t for t in ids[spans[-1][0] : spans[-1][1]] if t in special][:1]
    return sorted(set(stop))


def answer_labels(answers: DatasetDict) -> list[str]:
    """The distinct answers (stripped, lower case) when train has 2 to MAX_LABELS of them: the
    labels that accuracy and F1 are computed over (plus any only validation or test has)."""
    train = {normalize(a) for a in answers["train"]["reference"][:]}
    if not 2 <= len(train) <= MAX_LABELS:
        return []
    others = {normalize(a) for split, ds in answers.items() if split != "train" for a in ds["reference"][:]}
    return sorted(train | others)


# ---- Padding-free batches


def check_packed_examples_stay_apart(model: PreTrainedModel, use_cache: bool) -> None:
    """padding_free puts a batch's examples into one row, position ids restarting at each. Refuse
    it (ConfigError) unless the attention keeps them apart: flash attention reads the boundaries
    from the position ids (on a GPU); any other implementation is checked here, as training will
    call it (`use_cache` as TrainingArguments sets it: with a cache, transformers' sdpa and eager
    masks ignore the position ids), comparing an example's logits alone and packed behind another."""
    implementation = model.config._attn_implementation
    if "flash" in implementation:
        return
    vocab = model.config.get_text_config().vocab_size
    first, second = torch.arange(3, 9) % vocab, torch.arange(11, 16) % vocab
    positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = model(input_ids=second[None].to(model.device), use_cache=use_cache).logits.float()
        packed = model(
            input_ids=torch.cat([first, second])[None].to(model.device),
            position_ids=positions[None].to(model.device),
            use_cache=use_cache,
        ).logits[:, len(first) :]
    model.train(was_training)
    if not torch.allclose(alone, packed.float(), rtol=0, atol=1e-3 * float(alone.abs().max()) + 1e-6):
        raise ConfigError(
            f"padding_free: with attn_implementation {implementation!r}"
            f"{' and use_cache: true' if use_cache else ''}, {type(model).__name__} lets the examples "
            "packed into one row attend to each other; set attn_implementation: flash_attention_2 (GPU) "
            "or padding_free: false"
        )


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, DataArguments, StrategyArguments, RunArguments, TrainingArguments),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=TRAINING_DEFAULTS,
    )
    model_args, data_args, strategy_args, run_args, training_args = parsed
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset or local txt/jsonl/csv/parquet; validation carved from train if missing.
    # Its shape (text, prompt_completion or chat) is told by its columns, or set by data_format.
    raw = load_splits(data_args, seed=training_args.seed)
    data_format = detect_data_format(raw["train"].column_names, model_args)
    require_format_columns(raw["train"], data_format, model_args)
    generation_eval = model_args.generation_eval
    if generation_eval is None:
        generation_eval = data_format != "text"
    if data_format == "text" and (generation_eval or model_args.padding_free):
        key = "generation_eval" if generation_eval else "padding_free"
        raise ConfigError(
            f"{key} needs prompt/completion or chat data; these are plain texts (data_format: text)"
        )
    logger.info("data format: %s", data_format)

    # ---- Tokenizer, chat template and block size. The pad token (eos when there is none) pads
    # SFT batches and generate() inputs; packed text never pads.
    name = model_args.model_name_or_path
    gguf = model_args.gguf_file
    remote = model_args.trust_remote_code
    # A missing folder or Hub id, or pickle-only weights: one clear error line.
    with loading_model(name, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
        config = AutoConfig.from_pretrained(name, gguf_file=gguf, trust_remote_code=remote)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_chat_template = model_args.use_chat_template
    if use_chat_template is None:
        use_chat_template = tokenizer.chat_template is not None
    if use_chat_template and tokenizer.chat_template is None and data_format != "text":
        raise ConfigError(f"use_chat_template: {name} has no chat template; set use_chat_template: false")
    max_positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    block_size = model_args.block_size or min(1024, max_positions)
    if block_size > max_positions:
        logger.warning("block_size %d > the model's %d positions: clamped", block_size, max_positions)
        block_size = max_positions
    cached = {
        "num_proc": data_args.preprocessing_num_workers,
        "load_from_cache_file": not data_args.overwrite_cache,
    }

    if data_format == "text":
        # ---- Text: tokenise, then pack into full blocks (labels = input_ids).
        add_newline = model_args.keep_linebreaks and (data_args.train_file or "").lower().endswith(".txt")

        def tokenize(batch: dict) -> dict:
            texts = [(text or "") + ("\n" if add_newline else "") for text in batch[model_args.text_column]]
            return tokenizer(texts, verbose=False)  # no length warning: long texts are cut into blocks next

        with training_args.main_process_first(desc="tokenizing and packing"):
            tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, **cached)
            # Packed per map batch of 1,000 texts: each batch drops less than one block at its end.
            examples = tokenized.map(
                group_texts, batched=True, fn_kwargs={"block_size": block_size}, **cached
            )
        for split in examples:
            if len(examples[split]) == 0:
                raise DataError(f"the {split} split has fewer tokens than block_size ({block_size})")
        answers = DatasetDict()
    else:
        # ---- Prompt/completion and chat: each example a conversation under the chat template, labels
        # IGNORE_INDEX except on the answers (completion_only_loss), cut at block_size tokens.
        def tokenize(batch: dict) -> dict:
            features = []
            for values in zip(*batch.values(), strict=True):
                messages = example_messages(dict(zip(batch, values, strict=True)), data_format, model_args)
                example = sft_features(
                    messages, tokenizer, use_chat_template, model_args.completion_only_loss, block_size
                )
                # An example cut before its answer has nothing to learn or score: dropped.
                if any(label != IGNORE_INDEX for label in example["labels"]):
                    features.append(example | {"prompt": shown_prompt(messages, data_format)})
            return {key: [f[key] for f in features] for key in SFT_COLUMNS}

        with training_args.main_process_first(desc="formatting and tokenizing"):
            tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names, **cached)
        for split, ds in tokenized.items():
            if len(ds) < len(raw[split]):
                logger.warning(
                    "%d %s examples dropped: their answer starts after block_size (%d) tokens",
                    len(raw[split]) - len(ds),
                    split,
                    block_size,
                )
            if len(ds) == 0:
                raise DataError(f"no {split} example has an answer within block_size ({block_size}) tokens")
        examples = tokenized.select_columns(["input_ids", "attention_mask", "labels"])
        answers = tokenized.select_columns(
            ["input_ids", "answer_start", "answer_tokens", "prompt", "reference"]
        )

    # ---- Generated answers: how long, where they stop, and the labels they are scored over.
    stop_ids = end_of_turn_ids(tokenizer, use_chat_template and data_format != "text")
    label_names = answer_labels(answers) if generation_eval else []
    max_new_tokens = model_args.generation_max_new_tokens
    if max_new_tokens is None and generation_eval:
        max_new_tokens = max(answers["train"]["answer_tokens"][:])
    if data_format == "text":
        sample_inputs = [tokenizer(p)["input_ids"] for p in model_args.sample_prompts or []]
    else:  # a user turn (after the system prompt), as the model will be asked
        system = [{"role": "system", "content": model_args.system_prompt}] if model_args.system_prompt else []
        sample_inputs = [
            answer_prompt([*system, {"role": "user", "content": p}], tokenizer, use_chat_template)
            for p in model_args.sample_prompts or []
        ]

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
    if data_format != "text":  # saved with the model: pipeline("text-generation") stops where answers end
        model.generation_config.eos_token_id = stop_ids
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model_args.padding_free:
        check_packed_examples_stay_apart(model, training_args.use_cache)
    # Full fine-tuning, LoRA adapters (use_lora) or the output layer only (freeze_backbone).
    model = apply_strategy(model, strategy_args, task_type="CAUSAL_LM")

    # ---- Batches: text blocks are all block_size long, so they are stacked. SFT examples are
    # padded per batch (labels with IGNORE_INDEX), or flattened into one row (padding_free).
    if data_format == "text":
        collator = default_data_collator
    elif model_args.padding_free:
        collator = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)
    else:
        multiple = (
            8 if (training_args.fp16 or training_args.bf16) else None
        )  # tensor cores like multiples of 8
        collator = DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=multiple
        )

    # ---- Trainer. group_by_length batches come from recipes_lib.sampling.LengthBucketSampler:
    # similar lengths, served in random order (transformers' own sampler serves each group of
    # batches longest first, which leans runs of steps towards a class where length goes with it).
    trainer = LengthBucketTrainer(
        model=model,
        args=training_args,
        train_dataset=examples["train"],
        eval_dataset=examples["validation"],
        processing_class=tokenizer,
        data_collator=collator,
    )
    # What every run promises: a NaN/inf loss stops it before reaching the weights, peak memory is
    # measured, FLOPs counted once, and with early_stopping_patience it stops early on its best checkpoint.
    peak_memory = add_run_guards(trainer, strategy_args)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        model_args=model_args,
        data_format=data_format,
        examples=examples,
        answers=answers,
        label_names=label_names,
        generation_eval=generation_eval,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids,
        sample_inputs=sample_inputs,
        max_positions=max_positions,
        model_card={
            "finetuned_from": None if model_args.from_scratch else name,
            "dataset": data_args.dataset_name or data_args.train_file,
            "tasks": "text-generation",
        },
    )


def answer_prompt(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, use_chat_template: bool
) -> list[int]:
    """Token ids that ask the model for the next assistant turn after `messages`."""
    if use_chat_template:
        return render_chat(messages, tokenizer, generation_prompt=True)
    ids, _ = tokenize_conversation(messages, tokenizer, use_chat_template=False)
    return ids


# ---- Generation and its scores


def generate_answers(
    trainer: Trainer,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    limit: int,
    keep_prompt: bool = False,
) -> list[str]:
    """Greedy continuations (reruns match) of token-id prompts, in their order: only the new text,
    or the prompt and the new text with `keep_prompt`. Batches of per_device_eval_batch_size
    prompts of similar lengths, left-padded. Under several processes each generates a strided
    share (the same number of batches on each, as a sharded model needs) and the answers are
    gathered, so every prompt is generated once."""
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    rank, world = trainer.args.process_index, trainer.args.world_size
    mine = sorted(range(rank, len(prompts), world), key=lambda i: len(prompts[i]))
    mine += (mine[-1:] or [0]) * (math.ceil(len(prompts) / world) - len(mine))  # repeats, dropped below
    size = trainer.args.per_device_eval_batch_size
    generated = []
    for batch in (mine[i : i + size] for i in range(0, len(mine), size)):
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max(1, min(max_new_tokens, limit - width)),
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row, i in enumerate(batch):
            start = width - len(prompts[i]) if keep_prompt else width
            generated.append((i, tokenizer.decode(output[row, start:], skip_special_tokens=True)))
    by_index = dict(gather_object(generated) if world > 1 else generated)
    return [by_index[i] for i in range(len(prompts))]


def answer_inputs(answers: Dataset) -> list[list[int]]:
    """Each example's tokens before its (last) answer: what the model answers."""
    return [
        ids[:start] for ids, start in zip(answers["input_ids"][:], answers["answer_start"][:], strict=True)
    ]


def normalize(answer: str) -> str:
    """An answer as exact match compares it: without surrounding whitespace, in lower case."""
    return answer.strip().casefold()


def answer_metrics(
    answers: list[str], references: list[str], label_names: list[str], prefix: str
) -> dict[str, float]:
    """`<prefix>_exact_match` of generated answers; with labels, also `<prefix>_accuracy` and
    `<prefix>_f1` through bert_cls's metric functions (binary: F1 of the second label in sorted
    order; more labels: macro). An answer outside the labels is wrong: it is scored as the label
    after the reference (for two labels, the other one)."""
    predicted = [normalize(a) for a in answers]
    expected = [normalize(r) for r in references]
    metrics = {
        f"{prefix}_exact_match": float(np.mean([p == e for p, e in zip(predicted, expected, strict=True)]))
    }
    if label_names:
        index = {name: i for i, name in enumerate(label_names)}
        refs = np.array([index[e] for e in expected])
        preds = np.array(
            [index.get(p, (r + 1) % len(label_names)) for p, r in zip(predicted, refs, strict=True)]
        )
        compute = classification_metrics(len(label_names), ["accuracy", "f1"])
        scores = compute(EvalPrediction(predictions=np.eye(len(label_names))[preds], label_ids=refs))
        metrics.update({f"{prefix}_accuracy": scores["accuracy"], f"{prefix}_f1": scores["f1"]})
    return metrics


def write_answers(
    path: Path, answers: Dataset, generated: list[str], before: list[str] | None = None
) -> None:
    """eval/test_predictions.jsonl: each example's prompt, reference answer, generated answer and
    whether they match (after stripping whitespace and case); the same before training."""
    rows = []
    for i, (answer, reference) in enumerate(zip(generated, answers["reference"][:], strict=True)):
        row = {"answer": answer, "correct": normalize(answer) == normalize(reference)}
        if before is not None:
            row |= {
                "answer_before": before[i],
                "correct_before": normalize(before[i]) == normalize(reference),
            }
        rows.append(row)
    write_predictions(path, answers.select_columns(["prompt", "reference"]), rows)


def perplexity(loss: float) -> float:
    """exp(mean loss per token); inf instead of an OverflowError for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)
    prompts = setup.model_args.sample_prompts or []
    keep_prompt = setup.data_format == "text"  # text samples read as the prompt continued
    sample_args = (setup.model_args.sample_max_new_tokens, setup.stop_ids, setup.max_positions, keep_prompt)
    answer_args = (setup.max_new_tokens, setup.stop_ids, setup.max_positions)

    # ---- Before training: the samples' continuations and every validation answer generated, to
    # compare with the same after training.
    samples_before = generate_answers(trainer, setup.sample_inputs, *sample_args)
    if setup.generation_eval:
        answers_before = generate_answers(trainer, answer_inputs(setup.answers["validation"]), *answer_args)

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model.
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate: perplexity = exp(eval_loss), the mean loss per token (per answer token for
    # prompt/completion and chat data), before and after.
    output = predict(trainer, setup.examples["validation"], "eval")
    eval_metrics = {**output.metrics, **metrics_before_training(trainer.state.log_history)}
    eval_metrics["perplexity"] = perplexity(eval_metrics["eval_loss"])
    if "eval_loss_before" in eval_metrics:
        eval_metrics["perplexity_before"] = perplexity(eval_metrics["eval_loss_before"])

    # ---- Generated answers, scored before and after: exact match, and accuracy and F1 when the
    # answers are labels; one line per example in eval_predictions.jsonl.
    if setup.generation_eval:
        validation = setup.answers["validation"]
        answers = generate_answers(trainer, answer_inputs(validation), *answer_args)
        references = validation["reference"][:]
        eval_metrics |= answer_metrics(answers, references, setup.label_names, "eval")
        scores_before = answer_metrics(answers_before, references, setup.label_names, "eval")
        eval_metrics |= {f"{key}_before": value for key, value in scores_before.items()}
        if trainer.is_world_process_zero():
            write_answers(out / "eval_predictions.jsonl", validation, answers, answers_before)
    metrics |= save_results(trainer, "eval", eval_metrics)

    # ---- Test split, if any: its loss and perplexity, and its generated answers scored.
    if "test" in setup.examples:
        output = predict(trainer, setup.examples["test"], "test")
        output.metrics["test_perplexity"] = perplexity(output.metrics["test_loss"])
        if setup.generation_eval:
            test = setup.answers["test"]
            answers = generate_answers(trainer, answer_inputs(test), *answer_args)
            output.metrics |= answer_metrics(answers, test["reference"][:], setup.label_names, "test")
            if trainer.is_world_process_zero():
                write_answers(out / "test_predictions.jsonl", test, answers)
        metrics |= save_results(trainer, "test", output.metrics)

    # ---- Samples: each prompt's greedy continuation before and after, one JSON line each.
    samples_after = generate_answers(trainer, setup.sample_inputs, *sample_args)
    if prompts and trainer.is_world_process_zero():
        rows = zip(prompts, samples_before, samples_after, strict=True)
        lines = [json.dumps({"prompt": p, "before": b, "after": a}, ensure_ascii=False) for p, b, a in rows]
        atomic_write(out / "samples.jsonl", "\n".join(lines) + "\n")

    # ---- LoRA: save the adapters folded into the weights, after evaluating the adapter model.
    if setup.strategy_args.merge_lora and trainer.is_world_process_zero():
        merge_lora_into(out, trainer.model)

    # ---- Report: trainer_state.json, all_results.json, training_curves.png, model card, table.
    finish_run(trainer, metrics, setup.model_card)
    return metrics


if __name__ == "__main__":
    exit_on_error(main)
