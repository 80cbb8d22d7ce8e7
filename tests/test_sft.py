"""gpt_clm on prompt/completion and chat data (supervised fine-tuning): formatting, loss on the
answers only, batches without padding waste, generated answers scored before and after training,
and the real SmolLM2-135M-Instruct learning a labelled task with LoRA."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, load_recipe
from fixtures_gpt import (
    COLOR_OF,
    build_tiny_gpt2,
    color_questions,
    pattern_lines,
    recorded_training_batches,
    write_jsonl,
    write_lines,
)
from sklearn.metrics import f1_score
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, pipeline

from recipes_lib.commands import assets
from recipes_lib.errors import ConfigError, DataError

gpt_clm = load_recipe("gpt_clm")
RUN_PY = str(REPO / "recipes" / "gpt_clm" / "run.py")
IGNORE = -100


def flags(**settings: object) -> list[str]:
    """Command-line arguments: --key value for each setting, in order (booleans as true/false)."""
    return [
        t
        for key, value in settings.items()
        for t in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))
    ]


# No evaluations or checkpoints between the steps, on the CPU, quiet.
QUIET = {
    "eval_strategy": "no",
    "save_strategy": "no",
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
}
# The tiny models learn from random init: a large learning rate, several epochs (seconds each).
TINY = flags(
    learning_rate=5e-3,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    num_train_epochs=4,
    **QUIET,
)


@pytest.fixture(scope="module")
def chat_gpt2(tmp_path_factory):
    """The tiny GPT-2 whose tokenizer has a chat template: role tokens, turns closed by <|end|>."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("chat_gpt2"), n_positions=64, chat=True)


@pytest.fixture(scope="module")
def plain_gpt2(tmp_path_factory):
    """The tiny GPT-2 without a chat template: examples are prompt + completion + eos."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("plain_gpt2"), n_positions=64)


LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # Llama's


@pytest.fixture(scope="module")
def smollm2():
    return assets.convert_gguf("smollm2-gguf")


def write_color_csv(path: Path, n: int, seed: int) -> Path:
    """The colour questions as a labelled CSV (animal, place, color): classification data."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["animal", "place", "color"])
        for _ in range(n):
            animal = rng.choice(list(COLOR_OF))
            writer.writerow([animal, rng.choice(["garden", "river", "market"]), COLOR_OF[animal]])
    return path


def conversations(n: int, seed: int) -> list[dict]:
    """Chat rows of two question/answer rounds; the last answer is about the second animal."""
    first, second = color_questions(n, seed), color_questions(n, seed + 1000)
    return [
        {
            "messages": [
                {"role": "user", "content": a["prompt"]},
                {"role": "assistant", "content": a["completion"]},
                {"role": "user", "content": b["prompt"]},
                {"role": "assistant", "content": b["completion"]},
            ]
        }
        for a, b in zip(first, second, strict=True)
    ]


# ---- Formatting and masking


@pytest.mark.parametrize("model", ["chat_gpt2", "smollm2"])
def test_completion_only_labels_mask_exactly_the_prompt_tokens(model, request):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    end_of_turn = "<|end|>" if model == "chat_gpt2" else "<|im_end|>\n"
    args = gpt_clm.ModelArguments(system_prompt="Answer with one word.")
    for row in color_questions(20, seed=3):
        messages = gpt_clm.example_messages(row, "prompt_completion", args)
        features = gpt_clm.sft_features(messages, tokenizer, True, True, max_length=1024)
        prompt = [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": row["prompt"]},
        ]
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
        ids, labels = features["input_ids"], features["labels"]
        assert [i for i, label in enumerate(labels) if label == IGNORE] == list(range(len(prompt_ids)))
        assert ids[: len(prompt_ids)] == prompt_ids
        assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
        # The answer ends with the template's end-of-turn token, so generation learns to stop.
        assert tokenizer.decode(ids[len(prompt_ids) :]) == row["completion"] + end_of_turn
        assert features["answer_start"] == len(prompt_ids) and features["reference"] == row["completion"]


