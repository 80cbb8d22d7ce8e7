"""The config layer: YAML then command line, typed, validated, and every shipped YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, load_recipe
from transformers import TrainingArguments

from recipes_lib.commands.study import strategy_argv
from recipes_lib.commands.sweep import parse_sweep
from recipes_lib.config import RunArguments, load_yaml, parse_config, resolved_config
from recipes_lib.data import DataArguments
from recipes_lib.errors import ConfigError
from recipes_lib.metrics import (
    CLASSIFICATION_METRICS,
    MAIN_METRICS,
    REGRESSION_METRICS,
    greater_is_better,
    metric_base,
)

SHIPPED = sorted(REPO.glob("recipes/*/config.yaml")) + sorted(REPO.glob("recipes/*/configs/*.yaml"))


class _Parsed(Exception):
    def __init__(self, parsed: tuple) -> None:
        self.parsed = parsed


def parse_as_recipe(recipe_name: str, argv: list[str]) -> tuple:
    """`argv` parsed as the recipe's build() parses it: its own dataclasses (whatever the recipe
    names them), its config.yaml as the default, and its recipe defaults (which a config may need:
    recipes/sft turns TRL's bf16 off on CPUs). build() is stopped right after its parse_config
    call, before it loads anything."""
    recipe = load_recipe(recipe_name)  # a fresh module, so the swap below touches nothing else

    def parse_and_stop(*args, **kwargs):
        raise _Parsed(parse_config(*args, **kwargs))

    recipe.parse_config = parse_and_stop
    try:
        recipe.build(argv)
    except _Parsed as done:
        return done.parsed
    raise AssertionError(f"{recipe_name}'s build() did not start with parse_config")


def values_of(parsed: tuple) -> dict:
    """Every parsed key and its value, whichever dataclass holds it."""
    return {f: getattr(a, f) for a in parsed for f in vars(a)}


def _parse(tmp_path: Path, yaml_text: str, argv: list[str] = ()):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    return parse_config((DataArguments, RunArguments, TrainingArguments), ["--config", str(path), *argv])


BASE = "train_file: t.csv\noutput_dir: out\n"


def test_yaml_numbers_written_as_strings_become_floats(tmp_path):
    _, _, args = _parse(tmp_path, BASE + "learning_rate: 2e-5\nwarmup_steps: 1e2\n")
    assert args.learning_rate == pytest.approx(2e-5) and isinstance(args.learning_rate, float)
    assert args.warmup_steps == 100


def test_command_line_overrides_yaml(tmp_path):
    _, _, args = _parse(tmp_path, BASE + "learning_rate: 2e-5\nseed: 1\n", ["--learning_rate", "3e-5"])
    assert args.learning_rate == pytest.approx(3e-5) and args.seed == 1


@pytest.mark.parametrize(
    "yaml_text, argv, words",
    [
        ("learnin_rate: 1e-4\n", [], ["learnin_rate", "learning_rate"]),
        ("", ["--learning_rat", "1e-4"], ["--learning_rat", "--learning_rate"]),
        ("", ["--num_train_epoch", "2"], ["--num_train_epoch", "--num_train_epochs"]),
        ("learning_rate: fast\n", [], ["learning_rate", "number", "fast"]),
        ("", ["--learning_rate", "fast"], ["learning_rate", "fast"]),
        ("per_device_train_batch_size: 3.5\n", [], ["per_device_train_batch_size", "integer"]),
        ("eval_strategy: epochs\n", [], ["eval_strategy", "epoch"]),
        ("learning_rate: -1\n", [], ["learning_rate", "> 0"]),
        ("num_train_epochs: -1\nmax_steps: 10\n", [], ["num_train_epochs", ">= 0", "-1"]),
        ("max_steps: 10\n", ["--num_train_epochs", "-2"], ["num_train_epochs", ">= 0", "-2"]),
        ("num_train_epochs: 0\n", [], ["num_train_epochs", "set max_steps"]),
        ("validation_split_percentage: 150\n", [], ["validation_split_percentage"]),
        ("seed: [1\n", [], ["YAML syntax error", "line 4"]),
    ],
)
def test_bad_values_name_the_key(tmp_path, yaml_text, argv, words):
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, BASE + yaml_text, argv)
    for word in words:
        assert word in str(err.value)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config((DataArguments, TrainingArguments), ["--config", str(tmp_path / "nope.yaml")])


def test_expected_block_is_carried_not_parsed(tmp_path):
    _, run, _ = _parse(tmp_path, BASE + "expected: {metric: eval_accuracy, value: 0.9}\n")
    assert run.expected == {"metric": "eval_accuracy", "value": 0.9}


def test_resolved_config_parses_back_to_the_same_arguments(tmp_path):
    parsed = _parse(
        tmp_path, BASE + "learning_rate: 3e-5\neval_strategy: epoch\nreport_to: none\n", ["--seed", "7"]
    )
    out = tmp_path / "resolved.yaml"
    import yaml

    out.write_text(yaml.safe_dump(resolved_config(*parsed)))
    again = parse_config((DataArguments, RunArguments, TrainingArguments), ["--config", str(out)])
    assert resolved_config(*again) == resolved_config(*parsed)
    assert again[2].seed == 7 and again[2].learning_rate == pytest.approx(3e-5)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_parses(path):
    recipe = path.relative_to(REPO).parts[1]
    parsed = parse_as_recipe(recipe, ["--config", str(path)])
    training_args, value = parsed[-1], values_of(parsed)
    assert training_args.output_dir and value["model_name_or_path"]
    if value["expected"] is not None:  # baseline configs say what they should reach and where from
        assert {"metric", "value", "tolerance", "source"} <= set(value["expected"])
    # The main metric names a metric the recipes report (by recipes_lib.metrics' names), and the
    # best checkpoint goes by its direction; sweep and study blocks are valid.
    reported = {*CLASSIFICATION_METRICS, *REGRESSION_METRICS, *MAIN_METRICS}
    assert metric_base(training_args.metric_for_best_model) in reported
    assert training_args.greater_is_better is greater_is_better(training_args.metric_for_best_model)
    if value["expected"] is not None:
        assert metric_base(value["expected"]["metric"]) in reported
    raw = load_yaml(path)
    if "sweep" in raw:
        spec = parse_sweep(raw["sweep"])
        assert spec.trials >= 1 and spec.space
    for strategy, overrides in (raw.get("study") or {}).items():  # each strategy's keys parse too
        parsed = parse_as_recipe(recipe, ["--config", str(path), *strategy_argv(strategy, raw)])
        assert all(getattr(parsed[-1], k) == v for k, v in overrides.items() if hasattr(parsed[-1], k))


def test_config_relative_to_the_recipe_folder():
    *_, training_args = parse_as_recipe("bert_cls", ["--config", "configs/mrpc.yaml"])
    assert training_args.output_dir.endswith("mrpc")


def test_tensorboard_is_on_by_default_only_when_installed(tmp_path, monkeypatch):
    import recipes_lib.machine_defaults as machine

    monkeypatch.setattr(machine, "tensorboard_available", lambda: True)
    assert _parse(tmp_path, BASE)[2].report_to == ["tensorboard"]
    assert _parse(tmp_path, BASE + "report_to: none\n")[2].report_to == []
    assert _parse(tmp_path, BASE, ["--report_to", "none"])[2].report_to == []
    monkeypatch.setattr(machine, "tensorboard_available", lambda: False)
    assert _parse(tmp_path, BASE)[2].report_to == []


def test_config_strings_expand_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("RECIPES_CACHE", raising=False)
    data, _, _ = _parse(tmp_path, "train_file: ${DATA_ROOT}/t.csv\nvalidation_file: ${RECIPES_CACHE}/v.csv\n")
    assert data.train_file == str(tmp_path / "data" / "t.csv")
    assert data.validation_file == str(Path.home() / ".cache" / "recipes" / "v.csv")
    monkeypatch.setenv("RECIPES_CACHE", "/somewhere")
    assert _parse(tmp_path, "train_file: ${RECIPES_CACHE}/t.csv\n")[0].train_file == "/somewhere/t.csv"


def test_bf16_and_tf32_are_on_by_default_only_on_gpus_that_support_them(monkeypatch):
    import torch

    from recipes_lib.machine_defaults import gpu_speed_defaults

    fields = {"bf16", "fp16", "tf32", "use_cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert gpu_speed_defaults(fields, set()) == {"bf16": True, "tf32": True}
    for chosen in ("bf16", "fp16", "use_cpu"):  # a config or flag that chose precision or the CPU wins
        assert gpu_speed_defaults(fields, {chosen}) == {}
    assert gpu_speed_defaults(fields, {"tf32"}) == {"bf16": True}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert gpu_speed_defaults(fields, set()) == {}  # a T4: no bf16, no tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_speed_defaults(fields, set()) == {}


def test_bf16_auto_leaves_precision_to_the_machine_cpus_with_native_bf16_included(tmp_path, monkeypatch):
    import torch

    import recipes_lib.machine_defaults as machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):  # an AVX512-BF16/AMX CPU, then one without
        monkeypatch.setattr(machine, "cpu_native_bf16", lambda native=native: native)
        _, run, args = _parse(tmp_path, BASE + "bf16: auto\n")
        assert args.bf16 is native and "bf16" in run.machine_keys and "bf16" not in run.explicit_keys
        _, run, args = _parse(tmp_path, BASE, ["--bf16", "auto"])  # the same from the command line
        assert args.bf16 is native and "bf16" in run.machine_keys
    monkeypatch.setattr(machine, "cpu_native_bf16", lambda: True)
    _, run, args = _parse(tmp_path, BASE)  # without auto a CPU run stays float32, as before
    assert args.bf16 is False and "bf16" not in run.machine_keys
    _, run, args = _parse(tmp_path, BASE + "bf16: auto\n", ["--bf16", "false"])  # the command line wins
    assert args.bf16 is False and "bf16" in run.explicit_keys
    _, _, args = _parse(tmp_path, BASE + "bf16: auto\nfp16: true\n", ["--use_cpu", "false"])
    assert args.bf16 is False  # a precision chosen beside auto is kept
    with pytest.raises(ConfigError, match="bf16: must be true or false, got 'sometimes'"):
        _parse(tmp_path, BASE + "bf16: sometimes\n")


SPEED = {"train_sampling_strategy": "group_by_length", "average_tokens_across_devices": False}


def _parse_with_defaults(tmp_path: Path, yaml_text: str, argv: list[str] = ()):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml_text)
    types = (DataArguments, RunArguments, TrainingArguments)
    return parse_config(types, ["--config", str(path), *argv], recipe_defaults=SPEED)


def test_recipe_defaults_apply_under_any_config_and_are_recorded(tmp_path):
    parsed = _parse_with_defaults(tmp_path, BASE)  # a user's own YAML that does not mention them
    assert parsed[2].train_sampling_strategy == "group_by_length"
    assert parsed[2].average_tokens_across_devices is False
    resolved = resolved_config(*parsed)
    assert resolved["train_sampling_strategy"] == "group_by_length"
    assert resolved["average_tokens_across_devices"] is False


def test_yaml_and_command_line_override_recipe_defaults(tmp_path):
    yaml_text = BASE + "train_sampling_strategy: random\n"
    _, _, args = _parse_with_defaults(tmp_path, yaml_text, ["--average_tokens_across_devices", "true"])
    assert args.train_sampling_strategy == "random" and args.average_tokens_across_devices is True
    _, _, args = _parse_with_defaults(tmp_path, yaml_text, ["--train_sampling_strategy", "sequential"])
    assert args.train_sampling_strategy == "sequential"


def test_machine_filled_keys_are_told_apart_from_chosen_ones(tmp_path, monkeypatch):
    import recipes_lib.machine_defaults as machine

    monkeypatch.setattr(machine, "tensorboard_available", lambda: True)
    monkeypatch.setattr(machine, "gpu_speed_defaults", lambda fields, chosen: {"bf16": True})
    monkeypatch.setattr(machine, "loader_defaults", lambda fields, chosen: {})
    _, run, args = _parse(tmp_path, BASE + "use_cpu: true\n", ["--seed", "3"])
    assert args.report_to == ["tensorboard"] and args.bf16 is True
    assert run.machine_keys == ["bf16", "report_to"]
    assert {"output_dir", "train_file", "use_cpu", "seed"} <= set(run.explicit_keys)
    assert not set(run.machine_keys) & set(run.explicit_keys)
    _, run, _ = _parse(tmp_path, BASE + "use_cpu: true\nreport_to: none\n")
    assert run.machine_keys == ["bf16"]  # the YAML chose report_to


def test_loader_settings_follow_the_device_unless_chosen(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, run, args = _parse(tmp_path, BASE)
    assert args.dataloader_pin_memory is False  # no GPU: nothing to pin for, and no warning
    assert "dataloader_pin_memory" in run.machine_keys
    assert args.dataloader_persistent_workers is False  # no workers to keep
    _, _, args = _parse(tmp_path, BASE + "dataloader_num_workers: 2\n")
    assert args.dataloader_persistent_workers is True
    _, _, args = _parse(tmp_path, BASE + "dataloader_num_workers: 2\ndataloader_persistent_workers: false\n")
    assert args.dataloader_persistent_workers is False
    _, run, args = _parse(tmp_path, BASE, ["--dataloader_pin_memory", "true"])
    assert "dataloader_pin_memory" not in run.machine_keys  # chosen: kept (use_cpu aside)
    from recipes_lib.machine_defaults import loader_defaults

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader_defaults({"dataloader_pin_memory"}, set()) == {}  # a GPU: Trainer's default, pinned


def test_every_kind_of_yaml_value_parses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        BASE
        + "metrics: [accuracy, f1]\n"  # a list becomes several arguments
        + "lora_target_modules: [query, value]\n"
        + "early_stopping_patience: null\n"  # null for an Optional field
        + "gradient_checkpointing: 'true'\n"  # a bool given as a string
        + "tf32: false\n"  # `bool | None`
        + "lr_scheduler_kwargs: {num_cycles: 2}\n"  # HF reads dict-typed fields as JSON
        + "run_name: -dash-first\n"  # not taken for a flag
        + "report_to: [tensorboard]\n"  # HF's parser takes one value here; the list is kept
    )
    parsed = parse_as_recipe("bert_cls", ["--config", str(path)])
    value = values_of(parsed)
    assert value["metrics"] == ["accuracy", "f1"] and value["lora_target_modules"] == ["query", "value"]
    assert value["early_stopping_patience"] is None
    args = parsed[-1]
    assert args.gradient_checkpointing is True and args.tf32 is False
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}
    assert args.run_name == "-dash-first" and args.report_to == ["tensorboard"]


def test_empty_list_and_null_reach_the_fields_as_written(tmp_path):
    _, _, args = _parse(tmp_path, BASE + "label_names: []\nsave_total_limit: null\n")
    assert args.label_names == [] and args.save_total_limit is None
    with pytest.raises(ConfigError, match="seed: a value is required"):
        _parse(tmp_path, BASE + "seed: null\n")


@pytest.mark.parametrize(
    "yaml_text, argv, message",
    [
        ("bf16: maybe\n", [], "bf16: must be true or false, got 'maybe' (in "),
        ("", ["--bf16", "maybe"], "--bf16: must be true or false, got 'maybe' (on the command line)"),
        ("optim: adamw_torh\n", [], "optim: invalid value 'adamw_torh'; did you mean 'adamw_torch'?"),
        ("", ["--seed", "x"], "--seed: must be an integer, got 'x' (on the command line)"),
        ("", ["--run_name"], "--run_name: needs a value"),
    ],
)
def test_type_errors_say_where_the_value_came_from(tmp_path, yaml_text, argv, message):
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, BASE + yaml_text, argv)
    assert message in str(err.value)
    if not argv:
        assert "c.yaml" in str(err.value)


def test_a_bad_recipe_default_names_the_recipe():
    with pytest.raises(ConfigError, match="learning_rate: must be a number, got 'x' \\(in the recipe's"):
        parse_config((RunArguments, TrainingArguments), [], recipe_defaults={"learning_rate": "x"})


def test_greater_is_better_follows_the_projects_rule_unless_set(tmp_path):
    # transformers' own default would call perplexity and mse higher-is-better.
    for metric, higher in (("perplexity", False), ("mse", False), ("loss", False), ("accuracy", True)):
        _, _, args = _parse(tmp_path, BASE + f"metric_for_best_model: {metric}\n")
        assert args.greater_is_better is higher, metric
    yaml_text = BASE + "metric_for_best_model: perplexity\ngreater_is_better: true\n"
    assert _parse(tmp_path, yaml_text)[2].greater_is_better is True  # the config's choice stands
    assert _parse(tmp_path, BASE)[2].greater_is_better is None


def test_convert_reads_values_as_the_command_line_does():
    from recipes_lib.config import convert

    assert convert("sweep.low", "1e-5", float) == pytest.approx(1e-5)
    assert convert("sweep.trials", 4, int) == 4 and convert("sweep.log", "yes", bool) is True
    with pytest.raises(ConfigError, match="sweep.trials: must be an integer, got True"):
        convert("sweep.trials", True, int)
