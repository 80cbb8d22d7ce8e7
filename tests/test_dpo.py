"""recipes/dpo on TRL's DPOTrainer: the preference loss starts at ln 2, a learnable preference is
learnt on held-out pairs, LoRA's reference is the same model with its adapters off, early stopping
on a preference metric, TRL's data shapes, bad input as one line each, the saved model as peft and
pipeline("text-generation") load it, and resuming after a kill (two processes:
tests/test_dpo_distributed.py)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_recipe
from fixtures_gpt import COLOR_OF, build_tiny_gpt2, color_questions, flags, tiny_config, write_jsonl
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    pipeline,
)

from recipes_lib.commands import main as recipes
from recipes_lib.commands.report import report_row
from recipes_lib.errors import ConfigError, DataError

dpo = load_recipe("dpo")
RUN_PY = str(REPO / "recipes" / "dpo" / "run.py")
COLORS = sorted(set(COLOR_OF.values()))


def color_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """The colour questions as preference pairs: the animal's colour chosen, another colour rejected."""
    rng = random.Random(seed)
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["completion"],
            "rejected": rng.choice([c for c in COLORS if c != r["completion"]]),
        }
        for r in color_questions(n, seed)
    ]


@pytest.fixture(scope="module")
def chat_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("chat_gpt2"), n_positions=64, chat=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def completion_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sequence's summed log-probability of its answer tokens (completion_mask), by hand."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(-1)


# ---- The loss at step 0, and LoRA's reference


def test_lora_starts_at_ln2_and_its_reference_is_the_model_with_adapters_off(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(48, seed=1))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(16, seed=2))
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        use_lora=True,
        max_steps=3,
        learning_rate=5e-2,
        output_dir=tmp_path / "o",
    )
    setup = dpo.build(argv)
    trainer = setup.trainer
    # A fresh adapter (LoRA B = 0) leaves the policy equal to the reference: loss ln 2, rewards 0.
    before = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    for key in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
        assert before[key] == pytest.approx(0.0, abs=1e-6), key
    # No second model: DPOTrainer keeps no ref_model, the base weights exist once.
    assert trainer.ref_model is None
    assert not any(isinstance(m, PreTrainedModel) for m in vars(trainer).values() if m is not trainer.model)

    trainer.train()
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(8)])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    base = AutoModelForCausalLM.from_pretrained(chat_gpt2)  # the checkpoint, loaded on its own
    expected = completion_logps(base, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, atol=1e-4, rtol=1e-4)
    # ... while the trained policy has moved away from it.
    policy = completion_logps(trainer.model.eval(), batch)
    assert (policy - expected).abs().max() > 1e-2


# ---- A learnable preference: held-out rewards/accuracies rises; generated answers scored


def test_full_fine_tuning_learns_a_held_out_preference_from_labelled_rows(chat_gpt2, tmp_path):
    """Labelled rows as pairs (rejected_from_labels): the colour is chosen, another colour rejected.
    Every weight trains against a frozen copy; the answers are labels, so they are generated and scored."""
    rows = color_questions(320 + 40, seed=11)
    train = write_jsonl(tmp_path / "train.jsonl", rows[:320])
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[320:])
    out = tmp_path / "out"
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        chosen_column="completion",
        rejected_from_labels=True,
        beta=0.5,  # rewards of the tiny model's few answer tokens: a margin that shows in a few epochs
        # 6 epochs: after 4, the held-out accuracy was 0.78 to 1.0 as the float summation order or the
        # seed changed (1 or 2 threads; seeds 1, 2, 3, 42); after 6, 0.97 to 1.0.
        num_train_epochs=6,
        learning_rate=1e-2,
        output_dir=out,
    )
    metrics = dpo.main(argv)
    assert metrics["eval_rewards/accuracies_before"] == 0.0 and metrics["eval_loss_before"] == pytest.approx(
        math.log(2), abs=1e-4
    )
    assert metrics["eval_rewards/accuracies"] >= 0.9, metrics
    assert metrics["eval_rewards/margins"] > 1.0 and metrics["eval_loss"] < 0.3
    assert "eval_logps/chosen" in metrics and "eval_logps/chosen_before" in metrics
    assert {"eval_accuracy", "eval_accuracy_before", "eval_f1"} <= set(metrics)  # labels: answers scored
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [r["completion"] for r in rows[320:]]
    assert {"answer", "answer_before", "correct"} <= set(predictions[0])
    resolved = (out / "resolved_config.yaml").read_text()
    assert "activation_checkpointing: false" in resolved and "eval_on_start: true" in resolved
    assert json.loads((out / "all_results.json").read_text())["eval_rewards/accuracies"] == pytest.approx(
        metrics["eval_rewards/accuracies"]
    )


