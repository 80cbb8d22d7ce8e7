"""Every recipe's Trainer carries the guards the README promises (NaN stop, peak memory, FLOPs
counted once, early stopping when asked): `add_run_guards(trainer, strategy_args)` right after the
Trainer is built, in every run.py under recipes/ (a copied or new recipe included)."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO

from recipes_lib.training import NonFiniteLossGuard, PeakMemory, add_run_guards, has_run_guards

RUN_FILES = sorted((REPO / "recipes").glob("*/run.py"))


def trainer_builds_and_guards(path) -> tuple[list[str], set[str]]:
    """The names bound to a `...Trainer(...)` call in run.py, and the names passed to add_run_guards."""
    built, guarded = [], set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name.endswith("Trainer") and isinstance(node.targets[0], ast.Name):
                built.append(node.targets[0].id)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "add_run_guards" and node.args:
            guarded |= {node.args[0].id} if isinstance(node.args[0], ast.Name) else set()
    return built, guarded


def test_every_recipe_is_checked():
    assert {p.parent.name for p in RUN_FILES} >= {"bert_cls", "gpt_clm", "sft", "resnet_img"}


@pytest.mark.parametrize("run_py", RUN_FILES, ids=lambda p: p.parent.name)
def test_every_trainer_a_recipe_builds_gets_the_run_guards(run_py):
    built, guarded = trainer_builds_and_guards(run_py)
    assert built, f"{run_py} builds no Trainer"
    missing = [name for name in built if name not in guarded]
    assert not missing, f"{run_py}: add_run_guards({missing[0]}, strategy_args) missing after building it"


def test_the_check_catches_a_recipe_without_the_call(tmp_path):
    source = (REPO / "recipes" / "bert_cls" / "run.py").read_text()
    stripped = tmp_path / "run.py"
    stripped.write_text(
        source.replace("peak_memory = add_run_guards(trainer, strategy_args)", "peak_memory = None")
    )
    built, guarded = trainer_builds_and_guards(stripped)
    assert built == ["trainer"] and guarded == set()


def test_add_run_guards_attaches_each_guard(tiny_bert, tmp_path):
    from transformers import (
        AutoModelForSequenceClassification,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
    )

    from recipes_lib.strategies import StrategyArguments

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    args = TrainingArguments(
        output_dir=str(tmp_path), eval_strategy="epoch", save_strategy="epoch", use_cpu=True, report_to="none"
    )
    trainer = Trainer(model=model, args=args, eval_dataset=[{"input_ids": [1, 2], "labels": 0}])
    assert not has_run_guards(trainer)
    peak = add_run_guards(trainer, StrategyArguments(early_stopping_patience=2))
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert {NonFiniteLossGuard, PeakMemory, EarlyStoppingCallback} <= set(kinds) and isinstance(
        peak, PeakMemory
    )
    assert has_run_guards(trainer) and trainer.args.load_best_model_at_end
    assert trainer.args.metric_for_best_model == "loss" and trainer.args.greater_is_better is False
