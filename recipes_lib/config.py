"""YAML-then-command-line configuration on top of `HfArgumentParser`.

A run is configured by one YAML file (``config.yaml`` next to ``run.py`` unless
``--config`` names another) whose keys are the recipe's dataclass fields plus
`transformers.TrainingArguments` fields, spelled as HF spells them. ``--key value`` on
the command line overrides the YAML. Unknown keys, wrong types and out-of-range values
raise `ConfigError` naming the key (and the closest valid key for a typo).

Each YAML entry becomes a ``--key=value`` argument placed ahead of the command line, and
one `HfArgumentParser` pass converts both: a YAML value is read exactly as the same flag
would be (PyYAML's string ``2e-5`` becomes a float), and argparse keeps the last
occurrence, so the command line wins.

This module reads and checks what the config says. What the machine decides where the config
is silent (bf16 on capable GPUs, TensorBoard when installed, ...) and `${VAR}` expansion in paths
come from `recipes_lib.machine_defaults`, which `parse_config` calls.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import re
import sys
import typing
from argparse import ArgumentTypeError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from recipes_lib.errors import ConfigError, is_bare_debug
from recipes_lib.machine_defaults import (
    check_one_process_group,
    expand_vars,
    machine_defaults,
    worker_defaults,
)
from recipes_lib.metrics import greater_is_better

# Keys a YAML file may carry that are not arguments: read by `recipes report`, `study` and `sweep`.
NON_ARGUMENT_KEYS = ("expected", "study", "sweep")

# argparse's type names in "invalid float value: 'fast'", as a user would say them.
_MUST_BE = {"int": "an integer", "float": "a number", "bool": "true or false"}


@dataclasses.dataclass
class RunArguments:
    """Arguments about the run itself rather than the model, data or optimisation."""

    overwrite_output_dir: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a checkpoint or a finished run "
            "(otherwise a checkpoint is resumed and a finished run is never overwritten)."
        },
    )
    allow_pickle_checkpoints: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Load a local model folder that holds only pickle weights (pytorch_model.bin, *.pt). "
            "Pickle files can run code when loaded; convert them to safetensors instead when you can."
        },
    )
    # Filled in by parse_config, not settable as keys.
    recipe: str | None = dataclasses.field(default=None, init=False)
    # The keys the YAML, the command line or the recipe's defaults set.
    explicit_keys: list[str] = dataclasses.field(default_factory=list, init=False)
    # The keys filled in because of this machine (report_to, bf16, tf32): another machine may differ.
    machine_keys: list[str] = dataclasses.field(default_factory=list, init=False)
    config_file: str | None = dataclasses.field(default=None, init=False)
    expected: dict | None = dataclasses.field(default=None, init=False)


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors raise ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:  # argparse API
        raise ConfigError(message)


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    default_config: str | Path | None = None,
    recipe_defaults: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """Parse YAML config + command-line overrides into one instance of each dataclass.

    `argv` defaults to `sys.argv[1:]`. `--config PATH` picks the YAML file (relative paths
    are tried from the working directory, then next to `default_config`); without it
    `default_config` is used. A bare `--debug` is removed (see `recipes_lib.errors`).
    `recipe_defaults` are values the recipe needs under any config: the YAML and the
    command line override them, and the resolved config records them. A value the recipe
    cannot work with is refused in its run.py with a one-line `raise ConfigError(...)`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_arg, argv = _pop_config_flag(argv)
    argv = [a for i, a in enumerate(argv) if not is_bare_debug(argv, i)]

    config_path = find_config(config_arg, default_config)
    values = load_yaml(config_path) if config_path else {}
    auto_bf16, values, argv = _pop_auto_bf16(values, argv)
    extras = {key: values.pop(key) for key in NON_ARGUMENT_KEYS if key in values}
    sources = {key: "the recipe's defaults" for key in recipe_defaults or {}}
    sources.update({key: str(config_path) for key in values})
    values = {**(recipe_defaults or {}), **values}

    parser = _Parser(dataclass_types, allow_abbrev=False)
    fields = _field_types(dataclass_types)
    unknown = [key for key in values if key not in fields]
    if unknown:
        key, hint = _describe_unknown(unknown[0], fields)
        raise ConfigError(f"unknown key {key} in {sources[unknown[0]]}{hint}")
    actions = {a.dest: a for a in parser._actions if f"--{a.dest}" in a.option_strings}
    file_argv: list[str] = []
    direct: dict[str, Any] = {}  # the few values argparse cannot read from text (see _argv_tokens)
    for key, value in values.items():
        value = [expand_vars(v) for v in value] if isinstance(value, list) else expand_vars(value)
        tokens = _argv_tokens(key, value, actions[key], fields[key], sources[key])
        if tokens is None:
            direct[key] = [_text(v) for v in value] if isinstance(value, list) else value
        file_argv += tokens or []

    cli_keys = {a[2:].split("=")[0].replace("-", "_").removeprefix("no_") for a in argv if a.startswith("--")}
    chosen = set(values) | (cli_keys & set(fields))
    machine = machine_defaults(set(fields), chosen, cpu_bf16=auto_bf16)  # bf16 on capable GPUs, ...
    parser.set_defaults(**direct, **machine)

    try:  # the file's values alone first, so that an error can say which file it is in
        parser.parse_known_args(file_argv)
    except ConfigError as err:
        if not str(err).startswith("the following arguments are required"):
            raise ConfigError(_explain(str(err), sources)) from None
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=file_argv + argv, return_remaining_strings=True
        )
    except ConfigError as err:
        raise ConfigError(_explain(str(err), None)) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid configuration: {err}") from err
    if remaining:
        flag = next((r for r in remaining if r.startswith("-")), remaining[0])
        key = flag.lstrip("-").split("=")[0]
        option, hint = _describe_unknown(key, fields, prefix="--")
        raise ConfigError(f"unknown command-line option {option}{hint}")

    for args in parsed:
        if isinstance(args, RunArguments):
            args.recipe = Path(default_config).parent.name if default_config else None
            args.explicit_keys = sorted(chosen)
            args.machine_keys = sorted(machine)
            args.config_file = str(config_path) if config_path else None
            args.expected = extras.get("expected")
        if isinstance(args, TrainingArguments):
            worker_defaults(args, chosen)
            if args.metric_for_best_model is not None and "greater_is_better" not in chosen:
                # transformers calls every name not ending in "loss" higher-is-better (perplexity
                # too); the best checkpoint and early stopping follow the project's one rule.
                args.greater_is_better = greater_is_better(args.metric_for_best_model)
            check_training_ranges(args)
            check_one_process_group(args)
    return tuple(parsed)