def test_chat_labels_cover_every_assistant_turn_and_nothing_else(chat_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    (row,) = conversations(1, seed=4)
    messages = gpt_clm.example_messages(row, "chat", gpt_clm.ModelArguments())
    features = gpt_clm.sft_features(messages, tokenizer, True, True, max_length=1024)
    ids, labels = features["input_ids"], features["labels"]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    spans, start = [], None  # runs of consecutive trained positions
    for i in trained:
        if start is None or i != spans[-1][1]:
            spans.append([i, i + 1])
        else:
            spans[-1][1] = i + 1
        start = i
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == [f"{a}<|end|>" for a in answers]
    assert all(labels[i] == ids[i] for i in trained)
    # The last answer is generated from the conversation before it, as the model will be asked.
    before = tokenizer.apply_chat_template(row["messages"][:3], add_generation_prompt=True, return_dict=False)
    assert features["answer_start"] == len(before) == spans[-1][0]
    # Without completion_only_loss every token is a label.
    everything = gpt_clm.sft_features(messages, tokenizer, True, False, max_length=1024)
    assert everything["labels"] == everything["input_ids"] == ids


def test_without_a_chat_template_examples_are_prompt_completion_and_eos(plain_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(plain_gpt2)
    assert tokenizer.chat_template is None
    row = {"prompt": "what color is the cat in the river? ", "completion": "red"}
    messages = gpt_clm.example_messages(row, "prompt_completion", gpt_clm.ModelArguments())
    features = gpt_clm.sft_features(messages, tokenizer, False, True, max_length=1024)
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    answer_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert features["labels"] == [IGNORE] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    # Cut at max_length: the answer's first token still fits, so the example still trains.
    cut = gpt_clm.sft_features(messages, tokenizer, False, True, max_length=len(prompt_ids) + 1)
    assert cut["labels"] == [IGNORE] * len(prompt_ids) + answer_ids[:1]


def test_data_shape_is_detected_from_the_columns_or_set():
    args = gpt_clm.ModelArguments()
    assert gpt_clm.detect_data_format(["text"], args) == "text"
    assert gpt_clm.detect_data_format(["prompt", "completion", "text"], args) == "prompt_completion"
    assert gpt_clm.detect_data_format(["messages", "prompt", "completion"], args) == "chat"
    templated = gpt_clm.ModelArguments(prompt_template="Is {text} good?", completion_column="label")
    assert gpt_clm.detect_data_format(["text", "label"], templated) == "prompt_completion"
    forced = gpt_clm.ModelArguments(data_format="text")
    assert gpt_clm.detect_data_format(["prompt", "completion", "text"], forced) == "text"


def test_answer_metrics_score_labels_like_bert_cls_and_count_other_answers_wrong():
    labels = ["negative", "neutral", "positive"]
    references = ["negative", "neutral", "positive", "positive", "negative", "neutral"]
    answers = [" Negative", "neutral\n", "The tweet is positive.", "positive", "neutral", "maybe"]
    metrics = gpt_clm.answer_metrics(answers, references, labels, "eval")
    assert metrics["eval_exact_match"] == pytest.approx(3 / 6)  # whitespace and case do not count
    assert metrics["eval_accuracy"] == pytest.approx(3 / 6)
    # An answer outside the labels is scored as the label after the reference: a wrong label.
    refs, preds = [0, 1, 2, 2, 0, 1], [0, 1, 0, 2, 1, 2]
    assert metrics["eval_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    binary = gpt_clm.answer_metrics(["yes", "no", "dunno"], ["yes", "yes", "no"], ["no", "yes"], "test")
    assert binary["test_accuracy"] == pytest.approx(1 / 3)
    assert binary["test_f1"] == pytest.approx(f1_score([1, 1, 0], [1, 0, 1]))  # "yes" is the positive label
    assert gpt_clm.answer_metrics(["a b"], ["A B "], [], "eval") == {"eval_exact_match": 1.0}


# ---- Each data shape trains; generated answers are scored before and after


def test_labelled_csv_as_prompt_completion_learns_to_answer(chat_gpt2, tmp_path):
    """Classification as SFT: a question built from the CSV's columns, the label as the answer."""
    train = write_color_csv(tmp_path / "train.csv", 480, seed=11)
    dev = write_color_csv(tmp_path / "dev.csv", 64, seed=12)
    out = tmp_path / "out"
    argv = TINY + flags(
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        prompt_template="what color is the {animal} in the {place}?",
        completion_column="color",
        sample_prompts="what color is the goat in the river?",
        output_dir=out,
    )
    with recorded_training_batches(gpt_clm) as batches:
        metrics = gpt_clm.main(argv)
    tokenizer = AutoTokenizer.from_pretrained(out)

    # Generated answers: nothing right before training, nearly all after; six labels, so accuracy and F1.
    assert metrics["eval_accuracy_before"] <= 0.2 and metrics["eval_exact_match_before"] <= 0.2
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_f1"] >= 0.8, metrics
    assert metrics["perplexity"] < metrics["perplexity_before"] / 10  # the loss on the answers only
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    with open(dev) as f:
        expected = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == [
        f"what color is the {e['animal']} in the {e['place']}?" for e in expected
    ]
    assert [r["reference"] for r in rows] == [e["color"] for e in expected]
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(metrics["eval_exact_match"])
    assert np.mean([r["correct_before"] for r in rows]) == pytest.approx(metrics["eval_exact_match_before"])
    assert {"answer", "answer_before"} <= set(rows[0])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_f1_before"] == pytest.approx(metrics["eval_f1_before"])
    (sample,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sample["after"] == COLOR_OF["goat"]  # asked as a user turn, answered in the trained format

    # Batches: similar lengths (group_by_length) padded per batch; labels only on the answers.
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    assert padding <= 0.05 * sum(b["attention_mask"].numel() for b in batches)
    for batch in batches:
        for ids, labels, mask in zip(
            batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
        ):
            trained = (labels != IGNORE).nonzero().flatten().tolist()
            answer = tokenizer.decode(ids[trained])
            assert answer.removesuffix("<|end|>") in set(COLOR_OF.values()) and ids[trained[-1]] == end
            assert bool((labels[mask == 0] == IGNORE).all())

    # The saved model answers in pipeline("text-generation") and stops at the end of its turn.
    generator = pipeline("text-generation", model=str(out))
    reply = generator(
        [{"role": "user", "content": "what color is the horse in the market?"}], max_new_tokens=8
    )
    assert reply[0]["generated_text"][-1] == {"role": "assistant", "content": COLOR_OF["horse"]}


def test_chat_conversations_train_with_early_stopping(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", conversations(400, seed=21))
    dev = write_jsonl(tmp_path / "dev.jsonl", conversations(48, seed=22))
    out = tmp_path / "out"
    argv = TINY + flags(
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        output_dir=out,
        eval_strategy="epoch",
        save_strategy="epoch",
        early_stopping_patience=1,
    )
    metrics = gpt_clm.main(argv)
    assert metrics["eval_exact_match"] >= 0.7 and metrics["eval_exact_match_before"] <= 0.2, metrics
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] is not None  # early stopping kept the best epoch
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    first = json.loads(dev.read_text().splitlines()[0])["messages"]
    assert rows[0]["prompt"] == first[:3] and rows[0]["reference"] == first[3]["content"]


def test_prompt_completion_without_template_trains_lora_and_merges(plain_gpt2, tmp_path):
    rows = color_questions(240, seed=31)
    for row in rows:  # no chat template: the prompt carries its own separator
        row["prompt"] += " answer:"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    argv = TINY + flags(
        model_name_or_path=plain_gpt2,
        train_file=train,
        use_lora=True,
        lora_r=16,
        merge_lora=True,
        output_dir=out,
        learning_rate=1e-2,
        num_train_epochs=2,
    )
    metrics = gpt_clm.main(argv)
    # LoRA adapters on a randomly initialised model learn slowly: the loss falls, answers stay rare.
    assert metrics["perplexity"] < 0.7 * metrics["perplexity_before"], metrics
    assert "eval_exact_match" in metrics and "eval_accuracy_before" in metrics
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: the adapter is in the weights
    assert not (out / "adapter_config.json").exists()
    assert merged.generation_config.eos_token_id in (50256, [AutoTokenizer.from_pretrained(out).eos_token_id])


# ---- Padding-free batches


def test_padding_free_batches_give_the_padded_loss(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(64, seed=41))
    argv = TINY + flags(
        model_name_or_path=chat_gpt2,
        train_file=train,
        padding_free=True,
        attn_implementation="sdpa",
        output_dir=tmp_path / "out",
    )
    setup = gpt_clm.build(argv)
    trainer = setup.trainer
    flat = next(iter(trainer.get_train_dataloader()))
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat  # one row, no padding
    starts = (flat["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == trainer.args.per_device_train_batch_size  # positions restart per example
    assert bool((flat["labels"][0, starts] == IGNORE).all())  # nothing predicts across a boundary
    # The same examples padded: the same loss, so packed examples did not see each other.
    examples = [setup.examples["train"][i] for i in range(len(setup.examples["train"]))]
    by_ids = {tuple(e["input_ids"]): e for e in examples}
    bounds = [*starts, flat["input_ids"].shape[1]]
    chunks = [tuple(flat["input_ids"][0, a:b].tolist()) for a, b in zip(bounds, bounds[1:], strict=False)]
    padded = DataCollatorForSeq2Seq(trainer.processing_class)([by_ids[c] for c in chunks])
    model = trainer.model.eval()
    with torch.no_grad():
        flat_loss = model(**{k: v for k, v in flat.items()}).loss
        padded_loss = model(**padded).loss
    assert float(flat_loss) == pytest.approx(float(padded_loss), rel=1e-4)
    metrics = gpt_clm.main([*argv, "--overwrite_output_dir", "true", "--max_steps", "4"])
    assert np.isfinite(metrics["eval_loss"])


def test_padding_free_is_refused_where_packed_examples_would_attend_to_each_other(chat_gpt2, tmp_path):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_only(module, query, key, value, attention_mask, **kwargs):  # ignores any mask: plain causal
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("causal_only", causal_only)
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(32, seed=42))
    argv = TINY + flags(
        model_name_or_path=chat_gpt2,
        train_file=train,
        padding_free=True,
        attn_implementation="causal_only",
        output_dir=tmp_path / "out",
    )
    with pytest.raises(ConfigError, match="padding_free.*attend to each other.*flash_attention_2"):
        gpt_clm.build(argv)
    # The same attention without padding_free: batches padded, which it handles.
    gpt_clm.build([*argv, "--padding_free", "false", "--overwrite_output_dir", "true"])
    # transformers' sdpa keeps packed examples apart only without a cache, as Trainer sets it
    # (use_cache: false); asked to keep the cache in training, it would mix them: refused too.
    sdpa = [*argv, "--attn_implementation", "sdpa", "--overwrite_output_dir", "true"]
    gpt_clm.build(sdpa)
    with pytest.raises(ConfigError, match="'sdpa' and use_cache: true.*attend to each other"):
        gpt_clm.build([*sdpa, "--use_cache", "true"])


# ---- Errors, several processes, sweep


def test_sft_settings_on_plain_text_and_missing_columns_are_named(chat_gpt2, tmp_path):
    text = write_lines(tmp_path / "train.txt", pattern_lines(50, seed=51))
    base = TINY + flags(model_name_or_path=chat_gpt2, output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="generation_eval needs prompt/completion or chat data"):
        gpt_clm.build([*base, "--train_file", str(text), "--generation_eval", "true"])
    with pytest.raises(ConfigError, match="padding_free needs prompt/completion or chat data"):
        gpt_clm.build([*base, "--train_file", str(text), "--padding_free", "true"])
    labelled = write_color_csv(tmp_path / "train.csv", 20, seed=52)
    with pytest.raises(DataError, match="prompt_template field 'colour' not found.*animal, place, color"):
        gpt_clm.build(
            base + flags(train_file=labelled, prompt_template="is it {colour}?", completion_column="color")
        )
    with pytest.raises(DataError, match="messages_column 'messages' not found"):
        gpt_clm.build([*base, "--train_file", str(labelled), "--data_format", "chat"])


def test_two_processes_generate_every_answer_once(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(160, seed=61))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_questions(37, seed=62))  # uneven over 2 processes
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", RUN_PY]
    cmd = (
        torchrun
        + TINY
        + flags(
            model_name_or_path=chat_gpt2,
            train_file=train,
            validation_file=dev,
            output_dir="two",
            per_device_eval_batch_size=8,
            num_train_epochs=1,
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "two"
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in dev.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [e["prompt"] for e in expected]  # each once, in order
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_exact_match"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert results["eval_exact_match_before"] == pytest.approx(np.mean([r["correct_before"] for r in rows]))


def test_sweep_searches_sft_runs_by_their_answer_loss(chat_gpt2, tmp_path):
    from recipes_lib.commands.sweep import parse_sweep, run_search

    train = write_jsonl(tmp_path / "train.jsonl", color_questions(64, seed=71))
    argv = TINY + flags(
        model_name_or_path=chat_gpt2,
        train_file=train,
        output_dir=tmp_path / "trials",
        max_steps=3,
        metric_for_best_model="loss",
    )
    setup = gpt_clm.build(argv)
    spec = parse_sweep({"trials": 2, "space": {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}})
    results = run_search(setup.trainer, spec)
    assert results["metric"] == "eval_loss" and len(results["trials"]) == 2
    assert all(np.isfinite(t["value"]) for t in results["trials"])


# ---- The real SmolLM2-135M-Instruct learns a labelled task as prompt/completion, with LoRA


def test_smollm2_lora_learns_to_answer_with_labels(smollm2, tmp_path):
    from peft import AutoPeftModelForCausalLM

    rows = labelled_tweets(assets.fetch("tweets"), 180 + 60)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:180])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[180:])
    out = tmp_path / "out"
    start = time.perf_counter()
    argv = flags(
        model_name_or_path=smollm2,
        train_file=train,
        validation_file=dev,
        system_prompt="Answer with one word.",
        use_lora=True,
        lora_dropout=0.0,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=30,
        num_train_epochs=1,
        **QUIET,
        output_dir=out,
        eval_on_start=False,  # the loss before training is not asserted: one evaluation less
        train_sampling_strategy="random",  # 23 steps: batches of similar lengths would lean to a class
    )
    argv += ["--lora_target_modules", *LINEAR_LAYERS]  # every linear layer: 0.77 instead of 0.63 here
    metrics = gpt_clm.main(argv)
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


def test_the_shipped_sft_demo_config_runs_as_the_readme_shows(smollm2, tmp_path):
    """`python recipes/gpt_clm/run.py --config configs/sft_tweets.yaml` (the README's command and
    the demo's SFT row), on a few examples: the real model and the tweets CSV from the asset cache,
    the answers generated and scored before and after, the adapter saved."""
    assets.fetch("tweets")
    out = tmp_path / "sft_demo"
    argv = ["--config", "configs/sft_tweets.yaml", "--output_dir", str(out), "--disable_tqdm", "true"]
    argv += ["--max_train_samples", "16", "--max_eval_samples", "6"]  # seconds, not the demo's minutes
    metrics = gpt_clm.main(argv)
    assert metrics["eval_samples"] == 6 and metrics["train_samples"] == 16
    for key in ("eval_accuracy", "eval_accuracy_before", "eval_f1", "eval_f1_before"):
        assert 0.0 <= metrics[key] <= 1.0, key
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6
    assert {p["reference"] for p in predictions} <= {"negative", "neutral", "positive"}
    assert (out / "adapter_model.safetensors").is_file()