def test_early_stopping_on_held_out_preference_accuracy(chat_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(192, seed=21))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(24, seed=22))
    out = tmp_path / "out"
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        output_dir=out,
        num_train_epochs=6,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        metric_for_best_model="rewards/accuracies",
        early_stopping_patience=2,
        generation_eval=False,
    )
    metrics = dpo.main(argv)
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_rewards/accuracies" in e][1:-1]  # during training
    best = max(evals, key=lambda e: e["eval_rewards/accuracies"])  # max keeps the first of a tie
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    assert state["best_metric"] == pytest.approx(best["eval_rewards/accuracies"])
    assert state["global_step"] < 6 * 12  # stopped before the last epoch
    assert metrics["eval_rewards/accuracies"] == pytest.approx(best["eval_rewards/accuracies"])
    assert "eval_accuracy" not in metrics  # generation_eval: false


# ---- TRL's shapes: explicit (strings, conversations) and implicit prompts give the same pairs


def test_each_preference_shape_becomes_the_same_tokenised_pair(chat_gpt2, tmp_path):
    question, good, bad = "what color is the cat in the river?", "red", "blue"
    user = {"role": "user", "content": question}
    shapes = {
        "strings": {"prompt": question, "chosen": good, "rejected": bad},
        "conversations": {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        },
        "implicit": {
            "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}],
        },
    }
    prepared = {}
    for nm, row in shapes.items():
        train = write_jsonl(tmp_path / f"{nm}.jsonl", [row] * 4)
        argv = tiny_config(tmp_path, model_name_or_path=chat_gpt2, train_file=train, output_dir=tmp_path / nm)
        trainer = dpo.build([*argv, "--system_prompt", "be brief"]).trainer
        example = trainer.train_dataset[0]
        prepared[nm] = (example["prompt_ids"], example["chosen_ids"], example["rejected_ids"])
    assert prepared["strings"] == prepared["conversations"] == prepared["implicit"]
    tokenizer = trainer.processing_class
    prompt_ids, chosen_ids, rejected_ids = prepared["implicit"]
    asked = [{"role": "system", "content": "be brief"}, user]
    assert prompt_ids == tokenizer.apply_chat_template(asked, add_generation_prompt=True, return_dict=False)
    assert tokenizer.decode(chosen_ids) == "red<|end|>" and tokenizer.decode(rejected_ids) == "blue<|end|>"


# ---- Bad input: one line each


