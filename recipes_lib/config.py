"""YAML-then-command-line configuration on top of `HfArgumentParser`.

A run is configured by one YAML file (``config.yaml`` next to ``run.py`` unless
``--config`` names another) whose keys are the recipe's dataclass fields plus
`transformers.TrainingArguments` fields, spelled as HF spells them. ``--key value`` on
the command line overrides the YAML. Unknown keys, wrong types and out-of-range values
raise `ConfigError` naming the key (and the closest valid key for a typo).

YAML values are converted to the field's declared type here because PyYAML reads
``2e-5`` as a string and `HfArgumentParser.parse_dict` would pass it on unchecked.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from recipes_lib.errors import ConfigError

# Keys a YAML file may carry that are not arguments: read by `recipes report`, `study` and `sweep`.
NON_ARGUMENT_KEYS = ("expected", "study", "sweep")


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
    explicit_keys: list[str] = dataclasses.field(default_factory=list, init=False)
    config_file: str | None = dataclasses.field(default=None, init=False)
    expected: dict | None = dataclasses.field(default=None, init=False)


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors raise ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:  # argparse API
        raise ConfigError(f"{message} (see --help)")


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    default_config: str | Path | None = None,
) -> tuple[Any, ...]:
    """Parse YAML config + command-line overrides into one instance of each dataclass.

    `argv` defaults to `sys.argv[1:]`. `--config PATH` picks the YAML file (relative paths
    are tried from the working directory, then next to `default_config`); without it
    `default_config` is used. A bare `--debug` is removed (see `recipes_lib.errors`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_arg, argv = _pop_config_flag(argv)
    argv = [a for i, a in enumerate(argv) if not _is_bare_debug(argv, i)]

    config_path = find_config(config_arg, default_config)
    values = load_yaml(config_path) if config_path else {}
    extras = {key: values.pop(key) for key in NON_ARGUMENT_KEYS if key in values}

    parser = _Parser(dataclass_types, allow_abbrev=False)
    fields = _field_types(dataclass_types)
    unknown = [key for key in values if key not in fields]
    if unknown:
        key, hint = _describe_unknown(unknown[0], fields)
        raise ConfigError(f"unknown key {key} in {config_path}{hint}")
    values = {key: expand_vars(value) for key, value in values.items()}
    coerced = {key: coerce_value(key, value, fields[key]) for key, value in values.items()}
    if "report_to" in fields and "report_to" not in coerced and tensorboard_available():
        coerced["report_to"] = ["tensorboard"]  # TensorBoard logs by default when it is installed
    cli_keys = {a[2:].split("=")[0].removeprefix("no_") for a in argv if a.startswith("--")}
    coerced.update(gpu_speed_defaults(set(fields), set(coerced) | cli_keys))
    parser.set_defaults(**coerced)

    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
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
            args.explicit_keys = sorted(set(coerced) | {k for k in cli_keys if k in fields})
            args.config_file = str(config_path) if config_path else None
            args.expected = extras.get("expected")
        if isinstance(args, TrainingArguments):
            check_training_ranges(args)
    return tuple(parsed)


def expand_vars(value: Any) -> Any:
    """`${VAR}` and `~` in YAML strings, so configs can name machine-specific folders.
    `${RECIPES_CACHE}` defaults to the asset cache (~/.cache/recipes) when unset."""
    if not isinstance(value, str) or ("$" not in value and not value.startswith("~")):
        return value
    if "RECIPES_CACHE" in value and not os.environ.get("RECIPES_CACHE"):
        value = value.replace("${RECIPES_CACHE}", str(Path.home() / ".cache" / "recipes"))
    return os.path.expanduser(os.path.expandvars(value))


def gpu_speed_defaults(fields: set[str], chosen: set[str]) -> dict[str, bool]:
    """bf16 and tf32 on a GPU that supports them (Ampere or newer), unless the config or the
    command line chose a precision or the CPU. Same accuracy, about twice the speed."""
    if "bf16" not in fields or chosen & {"bf16", "fp16", "use_cpu"}:
        return {}
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False):
        return {}
    defaults = {"bf16": True}
    if "tf32" not in chosen and torch.cuda.get_device_capability(0) >= (8, 0):
        defaults["tf32"] = True
    return defaults


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


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


def coerce_value(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value to the field type `tp`, raising ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        if value is None:
            if len(members) < len(typing.get_args(tp)):
                return None
            raise ConfigError(f"{key}: a value is required, got null")
        # HF types enum fields as `Enum | str`: a string must still be one of the enum's values.
        if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
            members = [m for m in members if m is not str]
        members.sort(key=lambda m: m is str)  # "2e-5" for `float | str` is the float
        errors: list[ConfigError] = []
        for member in members:
            try:
                return coerce_value(key, value, member)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if value is None:
        raise ConfigError(f"{key}: a value is required, got null")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, list | tuple) else [value]
        return [coerce_value(key, item, item_tp) for item in items]
    if origin is dict or tp is dict:
        if isinstance(value, dict | str):
            return value
        raise ConfigError(f"{key}: must be a mapping, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [member.value for member in tp]
        raw = value.value if isinstance(value, enum.Enum) else value
        if raw not in allowed:
            close = difflib.get_close_matches(str(raw), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; choose from {allowed}"
            raise ConfigError(f"{key}: invalid value {raw!r}{hint}")
        return raw
    return value


def check_training_ranges(args: TrainingArguments) -> None:
    """Reject TrainingArguments values that parse but cannot train."""
    checks = [
        ("learning_rate", args.learning_rate > 0, "> 0"),
        ("per_device_train_batch_size", args.per_device_train_batch_size >= 1, ">= 1"),
        ("per_device_eval_batch_size", args.per_device_eval_batch_size >= 1, ">= 1"),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps >= 1, ">= 1"),
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
    explicit = next((set(a.explicit_keys) for a in parsed if isinstance(a, RunArguments)), None)
    for args in parsed:
        if isinstance(args, TrainingArguments):
            # The keys the YAML or command line set (else those that differ from the defaults),
            # never a token. Post-init values (accelerator_config, ...) are left to TrainingArguments.
            defaults = _field_defaults(TrainingArguments)
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


def _is_bare_debug(argv: list[str], i: int) -> bool:
    return argv[i] == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--"))


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
