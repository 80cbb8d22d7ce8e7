"""A tiny GPT-2 with a byte-level BPE tokenizer, and templated text it can learn in seconds."""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

ANIMALS = ["cat", "dog", "horse", "bird", "fish", "mouse", "goat", "sheep"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
PLACES = ["garden", "river", "market", "forest", "village", "castle"]
EOS = "<|endoftext|>"


def pattern_lines(n: int, seed: int) -> list[str]:
    """Sentences from one template: only the slot words vary, so a model that learns the template
    predicts most tokens, and perplexity falls far below that of a random model."""
    rng = random.Random(seed)
    return [
        f"the {rng.choice(ANIMALS)} sat on the {rng.choice(COLORS)} mat and the "
        f"{rng.choice(ANIMALS)} ran to the {rng.choice(PLACES)}."
        for _ in range(n)
    ]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_tiny_gpt2(out: Path, n_positions: int = 64, seed: int = 0) -> Path:
    """A randomly initialised 2-layer GPT-2 and a byte-level BPE tokenizer trained on the pattern
    text. The tokenizer has no pad token, as GPT-2's has none: the recipe must set one."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(pattern_lines(500, seed=99), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=n_positions
    )
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