def _pop_auto_bf16(values: dict[str, Any], argv: list[str]) -> tuple[bool, dict[str, Any], list[str]]:
    """`bf16: auto` (YAML) or `--bf16 auto`: leave bf16 to the machine, CPUs with native bf16
    included (`machine_defaults`); TrainingArguments' bf16 is a plain bool. The command line wins:
    `--bf16 false` after a YAML `auto` is a choice like any other."""
    auto = str(values.get("bf16")).lower() == "auto"
    if auto:
        values = {k: v for k, v in values.items() if k != "bf16"}
    kept: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.lower() == "--bf16=auto" or (
            arg == "--bf16" and [v.lower() for v in argv[i + 1 : i + 2]] == ["auto"]
        ):
            auto = True
            i += 1 if "=" in arg else 2
            continue
        if arg.split("=")[0] == "--bf16":
            auto = False
        kept.append(arg)
        i += 1
    return auto, values, kept


def _argv_tokens(key: str, value: Any, action: Any, tp: Any, where: str) -> list[str] | None:
    """The arguments for one YAML entry, or None for a value argparse cannot read from text,
    which is then set as the argument's default: null (no flag means None), an empty list or
    one with an item starting with '-' (nargs="+" needs a value and takes '-x' for a flag), a
    list where HF's parser takes one value (report_to is `str | list[str]`, parsed as str), and
    a mapping for a field HF does not read as JSON (liger_kernel_config: `dict[str, bool]`)."""
    if value is None:
        if type(None) not in typing.get_args(tp):
            raise ConfigError(f"{key}: a value is required, got null (in {where})")
        return None
    if isinstance(value, list):
        if action.nargs != "+" or not value or any(_text(v).startswith("-") for v in value):
            return None
        return [f"--{key}", *(_text(v) for v in value)]
    if isinstance(value, dict) and action.type is not str:
        return None
    return [f"--{key}={_text(value)}"]  # `=`: a value starting with '-' is not taken for a flag


