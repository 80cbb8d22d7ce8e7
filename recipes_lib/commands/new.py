"""`recipes new NAME --from RECIPE`: copy a recipe folder (shipped, or a copy by its path) as the
start of your own; the copy's files name it instead of the source."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from recipes_lib.commands.locate import find_recipe
from recipes_lib.errors import RecipeError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new", help="copy a recipe folder as the start of your own")
    p.add_argument("name", help="name of the new recipe folder")
    p.add_argument(
        "--from", dest="source", required=True, help="recipe to copy: a name (see `recipes list`) or a folder"
    )
    p.add_argument("--dest", default=".", help="folder to create it in (default: the current folder)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    src = find_recipe(args.source)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", args.name):
        raise RecipeError(f"recipe name {args.name!r} must be letters, digits, '_' or '-'")
    dest = Path(args.dest) / args.name
    if dest.exists():
        raise RecipeError(f"{dest} already exists; pick another name or --dest (nothing was changed)")
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "outputs"))
    shown = dest.as_posix() if args.dest != "." else args.name
    for path in tmp.rglob("*"):
        if path.suffix in (".py", ".yaml", ".yml", ".md"):
            text = path.read_text(encoding="utf-8")
            path.write_text(renamed(text, src.name, args.name, shown), encoding="utf-8")
    tmp.rename(dest)
    print(f"created {dest} from {src}: edit {dest / 'config.yaml'}, then run")
    print(f"  accelerate launch {dest / 'run.py'}")
    return 0


def renamed(text: str, source: str, name: str, folder: str) -> str:
    """`text` of a copied file naming the copy: a path to the source folder's own files
    (`recipes/SOURCE/run.py`, or a copy's `/path/to/SOURCE/config.yaml`) points into the copy's
    `folder`, an output folder `outputs/.../SOURCE` becomes the copy's own, and SOURCE as a word
    (`recipes study SOURCE`, a title) the new name. In one pass, so a name or folder that contains
    SOURCE (`my_dpo`, a `~/dpo_runs` destination) is not renamed again; names that only contain it
    (`test_dpo.py`, `bench_sft.py`) and other projects' paths (alignment-handbook's
    `recipes/smollm2/dpo/config_smol.yaml`) stay."""
    word = re.escape(source)
    pattern = re.compile(
        # recipes/dpo/run.py, a copy's /path/to/my_dpo/config.yaml
        rf"(?P<recipe>(?<![\w.~/-])/?(?:[\w.~-]+/)*{word}/)(?=run\.py|config\.yaml|configs/|README\.md)"
        # outputs/dpo/tweets, outputs/demo/bert_cls
        rf"|(?P<outputs>\boutputs/(?:[\w.-]+/)*){word}\b"
        # `recipes study dpo`, "# dpo: preference tuning"
        rf"|(?<![\w/.-]){word}(?![\w-])"
    )

    def rename(match: re.Match) -> str:
        if match["recipe"]:
            return f"{folder}/"
        return (match["outputs"] or "") + name

    return pattern.sub(rename, text)
