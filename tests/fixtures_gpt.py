"""A tiny GPT-2 with a byte-level BPE tokenizer (optionally with a chat template), templated text
it can learn in seconds, and a question-answer task it can learn as prompt/completion or chat data."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

ANIMALS = ["cat", "dog", "horse", "bird", "fish", "mouse", "goat", "sheep"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
PLACES = ["garden", "river", "market", "forest", "village", "castle"]
EOS = "<|endoftext|>"
# Each animal's colour: the answer the toy question/answer task teaches (six labels).
COLOR_OF = dict(
    zip(ANIMALS, ["red", "blue", "green", "yellow", "purple", "orange", "red", "blue"], strict=True)
)
# A small chat template of the usual shape: role tokens, each turn closed by <|end|>.
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>"
    "{% elif m['role'] == 'user' %}<|user|>"
    "{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def pattern_lines(n: int, seed: int) -> list[str]:
    """Sentences from one template: only the slot words vary, so a model that learns the template
    predicts most tokens, and perplexity falls far below that of a random model."""
    rng = random.Random(seed)
    return [
        f"the {rng.choice(ANIMALS)} sat on the {rng.choice(COLORS)} mat and the "
        f"{rng.choice(ANIMALS)} ran to the {rng.choice(PLACES)}."
        for _ in range(n)
    ]


def color_questions(n: int, seed: int) -> list[dict[str, str]]:
    """Prompt/completion rows: "what color is the <animal> in the <place>?" answered with the
    animal's colour (COLOR_OF), so the answer depends on one word of the prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        rows.append(
            {
                "prompt": f"what color is the {animal} in the {rng.choice(PLACES)}?",
                "completion": COLOR_OF[animal],
            }
        )
    return rows


# No evaluations or checkpoints between the steps, on the CPU, quiet.
QUIET = {
    "eval_strategy": "no",
    "save_strategy": "no",
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
}


def tiny_config(tmp_path: Path, **keys: object) -> list[str]:
    """A user's own minimal config in their own folder (not the recipe's shipped config.yaml), as
    the arguments that run it: the tiny models learn from random init, so a large learning rate and
    a few epochs, full fine-tuning. `keys` add to or replace these settings."""
    values = {
        "learning_rate": 5e-3,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "num_train_epochs": 4,
        **QUIET,
        **keys,
    }
    path = tmp_path / "my_config.yaml"
    path.write_text(
        "".join(f"{k}: {json.dumps(str(v) if isinstance(v, Path) else v)}\n" for k, v in values.items())
    )
    return ["--config", str(path)]


def flags(**settings: object) -> list[str]:
    """Command-line arguments: --key value for each setting, in order (booleans as true/false)."""
    return [
        t
        for key, value in settings.items()
        for t in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_tiny_gpt2(out: Path, n_positions: int = 64, seed: int = 0, chat: bool = False) -> Path:
    """A randomly initialised 2-layer GPT-2 and a byte-level BPE tokenizer trained on the pattern
    text and the colour questions. The tokenizer has no pad token, as GPT-2's has none: the recipe
    must set one. `chat`: the tokenizer also has role tokens, <|end|> and CHAT_TEMPLATE."""
    specials = [EOS, *ROLE_TOKENS.values(), END_OF_TURN] if chat else [EOS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    questions = [f"{row['prompt']} {row['completion']}" for row in color_questions(300, seed=98)]
    tok.train_from_iterator(pattern_lines(500, seed=99) + questions, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        extra_special_tokens=specials[1:],
        model_max_length=n_positions,
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    eos_id = tok.token_to_id(EOS)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=eos_id, eos_token_id=eos_id,
    )  # fmt: skip
    import torch

    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@contextlib.contextmanager
def recorded_training_batches(
    gpt_clm: ModuleType, trainer_class: str = "LengthBucketTrainer"
) -> Iterator[list[dict]]:
    """Every batch the recipe's model is trained on, as it reaches the model (after the collator):
    the recipe module's `trainer_class` (its name there, e.g. "Trainer") records them meanwhile."""
    batches = []

    class RecordingTrainer(getattr(gpt_clm, trainer_class)):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                batches.append({k: v.detach().clone() for k, v in inputs.items()})
            return super().compute_loss(model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpt_clm, trainer_class, RecordingTrainer)
        yield batches