def test_bad_pairs_get_one_line_naming_them(chat_gpt2, tmp_path):
    def build(rows: list[dict], **keys: object) -> None:
        train = write_jsonl(tmp_path / "train.jsonl", rows)
        dpo.build(
            tiny_config(
                tmp_path, model_name_or_path=chat_gpt2, train_file=train, output_dir=tmp_path / "o", **keys
            )
        )

    pair = {"prompt": "what color is the cat?", "chosen": "red", "rejected": "blue"}
    with pytest.raises(DataError, match="no 'chosen' column.*columns: prompt, rejected.*recipes/sft"):
        build([{"prompt": "q", "rejected": "b"}] * 4)
    with pytest.raises(DataError, match="no 'rejected' column.*rejected_from_labels"):
        build([{"prompt": "q", "chosen": "a"}] * 4)
    with pytest.raises(DataError, match="empty chosen answer"):
        build([pair] * 3 + [{**pair, "chosen": "  "}])
    with pytest.raises(DataError, match="empty rejected answer"):
        build([pair] * 3 + [{**pair, "rejected": ""}])
    with pytest.raises(DataError, match="chosen and rejected answers are identical.*'red'"):
        build([pair] * 3 + [{**pair, "rejected": "red"}])
    long_prompt = {**pair, "prompt": "what color is the cat in the river? " * 8}
    with pytest.raises(
        DataError, match=r"1 (train|validation) example\(s\) have a prompt of max_length \(24\) tokens"
    ):
        build([pair] * 7 + [long_prompt], max_length=24, validation_split_percentage=40)
    with pytest.raises(ConfigError, match="rejected_from_labels.*not labels"):
        build([{"prompt": f"q{i}", "chosen": f"answer {i}"} for i in range(60)], rejected_from_labels=True)
    with pytest.raises(ConfigError, match="gradient_checkpointing.*activation_checkpointing"):
        build([pair] * 4, gradient_checkpointing=True)


# ---- SFT, then DPO: an sft output folder (a LoRA adapter) as the start, merged or continued


def test_an_sft_adapter_folder_is_the_start_and_the_reference(chat_gpt2, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    # An sft output: a trained (here: randomly initialised, non-zero) adapter and the tokenizer.
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(chat_gpt2)
    adapter = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    sft_out = tmp_path / "sft_out"
    adapter.save_pretrained(sft_out)
    AutoTokenizer.from_pretrained(chat_gpt2).save_pretrained(sft_out)
    sft_model = adapter.merge_and_unload().eval()

    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(24, seed=3))
    for keys in ({"use_lora": True}, {"continue_adapter": True}):
        argv = tiny_config(
            tmp_path, model_name_or_path=sft_out, train_file=train, output_dir=tmp_path / "o", **keys
        )
        trainer = dpo.build(argv).trainer
        assert trainer.ref_model is None  # adapters off (merged + new LoRA) or TRL's "ref" adapter copy
        batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
        # The reference is the SFT model (base + its adapter), not the base checkpoint.
        expected = completion_logps(sft_model, batch)
        torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, atol=1e-4, rtol=1e-4)
        assert (
            completion_logps(AutoModelForCausalLM.from_pretrained(chat_gpt2), batch) - expected
        ).abs().max() > 1e-3
        assert trainer.evaluate()["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)


# ---- The saved model: it loads with peft and in pipeline("text-generation"), as trained


def chosen_logps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[dict]) -> float:
    """The chosen answers' summed log-probability (with their end-of-turn token) under the chat
    template, averaged over `pairs`: TRL's eval_logps/chosen, computed by hand."""
    totals = []
    for pair in pairs:
        asked = [{"role": "user", "content": pair["prompt"]}]
        answered = [*asked, {"role": "assistant", "content": pair["chosen"]}]
        prompt = tokenizer.apply_chat_template(asked, add_generation_prompt=True, return_dict=False)
        full = tokenizer.apply_chat_template(answered, return_dict=False)
        assert full[: len(prompt)] == prompt
        ids = torch.tensor([full])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        token_logps = logps.gather(-1, targets[:, None]).squeeze(-1)
        totals.append(token_logps[len(prompt) - 1 :].sum().item())
    return sum(totals) / len(totals)


