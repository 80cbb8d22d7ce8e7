"""`recipes sweep`: hyperparameter search with Optuna through `Trainer.hyperparameter_search`.

The search space is the config's `sweep:` block, read here and ignored by training:

    sweep:
      trials: 8                    # `recipes sweep --trials` overrides
      metric: eval_accuracy        # default: metric_for_best_model (else eval_loss)
      direction: maximize          # default: minimize for loss/perplexity/mse, else maximize
      space:
        learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # a float range
        num_train_epochs: {low: 1, high: 4}                     # an integer range
        per_device_train_batch_size: [16, 32]                   # a choice

`recipes sweep` runs the recipe's `main` in-process inside `sweeping(spec)`; the recipe builds
its data, model and Trainer as usual, and `train_and_evaluate` hands the Trainer to
`run_search` instead of training once. Every trial starts from the same initial weights
(a copy of the model the recipe built) with the same seed, so trials differ only in the
searched values, and the best trial's config reproduces its metric.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from transformers import Trainer, TrainingArguments

from recipes_lib.config import coerce_value
from recipes_lib.errors import ConfigError
from recipes_lib.reporting import lower_is_better, metric_key

logger = logging.getLogger(__name__)

SWEEP_KEYS = ("trials", "metric", "direction", "space")
STUDY_DB = "sweep.db"


@dataclasses.dataclass
class SweepSpec:
    """A parsed `sweep:` block."""

    space: dict[str, Any]
    trials: int = 10
    metric: str | None = None
    direction: str | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)  # filled by run_search


_ACTIVE: contextvars.ContextVar[SweepSpec | None] = contextvars.ContextVar("recipes_sweep", default=None)


def parse_sweep(block: Any, trials: int | None = None) -> SweepSpec:
    """Validate a `sweep:` block; every error names the key."""
    if not isinstance(block, dict) or not block.get("space"):
        raise ConfigError(
            "the config needs a `sweep:` block with a `space:` of TrainingArguments keys to search"
        )
    unknown = sorted(set(block) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key sweep.{unknown[0]}; sweep takes {', '.join(SWEEP_KEYS)}")
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    space = {}
    for key, rule in block["space"].items():
        if key not in fields:
            raise ConfigError(f"sweep.space.{key}: only TrainingArguments keys can be searched")
        space[key] = _check_rule(f"sweep.space.{key}", rule)
    direction = block.get("direction")
    if direction not in (None, "minimize", "maximize"):
        raise ConfigError(f"sweep.direction: must be minimize or maximize, got {direction!r}")
    n = trials if trials is not None else coerce_value("sweep.trials", block.get("trials", 10), int)
    if n < 1:
        raise ConfigError(f"sweep.trials: must be >= 1, got {n}")
    return SweepSpec(space=space, trials=n, metric=block.get("metric"), direction=direction)


def _check_rule(key: str, rule: Any) -> Any:
    if isinstance(rule, list) and rule:
        return rule  # a choice
    if (
        isinstance(rule, dict)
        and {"low", "high"} <= set(rule)
        and set(rule) <= {"low", "high", "log", "step"}
    ):
        as_int = all(isinstance(rule[k], int) and not isinstance(rule[k], bool) for k in ("low", "high"))
        number = int if as_int else float
        checked = {k: coerce_value(f"{key}.{k}", rule[k], number) for k in ("low", "high")}
        if checked["low"] >= checked["high"]:
            raise ConfigError(f"{key}: low must be below high, got {rule}")
        checked["log"] = coerce_value(f"{key}.log", rule.get("log", False), bool)
        if "step" in rule:
            checked["step"] = coerce_value(f"{key}.step", rule["step"], number)
        return checked
    raise ConfigError(
        f"{key}: give a list of choices or {{low: .., high: .., log: true|false}}, got {rule!r}"
    )


def hp_space(space: dict[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """The Optuna search-space function Trainer.hyperparameter_search calls for each trial."""

    def suggest(trial: Any) -> dict[str, Any]:
        params = {}
        for key, rule in space.items():
            if isinstance(rule, list):
                params[key] = trial.suggest_categorical(key, rule)
            elif isinstance(rule["low"], int):
                params[key] = trial.suggest_int(key, rule["low"], rule["high"], log=rule["log"],
                                                step=rule.get("step", 1))  # fmt: skip
            else:
                params[key] = trial.suggest_float(key, rule["low"], rule["high"], log=rule["log"],
                                                  step=rule.get("step"))  # fmt: skip
        return params

    return suggest


@contextlib.contextmanager
def sweeping(spec: SweepSpec) -> Iterator[SweepSpec]:
    """Within this block, `train_and_evaluate` searches with `spec` instead of training once."""
    token = _ACTIVE.set(spec)
    try:
        yield spec
    finally:
        _ACTIVE.reset(token)


def active_sweep() -> SweepSpec | None:
    return _ACTIVE.get()


def objective_metric(spec: SweepSpec, args: TrainingArguments) -> tuple[str, str]:
    """(metric key in the eval metrics, optuna direction)."""
    metric = metric_key(spec.metric or args.metric_for_best_model or "loss")
    return metric, spec.direction or ("minimize" if lower_is_better(metric) else "maximize")


def run_search(trainer: Trainer, spec: SweepSpec) -> dict[str, Any]:
    """Run `spec.trials` trials on `trainer` (resuming a study in output_dir) and return the best."""
    import optuna

    args = trainer.args
    metric, direction = objective_metric(spec, args)
    initial = copy.deepcopy(trainer.model)  # every trial starts from the weights the recipe built
    trainer.model_init = lambda: copy.deepcopy(initial)

    def objective(metrics: dict[str, float]) -> float:
        if metric not in metrics:
            shown = ", ".join(sorted(k for k in metrics if not k.endswith(("_runtime", "_per_second"))))
            raise ConfigError(f"sweep metric {metric} is not among the eval metrics ({shown})")
        return metrics[metric]

    storage = f"sqlite:///{(Path(args.output_dir) / STUDY_DB).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = trainer.hyperparameter_search(
        hp_space=hp_space(spec.space), compute_objective=objective, n_trials=spec.trials,
        direction=direction, backend="optuna", storage=storage, study_name="sweep", load_if_exists=True,
    )  # fmt: skip
    study = optuna.load_study(study_name="sweep", storage=storage)
    spec.results = {
        "metric": metric,
        "direction": direction,
        "best": {"trial": int(best.run_id), "value": best.objective, "params": best.hyperparameters},
        "trials": [
            {"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params}
            for t in study.trials
        ],
    }
    return {metric: best.objective, **{f"best_{k}": v for k, v in best.hyperparameters.items()}}


def write_best_config(
    resolved_config: Path, results: dict[str, Any], dest: Path, output_dir: Path, run_py: Path
) -> Path:
    """The sweep run's resolved config with the best trial's values: a YAML that trains it again."""
    config = yaml.safe_load(resolved_config.read_text(encoding="utf-8")) or {}
    best = results["best"]
    config.update(best["params"])
    config["output_dir"] = str(output_dir)
    config.pop("overwrite_output_dir", None)
    header = (
        f"# The best of {len(results['trials'])} trials of `recipes sweep` (trial {best['trial']}: "
        f"{results['metric']} = {best['value']:.6g}).\n"
        f"# Searched: {', '.join(f'{k}={v}' for k, v in best['params'].items())}. Train it again with\n"
        f"#   python {run_py} --config {dest}\n"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dest


def format_trials(results: dict[str, Any]) -> str:
    """A markdown table of the trials, best marked."""
    keys = sorted({k for t in results["trials"] for k in t["params"]})
    lines = ["| trial | state | " + " | ".join(keys) + f" | {results['metric']} |",
             "|---|---|" + "---|" * (len(keys) + 1)]  # fmt: skip
    for t in results["trials"]:
        value = "" if t["value"] is None or math.isnan(t["value"]) else f"{t['value']:.4f}"
        mark = " (best)" if t["trial"] == results["best"]["trial"] else ""
        cells = " | ".join(f"{t['params'].get(k, ''):.3g}" if isinstance(t["params"].get(k), float)
                           else str(t["params"].get(k, "")) for k in keys)  # fmt: skip
        lines.append(f"| {t['trial']}{mark} | {t['state']} | {cells} | {value} |")
    return "\n".join(lines) + "\n"
