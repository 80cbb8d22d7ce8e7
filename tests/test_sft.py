"""recipes/sft on TRL's SFTTrainer: prompt/completion and chat data, the loss on the answers only
(under three chat-template families), generated answers scored before and after training, errors,
several processes, and the real SmolLM2-135M-Instruct learning a labelled task with LoRA."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, load_recipe
from fixtures_gpt import COLOR_OF, build_tiny_gpt2, color_questions, tiny_config, write_jsonl
from sklearn.metrics import f1_score
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline

from recipes_lib.commands import assets
from recipes_lib.errors import ConfigError, DataError
from recipes_lib.generation import answer_metrics, end_of_turn_ids

sft = load_recipe("sft")
RUN_PY = str(REPO / "recipes" / "sft" / "run.py")
IGNORE = -100


@pytest.fixture(scope="module")
def chat_gpt2(tmp_path_factory):
    """The tiny GPT-2 whose tokenizer has a chat template: role tokens, turns closed by <|end|>."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("chat_gpt2"), n_positions=64, chat=True)


@pytest.fixture(scope="module")
def plain_gpt2(tmp_path_factory):
    """The tiny GPT-2 without a chat template: examples are prompt + completion + eos."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("plain_gpt2"), n_positions=64)


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


def trained_spans(labels: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive positions whose label is not IGNORE."""
    spans: list[list[int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE:
            continue
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [tuple(s) for s in spans]


# ---- Three chat-template families: every assistant turn, with the token that ends it, is trained

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TEMPLATE_FAMILIES = {
    # name: (template, bos, eos, the token that ends an assistant turn, the text that follows it)
    "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", ""),
    "gemma": (GEMMA_TEMPLATE, "<bos>", "<eos>", "<end_of_turn>", "\n"),
}


def family_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer with one family's special tokens and (simplified) chat template."""
    template, bos, eos, end, _ = TEMPLATE_FAMILIES[name]
    specials = [bos, eos, end, *(["<|start_header_id|>", "<|end_header_id|>"] if name == "llama3" else [])]
    specials += ["<start_of_turn>"] if name == "gemma" else []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([f"{r['prompt']} {r['completion']}" for r in color_questions(200, 5)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[2:]})
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("family", ["smollm2", "llama3", "gemma", "chat_gpt2"])
def test_chat_masks_cover_every_assistant_turn_with_its_end_of_turn_token(family, request):
    if family in TEMPLATE_FAMILIES:
        tokenizer = family_tokenizer(family)
        _, _, _, end, after = TEMPLATE_FAMILIES[family]
    else:
        tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(family))
        end, after = ("<|im_end|>", "\n") if family == "smollm2" else ("<|end|>", "")
    (row,) = conversations(1, seed=4)
    example = sft.to_conversation(row, "chat", sft.ChatDataArguments())
    masked = sft.with_assistant_masks(example, tokenizer)
    ids, mask = masked["input_ids"], masked["assistant_masks"]
    spans = trained_spans([i if m else IGNORE for i, m in zip(ids, mask, strict=True)])
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    # Each answer, then the token that closes its turn (and what the template puts after it), so
    # the model learns to stop; nothing of the prompts or the role headers.
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == [f"{a}{end}{after}" for a in answers]
    assert tokenizer.convert_tokens_to_ids(end) in end_of_turn_ids(tokenizer)
    # The last answer is generated from the conversation before it, as the model will be asked.
    before = tokenizer.apply_chat_template(row["messages"][:3], add_generation_prompt=True, return_dict=False)
    assert spans[-1][0] == len(before) and ids[: len(before)] == before


def test_a_template_that_rewrites_earlier_turns_is_refused_by_name():
    tokenizer = family_tokenizer("llama3")
    # Drops the earlier turns' content once an assistant turn follows (like templates that strip
    # reasoning from history): the answers' tokens cannot be located, so no silent mis-masking.
    tokenizer.chat_template = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
        "{% if loop.last or m['role'] == 'user' %}{{ m['content'] }}{% endif %}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
    )
    example = sft.to_conversation(conversations(1, seed=5)[0], "chat", sft.ChatDataArguments())
    with pytest.raises(DataError, match="rewrites earlier turns"):
        sft.with_assistant_masks(example, tokenizer)


# ---- What SFTTrainer trains on, through the recipe's build()