def test_the_saved_models_load_with_peft_and_in_a_pipeline_as_trained(chat_gpt2, tmp_path):
    """Every weight trained (a model folder), then LoRA on top of that folder (an adapter folder
    whose base it is): reloaded, each gives the chosen answers the log-probability the final
    evaluation reported (not the one before training), and pipeline("text-generation") answers a
    validation prompt as the recipe's own generated answers did, stopping at the end of the turn."""
    dev_pairs = color_pairs(8, seed=42)
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(48, seed=41))
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_pairs)
    asked = [{"role": "user", "content": dev_pairs[0]["prompt"]}]
    runs = {
        "full": {"model_name_or_path": chat_gpt2, "learning_rate": 5e-3},
        "lora": {"model_name_or_path": tmp_path / "full", "use_lora": True, "learning_rate": 1e-2},
    }
    for name, keys in runs.items():
        out = tmp_path / name
        argv = tiny_config(
            tmp_path,
            train_file=train,
            validation_file=dev,
            loss_type=["sigmoid", "sft"],  # the shipped config's: the chosen answers' log-probability rises
            max_steps=6,
            eval_bf16=False,  # float32 evaluation, as the reloaded models are scored below
            output_dir=out,
            **keys,
        )
        metrics = dpo.main(argv)
        trained, before = metrics["eval_logps/chosen"], metrics["eval_logps/chosen_before"]
        assert abs(trained - before) > 0.1, (name, before, trained)  # training moved the model
        tokenizer = AutoTokenizer.from_pretrained(out)
        if name == "lora":
            assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
            reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
            assert chosen_logps(reloaded, tokenizer, dev_pairs) == pytest.approx(trained, abs=1e-3)

        generator = pipeline("text-generation", model=str(out))
        assert chosen_logps(generator.model, tokenizer, dev_pairs) == pytest.approx(trained, abs=1e-3)
        # The recipe's greedy answer to the first validation prompt (eval_predictions.jsonl).
        predicted = json.loads((out / "eval_predictions.jsonl").read_text().splitlines()[0])
        assert predicted["prompt"] == asked[0]["content"] and predicted["answer"] in COLORS, predicted
        reply = generator(asked, max_new_tokens=8, do_sample=False)[0]["generated_text"]
        assert reply == [*asked, {"role": "assistant", "content": predicted["answer"]}], name


# ---- Killed mid-run: the same command resumes from the last complete checkpoint


