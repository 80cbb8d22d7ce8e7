"""Finding recipes: the ones shipped in this checkout, or any recipe folder by its path.

A recipe is a folder holding `run.py` and `config.yaml`; `recipes new` copies make more of
them anywhere on disk, so every subcommand takes a recipe's name or its folder.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from recipes_lib.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def is_recipe(path: Path) -> bool:
    return (path / "run.py").is_file() and (path / "config.yaml").is_file()


def recipe_dirs() -> list[Path]:
    """Folders under this checkout's recipes/ that hold a run.py (`recipes list` notes any without
    a config.yaml)."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p for p in RECIPES_DIR.iterdir() if (p / "run.py").is_file())


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe folder `name_or_path` names: a folder (or its run.py) holding run.py and
    config.yaml, else a recipe of this checkout by name."""
    path = Path(name_or_path).expanduser()
    if path.name == "run.py":
        path = path.parent
    if is_recipe(path):
        return path.resolve()
    shipped = {p.name: p for p in recipe_dirs()}
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if path.is_dir():
        raise RecipeError(f"{path} is not a recipe folder: it needs a run.py and a config.yaml")
    raise RecipeError(
        f"no recipe {str(name_or_path)!r}: give a recipe folder's path or one of {', '.join(shipped)}"
    )


def import_recipe(recipe_dir: Path, module_name: str | None = None) -> types.ModuleType:
    """Import `recipe_dir/run.py` as a module (recipes are scripts, not a package), by default
    named `recipe_<folder name>`, so its `build`, `main` and argument dataclasses can be used
    in-process."""
    recipe_dir = Path(recipe_dir)
    name = module_name or f"recipe_{recipe_dir.name}"
    spec = importlib.util.spec_from_file_location(name, recipe_dir / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module
