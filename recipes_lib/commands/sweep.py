"""`recipes sweep RECIPE`: hyperparameter search with Optuna through `Trainer.hyperparameter_search`.

The search space is the config's `sweep:` block, read here and ignored by training:

    sweep:
      trials: 8                    # `recipes sweep --trials` overrides
      metric: eval_accuracy        # default: metric_for_best_model (else eval_loss)
      direction: maximize          # default: greater_is_better (recipes_lib.metrics)
      space:
        learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # a float range
        num_train_epochs: {low: 1, high: 4}                     # an integer range
        per_device_train_batch_size: [16, 32]                   # a choice

The recipe's own `build(argv)` makes its data, model and an untrained Trainer; this module
runs the search on that Trainer. Every trial starts from the same initial weights (a copy of
the model the recipe built) with the same seed, so trials differ only in the searched values,
and the best trial's config reproduces its metric.

A trial's value is its metric evaluated after its last training step (after loading the best
checkpoint when `load_best_model_at_end` is set), the number the recipe's `main` would report.
Left to itself, `hyperparameter_search` takes the last evaluation made during training, which
with `eval_on_start: true` and `eval_strategy: 'no'` is the step-0 one (the same untrained
value for every trial), and with per-epoch or step evaluations can predate the last step;
`final_evaluation` evaluates once more when training ends and makes that the trial's value.
Trials are not pruned, so every trial trains to its end and every value is a final one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from recipes_lib.commands.locate import find_recipe, import_recipe
from recipes_lib.errors import ConfigError, RecipeError
from recipes_lib.metrics import greater_is_better, metric_key

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback, TrainingArguments

# transformers, optuna and recipes_lib.config are imported in the functions that use them, so that
# `recipes --help` does not load them.

SWEEP_KEYS = ("trials", "metric", "direction", "space")
STUDY_DB = "sweep.db"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyperparameter search (Optuna) over the config's sweep: space; writes the best config as YAML",
        epilog="Other --key value options go to the recipe, e.g. --max_train_samples 500.",
    )
    p.add_argument("recipe", help="recipe name (see `recipes list`) or a recipe folder")
    p.add_argument("--config", help="the recipe's YAML with a sweep: block (default: its config.yaml)")
    p.add_argument("--trials", type=int, help="number of trials (default: sweep.trials in the config)")
    p.add_argument(
        "--output", help="folder for the trials, sweep.json and best.yaml (default: outputs/sweep/RECIPE)"
    )
    p.set_defaults(fn=run, takes_overrides=True)


def run(args: argparse.Namespace) -> int:
    from recipes_lib.config import find_config, load_yaml

    recipe = find_recipe(args.recipe)
    config = find_config(args.config, recipe / "config.yaml").resolve()
    spec = parse_sweep(load_yaml(config).get("sweep"), args.trials)
    out = Path(args.output or f"outputs/sweep/{recipe.name}")
    trials_dir = out / "trials"
    module = import_recipe(recipe)
    if not hasattr(module, "build"):
        raise RecipeError(
            f"{recipe / 'run.py'} has no build(argv) function returning its Trainer to search with"
        )
    built = module.build(["--config", str(config), "--output_dir", str(trials_dir), *args.overrides])
    results = run_search(built.trainer, spec)
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    best_yaml = write_best_config(
        trials_dir / "resolved_config.yaml", results, out / "best.yaml", out / "best", recipe / "run.py"
    )
    print(f"\n{format_trials(results)}")
    print(f"{results['metric']}: {results['evaluated']}")
    print(f"trials: {out / 'sweep.json'}\nbest config: {best_yaml}; train it with")
    print(f"  accelerate launch {recipe / 'run.py'} --config {best_yaml}")
    return 0


@dataclasses.dataclass
class SweepSpec:
    """A parsed `sweep:` block."""

    space: dict[str, Any]
    trials: int = 10
    metric: str | None = None
    direction: str | None = None


def parse_sweep(block: Any, trials: int | None = None) -> SweepSpec:
    """Validate a `sweep:` block; every error names the key. Values are read as the command line
    reads them (`recipes_lib.config.convert`): PyYAML gives `1e-5` as a string."""
    from transformers import TrainingArguments

    from recipes_lib.config import convert

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
    n = trials if trials is not None else convert("sweep.trials", block.get("trials", 10), int)
    if n < 1:
        raise ConfigError(f"sweep.trials: must be >= 1, got {n}")
    return SweepSpec(space=space, trials=n, metric=block.get("metric"), direction=direction)


def _check_rule(key: str, rule: Any) -> Any:
    from recipes_lib.config import convert

    if isinstance(rule, list) and rule:
        return rule  # a choice
    if (
        isinstance(rule, dict)
        and {"low", "high"} <= set(rule)
        and set(rule) <= {"low", "high", "log", "step"}
    ):
        as_int = all(isinstance(rule[k], int) and not isinstance(rule[k], bool) for k in ("low", "high"))
        number = int if as_int else float
        checked = {k: convert(f"{key}.{k}", rule[k], number) for k in ("low", "high")}
        if not checked["low"] < checked["high"]:  # also refuses nan
            raise ConfigError(f"{key}: low must be below high, got {rule}")
        checked["log"] = convert(f"{key}.log", rule.get("log", False), bool)
        if "step" in rule:
            checked["step"] = convert(f"{key}.step", rule["step"], number)
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
                step = rule.get("step", 1)
                params[key] = trial.suggest_int(key, rule["low"], rule["high"], log=rule["log"], step=step)
            else:
                step = rule.get("step")
                params[key] = trial.suggest_float(key, rule["low"], rule["high"], log=rule["log"], step=step)
        return params

    return suggest


def objective_metric(spec: SweepSpec, args: TrainingArguments) -> tuple[str, str]:
    """(metric key in the eval metrics, optuna direction)."""
    metric = metric_key(spec.metric or args.metric_for_best_model or "loss")
    return metric, spec.direction or ("maximize" if greater_is_better(metric) else "minimize")


def final_evaluation(
    trainer: Trainer, metric: str, objective: Callable[[dict[str, float]], float]
) -> TrainerCallback:
    """A callback that evaluates once more when a trial's training ends and makes that the trial's
    value.

    `hyperparameter_search` reads a trial's value from `trainer.objective`, which every
    evaluation during training overwrites and which it fills itself only when training never
    evaluated. This callback evaluates after the last step (and after the best checkpoint is
    loaded, when `load_best_model_at_end` is set), sets `trainer.objective` from it, and stores
    on the Optuna trial which evaluation that was and every evaluation of the metric.
    Its `trial` is set by the search-space function at the start of each trial.
    """
    from transformers import TrainerCallback

    from recipes_lib.training import predict

    class FinalEvaluation(TrainerCallback):
        trial: Any = None

        def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
            if self.trial is None:
                return
            # The recipe's main evaluates this way too: every example once, in order, logged. The
            # logged entry is the one to read: a trainer that adds its metrics when it logs them
            # (TRL's DPOTrainer: rewards/accuracies, logps/chosen, ...) leaves them out of predict's.
            predict(trainer, trainer.eval_dataset, "eval")
            metrics = state.log_history[-1]
            trainer.objective = objective(metrics)
            evaluated = f"after training, step {state.global_step}"
            if args.load_best_model_at_end and state.best_model_checkpoint:
                evaluated += f", {Path(state.best_model_checkpoint).name} loaded (load_best_model_at_end)"
            evaluations = [
                {"step": e.get("step"), "value": e[metric]} for e in state.log_history if metric in e
            ]
            self.trial.set_user_attr("evaluated", evaluated)
            self.trial.set_user_attr("evaluations", evaluations)
            self.trial = None

    return FinalEvaluation()


def run_search(trainer: Trainer, spec: SweepSpec) -> dict[str, Any]:
    """Run `spec.trials` trials on `trainer` (resuming a study in output_dir); return what
    sweep.json holds: the metric, the best trial and every trial with its value."""
    import optuna

    args = trainer.args
    if trainer.eval_dataset is None:
        raise ConfigError("a sweep ranks trials by their evaluation: the recipe needs a validation split")
    metric, direction = objective_metric(spec, args)
    initial = trainer.model  # never trained: each trial trains a copy made by model_init
    trainer.model_init = lambda: copy.deepcopy(initial)

    def objective(metrics: dict[str, float]) -> float:
        if metric not in metrics:
            shown = ", ".join(sorted(k for k in metrics if not k.endswith(("_runtime", "_per_second"))))
            raise ConfigError(f"sweep metric {metric} is not among the eval metrics ({shown})")
        return metrics[metric]

    final = final_evaluation(trainer, metric, objective)
    trainer.add_callback(final)
    suggest = hp_space(spec.space)

    def start_trial(trial: Any) -> dict[str, Any]:
        final.trial = trial
        return suggest(trial)

    storage = f"sqlite:///{(Path(args.output_dir) / STUDY_DB).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer.hyperparameter_search(
        hp_space=start_trial,
        compute_objective=objective,
        n_trials=spec.trials,
        direction=direction,
        backend="optuna",
        storage=storage,
        study_name="sweep",
        load_if_exists=True,
        # No pruning: Optuna's default would stop trials on their evaluations during training,
        # which say little about the metric after training (the one trials are ranked by).
        pruner=optuna.pruners.NopPruner(),
    )
    study = optuna.load_study(study_name="sweep", storage=storage)
    best = study.best_trial  # over every trial of the study, resumed ones included
    return {
        "metric": metric,
        "direction": direction,
        "evaluated": "each trial's value is this metric evaluated after its last training step",
        "best": {"trial": best.number, "value": best.value, "params": best.params},
        "trials": [
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "evaluated": t.user_attrs.get("evaluated"),
                "params": t.params,
                "evaluations": t.user_attrs.get("evaluations"),
            }
            for t in study.trials
        ],
    }


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
        f"{results['metric']} = {best['value']:.6g} after training).\n"
        f"# Searched: {', '.join(f'{k}={v}' for k, v in best['params'].items())}. Train it again with\n"
        f"#   python {run_py} --config {dest}\n"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dest


def format_trials(results: dict[str, Any]) -> str:
    """A markdown table of the trials, best marked."""
    keys = sorted({k for t in results["trials"] for k in t["params"]})
    lines = [
        "| trial | state | " + " | ".join(keys) + f" | {results['metric']} | evaluated |",
        "|---|---|" + "---|" * (len(keys) + 2),
    ]
    for t in results["trials"]:
        value = "" if t["value"] is None or math.isnan(t["value"]) else f"{t['value']:.4f}"
        mark = " (best)" if t["trial"] == results["best"]["trial"] else ""
        cells = " | ".join(_param_cell(t["params"].get(k)) for k in keys)
        lines.append(
            f"| {t['trial']}{mark} | {t['state']} | {cells} | {value} | {t.get('evaluated') or ''} |"
        )
    return "\n".join(lines) + "\n"


def _param_cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