def test_a_killed_run_resumes_from_its_last_complete_checkpoint_and_ends_as_an_uninterrupted_one(
    chat_gpt2, tmp_path
):
    """SIGKILL after a checkpoint, plus a checkpoint left half-written (what a kill during a save
    leaves), then the same command again. No tolerance: both runs are one command line in processes
    with one thread each, and Trainer restores the adapter, optimizer, scheduler, RNG states and the
    place in the data from the checkpoint (DPOTrainer turns dropout off), so the resumed steps repeat
    the uninterrupted run's float operations one for one; any difference is a resume bug."""
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(64, seed=51))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(12, seed=52))
    argv = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        use_lora=True,  # the shipped config's strategy
        loss_type=["sigmoid", "sft"],
        learning_rate=2e-2,
        per_device_train_batch_size=4,  # 16 steps an epoch
        max_steps=40,
        save_strategy="steps",
        save_steps=5,
        logging_steps=1,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    command = [sys.executable, RUN_PY, *argv]
    done = subprocess.run(
        [*command, *flags(output_dir=reference)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    command += flags(output_dir=out)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-10" / "trainer_state.json").is_file() and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "all_results.json").exists()
    # What a kill during a save leaves: the next checkpoint's folder, its adapter cut short, no state.
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    partial = out / f"checkpoint-{int(newest.name.split('-')[1]) + 5}"
    if not partial.exists():
        shutil.copytree(newest, partial)
    (partial / "trainer_state.json").unlink(missing_ok=True)
    adapter = partial / "adapter_model.safetensors"
    if adapter.is_file():
        adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {newest}" in resumed.stderr
    assert (out / f"incomplete-{partial.name}").is_dir()  # kept, not resumed from
    results, expected = (json.loads((d / "all_results.json").read_text()) for d in (out, reference))
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen"):
        assert results[key] == expected[key], key
    assert results["eval_accuracy"] == expected["eval_accuracy"]  # the generated answers too
    assert results["eval_loss_before"] == expected["eval_loss_before"]  # the step-0 evaluation, kept
    # Every training step logged after the resume has the uninterrupted run's loss.
    states = [json.loads((d / "trainer_state.json").read_text()) for d in (out, reference)]
    logged = [{e["step"]: e["loss"] for e in s["log_history"] if "loss" in e} for s in states]
    assert logged[0] == logged[1] and len(logged[0]) == 40
    answers = [[p["answer"] for p in read_jsonl(d / "eval_predictions.jsonl")] for d in (out, reference)]
    assert answers[0] == answers[1]
    assert tensors_equal(out / "adapter_model.safetensors", reference / "adapter_model.safetensors")


# ---- The `recipes` command: list, new, study, report and sweep take dpo as they take the others


def test_recipes_list_shows_dpo_with_its_preference_metric(capsys):
    assert recipes(["list"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("dpo "))
    assert "Preference tuning of a causal LM on TRL's DPOTrainer" in line
    assert "eval_rewards/accuracies" in line and "ultrafeedback" in line


def test_recipes_new_copies_dpo_into_a_recipe_that_names_itself_and_runs_from_anywhere(chat_gpt2, tmp_path):
    """`recipes new my_dpo --from dpo` in a folder whose path holds "dpo" too: the copy's commands
    name its own folder once (not my_my_dpo), its outputs go to outputs/my_dpo, other files' names
    that contain "dpo" are left alone, and it trains from another working directory."""
    dest = tmp_path / "dpo_experiments"
    dest.mkdir()
    assert recipes(["new", "my_dpo", "--from", "dpo", "--dest", str(dest)]) == 0
    copy = dest / "my_dpo"
    run_py, config = (copy / "run.py").read_text(), (copy / "config.yaml").read_text()
    assert f"accelerate launch {copy.as_posix()}/run.py " in run_py and "my_my_dpo" not in run_py
    assert "output_dir: outputs/my_dpo/tweets" in config and "`recipes study my_dpo`" in config
    # The source's test file, by its own name (not renamed with the recipe).
    assert "tests/test_dpo_distributed.py" in (copy / "README.md").read_text()
    assert "recipes/smollm2/dpo/config_smol.yaml" in (copy / "configs" / "ultrafeedback.yaml").read_text()

    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(32, seed=71))
    work = tmp_path / "work"
    work.mkdir()
    argv = tiny_config(
        tmp_path, model_name_or_path=chat_gpt2, train_file=train, max_steps=2, output_dir="out"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(copy / "run.py"), *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((work / "out" / "run_info.json").read_text())["recipe"] == "my_dpo"
    assert (
        0.0 <= json.loads((work / "out" / "all_results.json").read_text())["eval_rewards/accuracies"] <= 1.0
    )


def test_recipes_study_and_report_rank_dpo_runs_by_preference_accuracy_higher_is_better(chat_gpt2, tmp_path):
    """Free-text answers (no labels, nothing generated): the main metric is eval_rewards/accuracies by
    recipes_lib.metrics' rule, in the study's ranking and in the report beside an expected value."""
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(48, seed=81))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(16, seed=82))
    _, config = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        generation_eval=False,
        max_steps=4,
        learning_rate=1e-3,
        expected={"value": 0.0, "tolerance": 0.0, "source": "a floor no run can miss"},
    )
    out = tmp_path / "study"
    study = ["study", "dpo", "--config", config, "--strategies", "full,lora,freeze", "--output", str(out)]
    assert recipes(study) == 0
    rows = json.loads((out / "study.json").read_text())
    assert [r["strategy"] for r in rows] == ["full", "lora", "freeze"]
    assert {r["metric"] for r in rows} == {"eval_rewards/accuracies"} and not any("error" in r for r in rows)
    for row in rows:
        results = json.loads((Path(row["output_dir"]) / "all_results.json").read_text())
        assert row["value"] == results["eval_rewards/accuracies"]
        assert row["rank"] == 1 + sum(other["value"] > row["value"] for other in rows)  # higher is better

    report = [report_row(Path(r["output_dir"])) for r in rows]
    assert [r["metric"] for r in report] == ["eval_rewards/accuracies"] * 3
    for row, shown in zip(rows, report, strict=True):
        assert shown["value"] == row["value"] and shown["recipe"] == "dpo"
        assert shown["within"] == ("better" if row["value"] > 0 else "yes")  # above the floor: better


