"""bert_cls with a decoder LM as the backbone: a tiny Llama built from a config, whose tokenizer has no
pad token, learns the generated sentiment task with full fine-tuning and with LoRA; its saved
folder (adapter merged or not) loads in pipeline("text-classification") with class names; left and
right padding give the same logits; the decoder defaults (LoRA on every linear layer, the head at
its own learning rate) are what the optimizer gets and what resolved_config.yaml records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import load_recipe
from fixtures import NEGATIVE, POSITIVE, sentiment_rows, write_csv
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    pipeline,
)

from recipes_lib.metrics import classification_metrics
from recipes_lib.strategies import DECODER_HEAD_LEARNING_RATE, is_decoder_lm

bert_cls = load_recipe("bert_cls")
EOS = "</s>"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A randomly initialised 2-layer Llama and a byte-level BPE tokenizer with bos/eos and no pad
    token (as Llama's and GPT-2's have none): the recipe must set one."""
    out = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([row["text"] for row in sentiment_rows(400, seed=11)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token=EOS, model_max_length=64
    )
    assert tokenizer.pad_token is None
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id(EOS),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    return write_csv(d / "train.csv", sentiment_rows(400, seed=1)), write_csv(
        d / "dev.csv", sentiment_rows(100, 2)
    )


def run(model, data, out, *extra):
    train, dev = data
    argv = ["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--output_dir", str(out), "--num_train_epochs", "4", "--per_device_train_batch_size", "16",
            "--use_cpu", "true", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
            *extra]  # fmt: skip
    return bert_cls.main(argv)


def classify_fixed_texts(model, tokenizer=None):
    classify = pipeline("text-classification", model=model if tokenizer else str(model), tokenizer=tokenizer)
    pos = classify(f"the film was {POSITIVE[0]} and {POSITIVE[1]}")[0]["label"]
    neg = classify(f"a story with {NEGATIVE[0]} and {NEGATIVE[2]} music")[0]["label"]
    return pos, neg


def logits_with_padding(folder, texts, side):
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side=side)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_full_finetuning_learns_pools_the_last_real_token_and_loads_in_a_pipeline(tiny_llama, data, tmp_path):
    out = tmp_path / "full"
    metrics = run(tiny_llama, data, out, "--learning_rate", "3e-3")
    assert metrics["eval_accuracy"] >= 0.9

    # Padded with eos (no pad token in the tokenizer), in the tokenizer and the model config alike.
    config = AutoConfig.from_pretrained(out)
    assert config.pad_token_id == AutoTokenizer.from_pretrained(out).pad_token_id == config.eos_token_id
    assert config.id2label == {0: "negative", 1: "positive"}
    # The new head trained at head_learning_rate (the decoder default), recorded in the resolved config.
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["head_learning_rate"] == pytest.approx(max(DECODER_HEAD_LEARNING_RATE, 3e-3))

    assert classify_fixed_texts(out) == ("positive", "negative")
    # Texts of very different lengths: the shorter ones are padded on the left or on the right,
    # and the head reads each one's last real token either way.
    texts = ["the film was great", f"the music and the plot and the story and the ending were {NEGATIVE[3]}"]
    right, left = logits_with_padding(out, texts, "right"), logits_with_padding(out, texts, "left")
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)
    alone = torch.cat([logits_with_padding(out, [t], "right") for t in texts])
    torch.testing.assert_close(right, alone, atol=1e-4, rtol=1e-4)

    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 100 and {p["prediction"] for p in predictions} <= {"negative", "positive"}


def test_lora_learns_on_every_linear_layer_with_a_faster_head_and_loads_merged_or_not(
    tiny_llama, data, tmp_path
):
    out = tmp_path / "lora"
    metrics = run(tiny_llama, data, out, "--use_lora", "true", "--learning_rate", "5e-3")
    assert metrics["eval_accuracy"] >= 0.9
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["lora_target_modules"] == ["all-linear"]
    assert resolved["head_learning_rate"] == pytest.approx(5e-3)  # the lr, when higher than the default's
    results = json.loads((out / "all_results.json").read_text())
    assert results["trainable_params"] < results["total_params"] / 4
    # The adapter folder (LoRA + the score head) loads onto its base by transformers' peft integration;
    # the class names come from the caller (a config.json there would make it a full-model folder).
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    model = AutoModelForSequenceClassification.from_pretrained(out, **labels)
    assert classify_fixed_texts(model, tokenizer=str(out)) == ("positive", "negative")

    merged = tmp_path / "merged"
    metrics_merged = run(tiny_llama, data, merged, "--use_lora", "true", "--learning_rate", "5e-3",
                         "--merge_lora", "true")  # fmt: skip
    assert metrics_merged["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])  # same seed, same run
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert classify_fixed_texts(merged) == ("positive", "negative")


def test_the_head_gets_its_own_learning_rate_in_the_optimizer(tiny_llama, data, tmp_path):
    argv = ["--model_name_or_path", str(tiny_llama), "--train_file", str(data[0]), "--validation_file",
            str(data[1]), "--output_dir", str(tmp_path / "o"), "--use_lora", "true",
            "--learning_rate", "1e-4",
            "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    trainer = bert_cls.build(argv).trainer
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], []).extend(names[id(p)] for p in group["params"])
    assert set(by_lr) == {1e-4, DECODER_HEAD_LEARNING_RATE}
    assert by_lr[DECODER_HEAD_LEARNING_RATE] == ["base_model.model.score.modules_to_save.default.weight"]
    adapted = {n.split(".")[-4] for n in by_lr[1e-4]}  # ...<module>.lora_A.default.weight
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # Every trainable parameter is in exactly one group.
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(by_lr[1e-4] + by_lr[DECODER_HEAD_LEARNING_RATE])


def test_decoder_lms_are_told_from_encoders(tiny_llama):
    assert is_decoder_lm(AutoConfig.from_pretrained(tiny_llama))
    assert is_decoder_lm(AutoConfig.for_model("gpt2")) and is_decoder_lm(AutoConfig.for_model("qwen2"))
    assert not is_decoder_lm(AutoConfig.for_model("bert")) and not is_decoder_lm(AutoConfig.for_model("t5"))


def test_top5_accuracy_only_with_more_than_five_classes():
    labels = np.array([0, 1, 2, 3, 4])
    logits = np.tile(np.arange(5, dtype=float), (5, 1))
    assert "top5_accuracy" not in classification_metrics(5)(EvalPrediction(logits, labels))  # always 1.0
    logits6 = np.tile(np.arange(6, dtype=float), (6, 1))  # class 0 is always ranked last
    out = classification_metrics(6)(EvalPrediction(logits6, np.arange(6)))
    assert out["top5_accuracy"] == pytest.approx(5 / 6)