@pytest.mark.parametrize("model", ["chat_gpt2", "smollm2"])
def test_prompt_completion_labels_are_exactly_the_answer_and_its_end_of_turn(model, request, tmp_path):
    path = request.getfixturevalue(model)
    rows = color_questions(24, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    argv = tiny_config(tmp_path, model_name_or_path=path, train_file=train, output_dir=tmp_path / "o")
    setup = sft.build([*argv, "--system_prompt", "Answer with one word."])
    tokenizer = setup.trainer.processing_class
    end_of_turn = "<|end|>" if model == "chat_gpt2" else "<|im_end|>\n"
    by_prompt = {r["prompt"]: r["completion"] for r in rows}
    for example in setup.trainer.train_dataset:
        ids, labels = example["input_ids"], example["labels"]
        ((start, stop),) = trained_spans(labels)
        assert stop == len(ids) and labels[start:] == ids[start:]
        prompt = tokenizer.decode(ids[:start])
        question = next(p for p in by_prompt if p in prompt)
        asked = [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": question},
        ]
        assert ids[:start] == tokenizer.apply_chat_template(
            asked, add_generation_prompt=True, return_dict=False
        )
        assert tokenizer.decode(ids[start:]) == by_prompt[question] + end_of_turn


def test_without_a_chat_template_examples_are_prompt_completion_and_eos(plain_gpt2, tmp_path):
    rows = [{"prompt": "what color is the cat in the river?", "completion": "red"}] * 4
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    argv = tiny_config(tmp_path, model_name_or_path=plain_gpt2, train_file=train, output_dir=tmp_path / "o")
    setup = sft.build(argv)
    tokenizer = setup.trainer.processing_class
    assert tokenizer.chat_template is None
    example = setup.trainer.train_dataset[0]
    prompt_ids = tokenizer("what color is the cat in the river?\n")["input_ids"]
    answer_ids = tokenizer("red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [IGNORE] * len(prompt_ids) + answer_ids
    assert setup.answer_scorer.splits["eval"]["prompts"][0] == prompt_ids  # asked as it was trained


def test_answer_metrics_score_labels_like_bert_cls_and_count_other_answers_wrong():
    labels = ["negative", "neutral", "positive"]
    references = ["negative", "neutral", "positive", "positive", "negative", "neutral"]
    answers = [" Negative", "neutral\n", "The tweet is positive.", "positive", "neutral", "maybe"]
    metrics = answer_metrics(answers, references, labels, "eval")
    assert metrics["eval_exact_match"] == pytest.approx(3 / 6)  # whitespace and case do not count
    assert metrics["eval_accuracy"] == pytest.approx(3 / 6)
    # An answer outside the labels is scored as the label after the reference: a wrong label.
    refs, preds = [0, 1, 2, 2, 0, 1], [0, 1, 0, 2, 1, 2]
    assert metrics["eval_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    binary = answer_metrics(["yes", "no", "dunno"], ["yes", "yes", "no"], ["no", "yes"], "test")
    assert binary["test_accuracy"] == pytest.approx(1 / 3)
    assert binary["test_f1"] == pytest.approx(f1_score([1, 1, 0], [1, 0, 1]))  # "yes" is the positive label
    assert answer_metrics(["a b"], ["A B "], [], "eval") == {"eval_exact_match": 1.0}


def test_balance_answers_trains_on_as_many_examples_of_each_label_as_the_rarest_has():
    from datasets import Dataset

    rows = [{"completion": [{"role": "assistant", "content": label}]} for label in ["neg"] * 50 + ["pos"] * 7]
    rows += [{"completion": [{"role": "assistant", "content": " Neu "}]}] * 20
    balanced = sft.balanced_answers(Dataset.from_list(rows), seed=0)
    answers = [c[-1]["content"].strip().lower() for c in balanced["completion"]]
    assert sorted(answers) == ["neg"] * 7 + ["neu"] * 7 + ["pos"] * 7
    assert answers != sorted(answers)  # shuffled, not grouped by label
    free_text = Dataset.from_list(
        [{"completion": [{"role": "assistant", "content": f"answer {i}"}]} for i in range(80)]
    )
    with pytest.raises(ConfigError, match="balance_answers.*not labels"):
        sft.balanced_answers(free_text, seed=0)


# ---- Each data shape trains; generated answers are scored before and after


def test_labelled_csv_as_prompt_completion_learns_to_answer(chat_gpt2, tmp_path):
    """Classification as SFT: a question built from the CSV's columns, the label as the answer."""
    train = write_color_csv(tmp_path / "train.csv", 480, seed=11)
    dev = write_color_csv(tmp_path / "dev.csv", 64, seed=12)
    test = write_color_csv(tmp_path / "test.csv", 40, seed=13)
    out = tmp_path / "out"
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        test_file=test,
        prompt_template="what color is the {animal} in the {place}?",
        completion_column="color",
        output_dir=out,
    )
    metrics = sft.main(argv)

    # Generated answers: nothing right before training, nearly all after; six labels, so accuracy and F1.
    assert metrics["eval_accuracy_before"] <= 0.2 and metrics["eval_exact_match_before"] <= 0.2
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_f1"] >= 0.8, metrics
    assert metrics["eval_loss"] < metrics["eval_loss_before"] / 10  # the loss on the answers only
    assert metrics["test_accuracy"] >= 0.9 and metrics["test_samples"] == 40
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    with open(dev) as f:
        expected = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == [
        f"what color is the {e['animal']} in the {e['place']}?" for e in expected
    ]
    assert [r["reference"] for r in rows] == [e["color"] for e in expected]
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(metrics["eval_exact_match"])
    assert np.mean([r["correct_before"] for r in rows]) == pytest.approx(metrics["eval_exact_match_before"])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_f1_before"] == pytest.approx(metrics["eval_f1_before"])
    assert len((out / "test_predictions.jsonl").read_text().splitlines()) == 40
    # The run's curves end with the generated-answer scores (trainer_state.json's log).
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e]
    assert logged[-1] == pytest.approx(metrics["eval_accuracy"])
    # The resolved config records the recipe's defaults: random batch order, no activation checkpointing.
    resolved = (out / "resolved_config.yaml").read_text()
    assert "train_sampling_strategy: random" in resolved and "activation_checkpointing: false" in resolved

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
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        output_dir=out,
        eval_strategy="epoch",
        save_strategy="epoch",
        early_stopping_patience=1,
    )
    metrics = sft.main(argv)
    assert metrics["eval_exact_match"] >= 0.7 and metrics["eval_exact_match_before"] <= 0.2, metrics
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] is not None  # early stopping kept the best epoch
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    first = json.loads(dev.read_text().splitlines()[0])["messages"]
    assert rows[0]["prompt"] == first[:3] and rows[0]["reference"] == first[3]["content"]


