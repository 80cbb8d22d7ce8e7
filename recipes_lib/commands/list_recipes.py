"""`recipes list`: the recipes of this checkout, their task, defaults, configs and folder.

Every folder under recipes/ with a run.py is listed. The task is the first line of its run.py
docstring (the line that says what the recipe does) without asides in brackets; the defaults come
from its config.yaml (the metric: its `expected.metric`, else its `metric_for_best_model`). A
recipe whose files do not read (a copy being edited) is listed with the reason below the table
rather than stopping the list. Only the files are read: nothing is imported, so the list appears
at once.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any

import yaml

from recipes_lib.commands.locate import RECIPES_DIR, recipe_dirs
from recipes_lib.metrics import metric_key


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the recipes of this checkout and the folder they are in")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    rows = [("recipe", "task", "default model", "default data", "metric", "configs", "folder")]
    problems: list[str] = []
    for path in recipe_dirs():
        config = _read_config(path / "config.yaml", problems)
        hub = "/".join(str(config[k]) for k in ("dataset_name", "dataset_config_name") if config.get(k))
        local = config.get("train_file") or config.get("train_dir")
        data = hub or (Path(str(local)).name if local else "")  # a local file by its name
        # The baseline's metric, else the one the config trains for (its main metric).
        metric = (config.get("expected") or {}).get("metric") or config.get("metric_for_best_model")
        metric = metric_key(str(metric)) if metric else ""
        configs = ", ".join(sorted(p.stem for p in (path / "configs").glob("*.yaml")))
        model = str(config.get("model_name_or_path", ""))
        try:
            what = task(path)
        except SyntaxError as err:
            what = ""
            problems.append(f"{path / 'run.py'} does not parse: line {err.lineno}: {err.msg}")
        rows.append((path.name, what, model, data, metric, configs, str(path)))
    print(f"recipes in {RECIPES_DIR} (any of them, or a copy's folder, works with every subcommand):\n")
    print(aligned_table(rows))
    for problem in problems:
        print(f"note: {problem}")
    return 0


def task(path: Path) -> str:
    """What the recipe does: the first line of its run.py docstring without asides in brackets
    ("Fine-tune (or train from scratch) an image classifier, ResNet-50 by default." reads
    "Fine-tune an image classifier, ResNet-50 by default")."""
    doc = ast.get_docstring(ast.parse((path / "run.py").read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return re.sub(r"\s*\([^()]*\)", "", first).strip().rstrip(".")


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    """The recipe's config.yaml as a mapping; {} (and a note) when it is missing or does not read."""
    if not path.is_file():
        problems.append(f"{path} is missing: the recipe has no default config")
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problems.append(f"{path}: YAML syntax error{f' line {mark.line + 1}' if mark else ''}")
        return {}
    return config if isinstance(config, dict) else {}


def aligned_table(rows: list[tuple[str, ...]]) -> str:
    """Plain-text columns padded to their widest cell, a dashed line under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
