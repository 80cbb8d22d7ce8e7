"""General ability before and after fine-tuning (recipes_lib.general_eval): the zero-shot scorer
against a direct computation, lighteval's protocol on hand-made cases, and the before/after keys
the LM recipes write."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import REPO, load_recipe
from fixtures_gpt import COLOR_OF, build_tiny_gpt2, color_questions, pattern_lines, tiny_config, write_jsonl
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from recipes_lib import commands
from recipes_lib.commands import assets, report
from recipes_lib.errors import ConfigError, DataError
from recipes_lib.general_eval import (
    TASKS,
    GeneralEval,
    GeneralEvalArguments,
    accuracy,
    choice_log_likelihoods,
    load_task,
    normalised,
    render_prompt,
    split_tokens,
)

# Prompts with and without trailing whitespace, choices with and without a leading space, 2-4 choices.
EXAMPLES = [
    {"query": "what color is the cat in the garden?", "choices": [" red", " blue", " green"], "gold": 0},
    {"query": "Question: the dog sat by the river\nAnswer: ", "choices": ["blue", "purple"], "gold": 0},
    {"query": "the horse", "choices": [" is green in the forest", " yellow", " runs", " a"], "gold": 1},
]


@pytest.fixture(scope="module")
def chat_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("chat_gpt2"), n_positions=128, chat=True)


@pytest.fixture(scope="module")
def plain_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("plain_gpt2"), n_positions=128)


def tiny_llama(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def direct(model, tokenizer, example: dict, chat: bool) -> list[float]:
    """One sequence per choice, the model's full logits: the sum of the continuation's log-probs."""
    prompt = render_prompt(example["query"], tokenizer, chat)
    sums = []
    for choice in example["choices"]:
        context, continuation = split_tokens(tokenizer, prompt, choice, chat)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context + continuation])).logits[0]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        sums.append(sum(log_probs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation)))
    return sums


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("chat", [False, True])
def test_shared_prompt_batches_give_each_choice_its_direct_log_likelihood(arch, chat, chat_gpt2):
    """A prompt computed once for all its choices, several examples per batch (padded), gives the
    same sums as one full forward per choice."""
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    model = (
        AutoModelForCausalLM.from_pretrained(chat_gpt2).eval() if arch == "gpt2" else tiny_llama(tokenizer)
    )
    expected = [direct(model, tokenizer, e, chat) for e in EXAMPLES]
    for batch_size in (1, 3):
        got = choice_log_likelihoods(model, tokenizer, EXAMPLES, chat_template=chat, batch_size=batch_size)
        assert got == [pytest.approx(e, abs=1e-4) for e in expected]


def test_lora_models_are_scored_with_their_adapters_on(chat_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # a trained adapter: it changes the outputs
    got = choice_log_likelihoods(model, tokenizer, EXAMPLES)
    assert got == [pytest.approx(direct(model, tokenizer, e, False), abs=1e-4) for e in EXAMPLES]
    with model.disable_adapter():
        without = [direct(model, tokenizer, e, False) for e in EXAMPLES]
    changes = [abs(a - b) for g, w in zip(got, without, strict=True) for a, b in zip(g, w, strict=True)]
    assert max(changes) > 0.1


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """Characters as tokens, plus "ab": a prompt ending in "a" merges with a choice starting "b"."""
    vocab = {"<eos>": 0, "x": 1, "a": 2, "b": 3, "ab": 4, " ": 5, "c": 6}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def test_the_split_moves_trailing_space_and_gives_a_merged_token_to_the_choice():
    tok = merging_tokenizer()
    ids = tok.convert_tokens_to_ids
    # The prompt's last token merges with the choice's first: that token is the choice's.
    assert split_tokens(tok, "xa", "b", False) == (ids(["x"]), ids(["ab"]))
    # Trailing whitespace of the prompt moves to the front of the choice.
    assert split_tokens(tok, "xc ", "ab", False) == (ids(["x", "c"]), ids([" ", "ab"]))
    assert split_tokens(tok, "xc", " ab", False) == (ids(["x", "c"]), ids([" ", "ab"]))


def test_the_score_is_per_character_without_the_leading_space():
    assert normalised(-6.0, " abc") == -2.0 and normalised(-6.0, "abc") == -2.0
    # -2 over 1 character vs -5 over 3: the second wins. Counting the space (-1 vs -1.25) the first would.
    assert accuracy([{"choices": [" a", " bbb"], "gold": 1}], [[-2.0, -5.0]]) == [True]


def test_subsets_are_fixed_and_shares_over_processes_count_every_example_once(chat_gpt2, tmp_path):
    rows = [{"query": f"q{i}", "choices": [" a", " b"], "gold": i % 2} for i in range(30)]
    write_jsonl(tmp_path / "piqa.jsonl", rows)
    subset = load_task("piqa", tmp_path, max_examples=7)
    assert subset == load_task("piqa", tmp_path, max_examples=7) and len(subset) == 7
    assert all(r in rows for r in subset) and subset != rows[:7]

    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    model = AutoModelForCausalLM.from_pretrained(chat_gpt2).eval()
    general = GeneralEval(GeneralEvalArguments(["piqa"], general_eval_dir=str(tmp_path)), tokenizer)
    ((right, total),) = general.score_model(model).values()
    shares = [general.score_model(model, rank, 3)["piqa"] for rank in range(3)]
    assert total == 30 and sum(n for _, n in shares) == 30 and sum(r for r, _ in shares) == right


def test_bad_settings_get_one_line_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'mmlu'"):
        GeneralEvalArguments(["piqa", "mmlu"])
    with pytest.raises(DataError, match="recipes assets"):
        load_task("piqa", tmp_path)


def colour_task(path, n: int, seed: int):
    """The colour questions as a 2-choice zero-shot task: the animal's colour or another one."""
    rng = random.Random(seed)
    rows = []
    for q in color_questions(n, seed):
        wrong = rng.choice([c for c in set(COLOR_OF.values()) if c != q["completion"]])
        choices = [q["completion"], wrong] if rng.random() < 0.5 else [wrong, q["completion"]]
        rows.append({"query": q["prompt"], "choices": choices, "gold": choices.index(q["completion"])})
    return write_jsonl(path / "piqa.jsonl", rows)