def _text(value: Any) -> str:
    """A YAML value as it would be typed on the command line (mappings as JSON, as HF reads them)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _explain(message: str, sources: dict[str, str] | None) -> str:
    """argparse's "argument --lr/--l-r: invalid float value: 'fast'" as "lr: must be a number,
    got 'fast' (in c.yaml)"; `sources` maps a key to its file, None means the command line."""
    match = re.match(r"argument --(\w+)\S*: (.*)", message)
    if match is None:
        return f"{message} (see --help)"
    key, problem = match.groups()
    if m := re.match(r"invalid (\w+) value: (.*)", problem):
        problem = f"must be {_MUST_BE.get(m[1], 'a valid ' + m[1])}, got {m[2]}"
    elif m := re.match(r"invalid choice: (.*?) \(choose from (.*)\)", problem):
        close = difflib.get_close_matches(m[1].strip("'"), re.findall(r"'([^']*)'", m[2]), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose from {m[2]}"
        problem = f"invalid value {m[1]}; {hint}"
    elif m := re.match(r"Truthy value expected: got (.*?) but", problem):
        problem = f"must be true or false, got '{m[1]}'"
    elif problem.startswith("expected"):
        problem = "needs a value"
    if sources is None:
        return f"--{key}: {problem} (on the command line)"
    return f"{key}: {problem} (in {sources.get(key, 'the config')})"


def convert(key: str, value: Any, tp: type) -> Any:
    """A value outside the arguments (a `sweep:` block, the learning rate `recipes study` scales)
    read as the command line reads one: `tp` is int, float or bool. A ConfigError names `key`.
    The one way the project types such values, so `1e-5` and `true` mean the same everywhere."""
    try:
        return string_to_bool(_text(value)) if tp is bool else tp(_text(value))
    except (ValueError, ArgumentTypeError):
        raise ConfigError(f"{key}: must be {_MUST_BE[tp.__name__]}, got {value!r}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Safely load a YAML mapping, reporting syntax errors with their line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).split("\n")[0]
        raise ConfigError(f"YAML syntax error in {path}{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of key: value, got {type(data).__name__}")
    return data


def check_training_ranges(args: TrainingArguments) -> None:
    """Reject TrainingArguments values that parse but cannot train."""
    checks = [
        ("learning_rate", args.learning_rate > 0, "> 0"),
        ("per_device_train_batch_size", args.per_device_train_batch_size >= 1, ">= 1"),
        ("per_device_eval_batch_size", args.per_device_eval_batch_size >= 1, ">= 1"),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps >= 1, ">= 1"),
        ("num_train_epochs", args.num_train_epochs >= 0, ">= 0"),  # even when max_steps decides
        ("num_train_epochs", args.num_train_epochs > 0 or args.max_steps > 0, "> 0 (or set max_steps)"),
        ("weight_decay", args.weight_decay >= 0, ">= 0"),
        ("warmup_steps", args.warmup_steps >= 0, ">= 0"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key}: must be {rule}, got {getattr(args, key)!r}")


def resolved_config(*parsed: Any) -> dict[str, Any]:
    """The configuration that reproduces this run: every recipe field, the non-default
    TrainingArguments fields, and the `expected` block. Loadable again with `--config`."""
    out: dict[str, Any] = {}
    expected = None
    run = next((a for a in parsed if isinstance(a, RunArguments)), None)
    explicit = set(run.explicit_keys) | set(run.machine_keys) if run is not None else None
    for args in parsed:
        if isinstance(args, TrainingArguments):
            # The keys the YAML, command line, recipe or machine set (else those that differ from
            # the defaults), never a token. Post-init values (accelerator_config, ...) are left
            # to TrainingArguments. The class's own defaults: TRL's configs add fields (beta,
            # loss_type, max_length, ...) that a repeated run needs as much as the Trainer's.
            defaults = _field_defaults(type(args))
            for key, value in args.to_dict().items():
                if key not in defaults or key == "hub_token":
                    continue
                chosen = key in explicit if explicit is not None else value != _plain(defaults[key])
                if chosen or key in ("output_dir", "seed"):
                    out[key] = value
        else:
            for f in dataclasses.fields(args):
                if f.init:
                    out[f.name] = _plain(getattr(args, f.name))
            if isinstance(args, RunArguments):
                expected = args.expected
    if expected is not None:
        out["expected"] = expected
    return out


def _field_defaults(dtype: type) -> dict[str, Any]:
    # Read from the dataclass fields: building a second TrainingArguments would set up a
    # non-distributed accelerate state and silently make a multi-process run world size 1.
    defaults = {}
    for f in dataclasses.fields(dtype):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _field_types(dataclass_types: Sequence[type]) -> dict[str, Any]:
    types_by_name: dict[str, Any] = {}
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                types_by_name[f.name] = hints.get(f.name, Any)
    return types_by_name


def _describe_unknown(key: str, fields: dict[str, Any], prefix: str = "") -> tuple[str, str]:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return f"'{prefix}{key}'", hint


def _pop_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, config = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path to a YAML file")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


def find_config(config_arg: str | None, default_config: str | Path | None) -> Path | None:
    """The YAML file `--config config_arg` names: tried from the working folder, then next to
    `default_config`; without `config_arg`, `default_config` itself."""
    if config_arg is None:
        if default_config is None:
            return None
        path = Path(default_config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidates = [Path(config_arg)]
    if default_config is not None and not Path(config_arg).is_absolute():
        candidates.append(Path(default_config).parent / config_arg)
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise ConfigError(f"config file not found: {tried}")
