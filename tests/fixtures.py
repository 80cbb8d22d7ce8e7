"""Tiny models built from configs and small generated data that a model can really learn."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

POSITIVE = ["great", "wonderful", "superb", "delightful", "brilliant", "lovely", "excellent", "charming"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "painful", "clumsy"]
FILLER = ["the", "film", "was", "and", "a", "story", "with", "actors", "plot", "music", "this", "really",
          "quite", "scene", "ending", "its", "of", "very", "an", "movie"]  # fmt: skip
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "mouse"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def _filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Single sentences whose label is set by the sentiment words they contain."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        words = _filler(rng, rng.randint(3, 12)) + rng.sample(
            POSITIVE if label == "positive" else NEGATIVE, 2
        )
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs with one animal word: label 1 when it is in the second sentence.

    The words alone do not tell the label; only which sentence of the pair holds the animal
    does, so the recipe must encode the two texts as a pair (segments) for a model to learn it.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s1, s2 = _filler(rng, rng.randint(2, 6)), _filler(rng, rng.randint(2, 6))
        label = int(rng.random() < 0.5)
        (s2 if label else s1).insert(rng.randint(0, 2), rng.choice(ANIMALS))
        rows.append({"sentence1": " ".join(s1), "sentence2": " ".join(s2), "label": label})
    return rows


def regression_rows(n: int, seed: int) -> list[dict]:
    """Pairs scored 0-5 by how many positive words the two sentences hold together."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k1, k2 = rng.randint(0, 3), rng.randint(0, 2)
        s1 = _filler(rng, rng.randint(2, 6)) + rng.sample(POSITIVE, k1)
        s2 = _filler(rng, rng.randint(2, 6)) + rng.sample(POSITIVE, k2)
        rng.shuffle(s1)
        rng.shuffle(s2)
        rows.append({"sentence1": " ".join(s1), "sentence2": " ".join(s2), "label": float(k1 + k2)})
    return rows


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_tiny_bert(
    out: Path, hidden: int = 64, layers: int = 2, seed: int = 0, dropout: float = 0.1
) -> Path:
    """A randomly initialised 2-layer BERT and a WordPiece tokenizer over the fixture words.

    The vocabulary is spelled out, not trained: the WordPiece trainer breaks ties between equally
    frequent merges in hash order, so each training gave other subwords and ids (and the tests
    that train on top of the model other margins). Trained on these words it ends with every word
    whole anyway; here that is the vocabulary: the special tokens, each character alone and as a
    word's continuation, each fixture word, in sorted order.
    """
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ANIMALS + COLORS))
    chars = sorted({c for w in words for c in w})
    tokens = list(dict.fromkeys(special + chars + [f"##{c}" for c in chars] + words))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=128, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    import torch

    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