def test_recipes_sweep_searches_dpo_runs_by_preference_accuracy_after_training(chat_gpt2, tmp_path):
    """The shipped config's metric (rewards/accuracies, maximized) is each trial's value after its
    last step; the best config, trained by the recipe itself, reports that value."""
    train = write_jsonl(tmp_path / "train.jsonl", color_pairs(48, seed=91))
    dev = write_jsonl(tmp_path / "dev.jsonl", color_pairs(16, seed=92))
    _, config = tiny_config(
        tmp_path,
        model_name_or_path=chat_gpt2,
        train_file=train,
        validation_file=dev,
        use_lora=True,
        max_steps=3,
        metric_for_best_model="rewards/accuracies",
        sweep={"trials": 2, "space": {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}}},
    )
    out = tmp_path / "sweep"
    assert recipes(["sweep", "dpo", "--config", config, "--output", str(out)]) == 0
    results = json.loads((out / "sweep.json").read_text())
    assert (results["metric"], results["direction"]) == ("eval_rewards/accuracies", "maximize")
    trials = results["trials"]
    assert [t["evaluated"] for t in trials] == ["after training, step 3"] * 2
    assert all(t["value"] == t["evaluations"][-1]["value"] for t in trials)
    assert results["best"]["value"] == max(t["value"] for t in trials)
    again = dpo.main(["--config", str(out / "best.yaml")])
    assert again["eval_rewards/accuracies"] == pytest.approx(results["best"]["value"], abs=1e-6)


def test_the_after_sft_config_runs_as_the_readme_gives_it_from_another_folder(tmp_path):
    """`python recipes/dpo/run.py --config configs/after_sft.yaml` run from the user's own folder,
    where recipes/sft wrote `outputs/sft/tweets` (here a tiny adapter), with only the data file and
    the run's length swapped: it starts from the merged SFT model (loss ln 2 before training, its
    reference that model) and trains with the config's beta and learning rate."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    base = build_tiny_gpt2(tmp_path / "base", n_positions=256, chat=True)  # the config's prompt fits
    torch.manual_seed(0)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False),
    )
    sft_out = tmp_path / "outputs" / "sft" / "tweets"
    adapter.save_pretrained(sft_out)
    AutoTokenizer.from_pretrained(base).save_pretrained(sft_out)
    rng = random.Random(0)
    rows = [
        (rng.choice(["negative", "neutral", "positive"]), f"the {rng.choice(list(COLOR_OF))} is here")
        for _ in range(60)
    ]
    data = tmp_path / "tweets.csv"
    data.write_text("sentiment,text\n" + "".join(f"{s},{t}\n" for s, t in rows), encoding="latin-1")

    argv = [sys.executable, str(REPO / "recipes" / "dpo" / "run.py"), "--config", "configs/after_sft.yaml"]
    argv += flags(train_file=data, max_steps=2, max_eval_samples=6, use_cpu=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "outputs" / "dpo" / "after_sft"
    results = json.loads((out / "all_results.json").read_text())
    # Before training the policy is the reference (the merged SFT model, new LoRA at zero): no margin.
    assert results["eval_rewards/margins_before"] == pytest.approx(0.0, abs=1e-4)
    assert results["eval_rewards/chosen_before"] == pytest.approx(0.0, abs=1e-4)
    assert "eval_rewards/accuracies" in results and (out / "adapter_config.json").is_file()
    resolved = (out / "resolved_config.yaml").read_text()
    assert "beta: 0.5" in resolved and "learning_rate: 0.0002" in resolved