def test_sft_reports_each_task_before_and_after_training(chat_gpt2, tmp_path):
    """An SFT run on the colour questions, scored zero-shot on held-out colour questions (in the
    piqa slot): the scores before (step 0) and after, and the deltas, in all_results.json, the log
    and the curves."""
    sft = load_recipe("sft")
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(400, seed=31))
    colour_task(tmp_path, 60, seed=32)
    out = tmp_path / "out"
    metrics = sft.main(
        tiny_config(
            tmp_path,
            model_name_or_path=chat_gpt2,
            train_file=train,
            general_eval=["piqa"],
            general_eval_dir=tmp_path,
            generation_eval=False,
            output_dir=out,
        )
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["general_piqa_before"] <= 0.75 and results["general_piqa"] >= 0.9, results
    assert results["general_piqa_delta"] == pytest.approx(
        results["general_piqa"] - results["general_piqa_before"]
    )
    p = results["general_piqa"]
    assert results["general_piqa_stderr"] == pytest.approx((p * (1 - p) / 60) ** 0.5)
    assert metrics["general_piqa"] == p
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    scored = [(e["step"], e["general_piqa"]) for e in log if "general_piqa" in e]
    assert scored[0] == (0, results["general_piqa_before"]) and scored[-1][1] == results["general_piqa"]
    assert len(scored) == 2 and scored[-1][0] > 0
    assert "general_piqa" in (out / "README.md").read_text()  # the model card


def test_gpt_clm_scores_the_pretrained_model_before_training(plain_gpt2, tmp_path):
    gpt_clm = load_recipe("gpt_clm")
    train = tmp_path / "train.txt"
    train.write_text("\n".join(pattern_lines(200, seed=41)) + "\n")
    colour_task(tmp_path, 40, seed=42)
    out = tmp_path / "out"
    tokenizer = AutoTokenizer.from_pretrained(plain_gpt2)
    pretrained = AutoModelForCausalLM.from_pretrained(plain_gpt2)
    task = load_task("piqa", tmp_path)
    expected_before = sum(accuracy(task, choice_log_likelihoods(pretrained, tokenizer, task))) / len(task)
    gpt_clm.main(
        tiny_config(
            tmp_path,
            model_name_or_path=plain_gpt2,
            train_file=train,
            block_size=32,
            num_train_epochs=1,
            general_eval=["piqa"],
            general_eval_dir=tmp_path,
            general_eval_bf16=False,
            output_dir=out,
        )
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["general_piqa_before"] == pytest.approx(expected_before)
    assert {"general_piqa", "general_piqa_delta"} <= set(results)


def test_recipes_assets_writes_each_task_with_its_official_row_count():
    folder = assets.write_general_eval()
    assert assets.write_general_eval() == folder  # converted once
    for task, rows in TASKS.items():
        assert len(load_task(task, folder)) == rows, task
    piqa, arc = load_task("piqa", folder)[0], load_task("arc_easy", folder)[0]
    assert piqa["query"] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa["gold"] == 0 and piqa["choices"][1].startswith(" Provide the guinea pig with a cage full")
    assert arc["query"].startswith("Question: Which statement best explains why photosynthesis")
    assert arc["choices"][0] == " Sunlight is the source of energy for nearly all ecosystems."
    assert arc["gold"] == 0 and len(arc["choices"]) == 4
    wino = load_task("winogrande", folder)[0]
    assert wino["query"] == "Sarah was a much better surgeon than Maria so "
    assert wino["choices"] == ["Sarah always got the easier cases.", "Maria always got the easier cases."]


def test_smollm2_scores_piqa_as_lm_evaluation_harness_does():
    """The real SmolLM2-135M-Instruct (offline copy) on PIQA's first 100 rows, chat template,
    float32: lm-evaluation-harness 0.4.13 gave 71.0 on the same rows and weights."""
    model_dir = assets.convert_gguf("smollm2-gguf")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = load_task("piqa", assets.write_general_eval())[:100]
    scores = choice_log_likelihoods(model, tokenizer, rows, chat_template=True, batch_size=16)
    assert sum(accuracy(rows, scores)) == 71


def test_zero_shot_command_scores_a_model_and_report_puts_it_beside_the_published_numbers(
    chat_gpt2, tmp_path, capsys
):
    for task, seed in (("arc_easy", 52), ("arc_challenge", 53), ("piqa", 51)):  # written as piqa.jsonl
        colour_task(tmp_path, 30, seed).rename(tmp_path / f"{task}.jsonl")
    out = tmp_path / "zero_shot"
    config = tmp_path / "zero_shot.yaml"
    config.write_text(
        f"model_name_or_path: {chat_gpt2}\noutput_dir: {out}\ngeneral_eval_dir: {tmp_path}\n"
        "general_eval: [piqa, arc_easy, arc_challenge]\n"
        "expected:\n"
        "  - {metric: general_piqa, value: 0.5, tolerance: 0.5}\n"
        "  - {metric: general_arc, value: 2.0, tolerance: 0.1}\n"
    )
    assert commands.main(["zero-shot", "--config", str(config)]) == 0
    results = json.loads((out / "all_results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    model = AutoModelForCausalLM.from_pretrained(chat_gpt2)
    for task in ("piqa", "arc_easy", "arc_challenge"):
        rows = load_task(task, tmp_path)
        right = accuracy(rows, choice_log_likelihoods(model, tokenizer, rows, chat_template=True))
        assert results[f"general_{task}"] == pytest.approx(sum(right) / 30, abs=0.034)  # bf16: 1 example
    assert results["general_tokens_per_second"] > 0 and results["general_piqa_samples"] == 30

    rows = report.report_rows([out])
    assert [(r["metric"], r["within"]) for r in rows] == [("general_piqa", "yes"), ("general_arc", "no")]
    assert rows[1]["value"] == pytest.approx(
        (results["general_arc_easy"] + results["general_arc_challenge"]) / 2
    )
    # The folder now holds a finished run: a second call refuses it and leaves it as it was.
    before = (out / "all_results.json").read_bytes()
    assert commands.main(["zero-shot", "--config", str(config)]) != 0
    assert "holds a finished run" in capsys.readouterr().err
    assert (out / "all_results.json").read_bytes() == before


def test_dpo_reports_each_task_before_and_after(chat_gpt2, tmp_path):
    """Preference tuning on the colour pairs, scored zero-shot on held-out colour questions: before
    is the starting model's score, after it the preference learnt shows."""
    dpo = load_recipe("dpo")
    train = write_jsonl(tmp_path / "train.jsonl", color_questions(320, seed=61))
    colour_task(tmp_path, 60, seed=62)
    out = tmp_path / "out"
    tokenizer = AutoTokenizer.from_pretrained(chat_gpt2)
    base = AutoModelForCausalLM.from_pretrained(chat_gpt2)
    task = load_task("piqa", tmp_path)
    base_score = sum(accuracy(task, choice_log_likelihoods(base, tokenizer, task, chat_template=True))) / 60
    dpo.main(
        tiny_config(
            tmp_path,
            model_name_or_path=chat_gpt2,
            train_file=train,
            chosen_column="completion",
            rejected_from_labels=True,
            beta=0.5,
            learning_rate=1e-2,
            num_train_epochs=6,  # as test_dpo.py's: after 4 the result swings with the float summation order
            general_eval=["piqa"],
            general_eval_dir=tmp_path,
            general_eval_bf16=False,
            generation_eval=False,
            output_dir=out,
        )
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["general_piqa_before"] == pytest.approx(base_score)
    # The preference learnt shows in the zero-shot choice (not all of it: DPO moves the chosen answer
    # against the rejected one, the task compares the right colour with another per character).
    assert results["general_piqa"] >= results["general_piqa_before"] + 0.2, results


def test_the_shipped_reproduction_config_runs_and_reports_beside_the_card(tmp_path, monkeypatch, capsys):
    """`recipes zero-shot --config evals/smollm2_135m_instruct.yaml` as the README gives it (the real
    SmolLM2 from the asset cache), on 8 examples per split instead of the full ones, run from another
    folder; then `recipes report` puts both rows beside the card's numbers."""
    assets.convert_gguf("smollm2-gguf")
    assets.write_general_eval()
    monkeypatch.setenv("RECIPES_CACHE", str(assets.cache_dir()))
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "evals" / "smollm2_135m_instruct.yaml")
    out = tmp_path / "zs"
    argv = ["zero-shot", "--config", config, "--general_eval_max_examples", "8", "--output_dir", str(out)]
    assert commands.main(argv) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert {results[f"general_{t}_samples"] for t in ("piqa", "arc_easy", "arc_challenge")} == {8}
    rows = report.report_rows([out])
    assert [(r["metric"], r["expected"]) for r in rows] == [("general_piqa", 0.663), ("general_arc", 0.373)]
    assert all(r["value"] is not None and r["within"] in ("yes", "no", "better") for r in rows)
