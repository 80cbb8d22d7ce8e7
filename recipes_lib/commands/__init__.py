"""The `recipes` command: list recipes, copy one as a template, report runs, fetch offline assets,
run the offline demo, compare fine-tuning strategies, and search hyperparameters.

One module per subcommand, each with `add_parser` and `run`; they use the core of
`recipes_lib` and the recipes' own `build`/`main`, and nothing in the core imports them.
Every subcommand that takes a recipe takes its name (see `recipes list`) or its folder.

The parser is built from every subcommand module, so each imports only light modules at its top
and imports torch, transformers and the core modules that load them (recipes_lib.config,
recipes_lib.training) inside the functions that run it: `recipes --help` and `recipes list` answer
in a fraction of a second instead of the seconds transformers takes to load
(tests/test_cli.py checks that they import neither).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recipes_lib.commands import assets, demo, list_recipes, new, report, study, sweep, zero_shot
from recipes_lib.errors import RecipeError

SUBCOMMANDS = (list_recipes, new, report, demo, assets, study, sweep, zero_shot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input prints one line on stderr and returns its exit code."""
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
