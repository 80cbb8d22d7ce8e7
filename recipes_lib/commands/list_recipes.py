"""`recipes list`: the recipes of this checkout, their task, defaults, configs and folder."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from recipes_lib.commands.locate import RECIPES_DIR, recipe_dirs
from recipes_lib.config import load_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the recipes of this checkout and the folder they are in")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    rows = [("recipe", "task", "default model", "default data", "metric", "configs", "folder")]
    for path in recipe_dirs():
        config = load_yaml(path / "config.yaml")
        data = "/".join(str(config[k]) for k in ("dataset_name", "dataset_config_name") if config.get(k))
        metric = str((config.get("expected") or {}).get("metric", ""))
        configs = ", ".join(sorted(p.stem for p in (path / "configs").glob("*.yaml")))
        model = str(config.get("model_name_or_path", ""))
        rows.append((path.name, task(path), model, data, metric, configs, str(path)))
    print(f"recipes in {RECIPES_DIR} (any of them, or a copy's folder, works with every subcommand):\n")
    print(aligned_table(rows))
    return 0


def task(path: Path) -> str:
    """The first sentence of the recipe's run.py docstring."""
    doc = ast.get_docstring(ast.parse((path / "run.py").read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split(" (")[0].rstrip(".")


def aligned_table(rows: list[tuple[str, ...]]) -> str:
    """Plain-text columns padded to their widest cell, a dashed line under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