def test_every_evaluation_scores_the_answers_and_the_best_checkpoint_is_the_best_answering_one(
    chat_gpt2, tmp_path
):
    """metric_for_best_model: accuracy (generated answers). Accuracy saturates before the loss stops
    falling, so the checkpoint with the best answers (the first at the top accuracy) is not the one
    with the lowest loss; that one is reloaded at the end, and early stopping stops on accuracy."""
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(320, seed=81))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_questions(40, seed=82))
    out = tmp_path / "out"
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        output_dir=out,
        num_train_epochs=8,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="steps",
        save_steps=10,
        metric_for_best_model="accuracy",
        early_stopping_patience=3,
        generation_eval_max_examples=20,
    )
    metrics = sft.main(argv)
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [
        e for e in state["log_history"] if "eval_loss" in e and e["step"] not in (0, state["global_step"])
    ]
    evals = [e for e in state["log_history"] if "eval_accuracy" in e][1:-1]  # during training
    assert len(evals) >= 4 and all({"eval_accuracy", "eval_f1", "eval_exact_match"} <= set(e) for e in evals)
    best_by_answers = max(evals, key=lambda e: e["eval_accuracy"])  # max keeps the first of a tie
    best_by_loss = min(evals, key=lambda e: e["eval_loss"])
    assert best_by_answers["step"] != best_by_loss["step"], evals
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_by_answers['step']}")
    assert state["best_metric"] == pytest.approx(best_by_answers["eval_accuracy"])
    assert state["global_step"] < 8 * 20  # early stopping ended it before the last epoch
    # The final evaluation scores every example of the reloaded best checkpoint.
    assert metrics["eval_accuracy"] >= best_by_answers["eval_accuracy"] - 0.15
    rows = (out / "eval_predictions.jsonl").read_text().splitlines()
    assert len(rows) == 40


def test_prompt_completion_without_template_trains_lora_and_merges(plain_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(240, seed=31))
    out = tmp_path / "out"
    argv = tiny_config(
        tmp_path,
        model_name_or_path=plain_gpt2,
        train_file=train,
        use_lora=True,
        lora_r=16,
        merge_lora=True,
        output_dir=out,
        learning_rate=1e-2,
        num_train_epochs=2,
    )
    metrics = sft.main(argv)
    # LoRA adapters on a randomly initialised model learn slowly: the loss falls, answers stay rare.
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.5, metrics
    assert "eval_exact_match" in metrics and "eval_accuracy_before" in metrics
    assert 0 < metrics["trainable_params"] < metrics["total_params"] / 2  # the adapters alone train
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: the adapter is in the weights
    assert not (out / "adapter_config.json").exists()
    assert merged.generation_config.eos_token_id in (50256, [AutoTokenizer.from_pretrained(out).eos_token_id])


# ---- Errors, several processes, sweep


def test_bad_data_gets_one_line_naming_it(chat_gpt2, tmp_path):
    def build(rows: list[dict], **keys: object) -> None:
        train = write_jsonl(tmp_path / "train.jsonl", rows)
        sft.build(
            tiny_config(
                tmp_path, model_name_or_path=chat_gpt2, train_file=train, output_dir=tmp_path / "o", **keys
            )
        )

    with pytest.raises(DataError, match="no 'messages' column.*columns: text.*recipes/gpt_clm"):
        build([{"text": "just text"}] * 4)
    with pytest.raises(DataError, match="prompt_template field 'colour' not found|'colour'"):
        build(color_questions(4, 1), prompt_template="is it {colour}?")
    with pytest.raises(DataError, match="empty answer"):
        build([{"prompt": "what color is the cat?", "completion": " "}] * 4)
    with pytest.raises(DataError, match="no assistant turn"):
        build([{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    with pytest.raises(ConfigError, match="gradient_checkpointing.*activation_checkpointing"):
        build(color_questions(4, 1), gradient_checkpointing=True)


def test_a_role_the_template_rejects_is_one_data_error(tmp_path):
    tokenizer = family_tokenizer("gemma")
    folder = tmp_path / "gemma_tok"
    tokenizer.save_pretrained(folder)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, *c["messages"]]} for c in conversations(4, 6)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    argv = tiny_config(tmp_path, model_name_or_path=folder, train_file=train, output_dir=tmp_path / "o")
    with pytest.raises(DataError, match="chat template rejects a conversation: Conversation roles must be"):
        sft.build(argv)


def test_two_processes_generate_every_answer_once(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(160, seed=61))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_questions(37, seed=62))  # uneven over 2 processes
    accelerate = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
    ]
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        output_dir="two",
        per_device_eval_batch_size=8,
        num_train_epochs=1,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*accelerate, RUN_PY, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "two"
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in dev.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [e["prompt"] for e in expected]  # each once, in order
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_exact_match"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert results["eval_exact_match_before"] == pytest.approx(np.mean([r["correct_before"] for r in rows]))


def test_sweep_searches_sft_runs_by_their_answer_loss_or_their_answers(chat_gpt2, tmp_path):
    from recipes_lib.commands.sweep import parse_sweep, run_search

    train = write_jsonl(tmp_path / "train.jsonl", color_questions(64, seed=71))
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        output_dir=tmp_path / "trials",
        max_steps=3,
        metric_for_best_model="loss",
    )
    setup = sft.build(argv)
    spec = parse_sweep({"trials": 2, "space": {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}})
    results = run_search(setup.trainer, spec)
    assert results["metric"] == "eval_loss" and len(results["trials"]) == 2
    assert all(np.isfinite(t["value"]) for t in results["trials"])
    # The generated answers' accuracy as the objective, higher is better.
    setup = sft.build([*argv, "--output_dir", str(tmp_path / "by_answers")])
    space = {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}
    results = run_search(setup.trainer, parse_sweep({"trials": 2, "metric": "accuracy", "space": space}))
    assert results["metric"] == "eval_accuracy" and results["direction"] == "maximize"
    assert all(0.0 <= t["value"] <= 1.0 for t in results["trials"])


def test_evaluation_runs_under_bf16_autocast_where_asked_with_about_the_same_loss(chat_gpt2, tmp_path):
    """`eval_bf16` (sft and dpo): evaluation, its loss and the generated answers, under bf16
    autocast; by default where the hardware computes bf16 natively, never when training already
    runs in bf16/fp16."""
    import math

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from recipes_lib.generation import ScoresAnswersAtEvaluation, evaluate_in_bf16
    from recipes_lib.machine_defaults import native_bf16

    model = AutoModelForCausalLM.from_pretrained(chat_gpt2)
    autocast_seen = []
    model.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))

    class AnswerScoringTrainer(ScoresAnswersAtEvaluation, Trainer):
        pass

    rows = [list(range(3, 3 + n)) for n in (5, 9, 12, 7)]
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_eval_batch_size=1
    )
    trainer = AnswerScoringTrainer(
        model=model, args=args, eval_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows})
    )
    losses = {}
    for bf16 in (True, False):
        trainer.eval_bf16 = bf16
        autocast_seen.clear()
        losses[bf16] = trainer.evaluate()["eval_loss"]
        assert autocast_seen == [bf16] * len(rows)
    assert math.isfinite(losses[True]) and losses[True] == pytest.approx(losses[False], rel=0.02)

    assert evaluate_in_bf16(True, args) and not evaluate_in_bf16(False, args)
    assert evaluate_in_bf16(None, args) == native_bf16()
    bf16_training = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    assert not evaluate_in_bf16(True, bf16_training)  # its own autocast applies
    # DPO's reference log-probs, precomputed in float32, beside a bf16 policy: off unless asked for.
    precomputed = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    precomputed.precompute_ref_log_probs = True
    assert not evaluate_in_bf16(None, precomputed) and evaluate_in_bf16(True, precomputed)
