"""Shared fixtures: tests run offline, on tiny models built from configs and generated data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fixed BLAS thread counts: MKL's dynamic threading under load changes float summation order.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
# `make test` runs two pytest workers (pytest-xdist), one per core: one torch thread each, and for
# the recipes they launch, instead of two threads each fighting over the same two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from fixtures import (  # noqa: E402
    build_tiny_bert,
    pair_rows,
    regression_rows,
    sentiment_rows,
    write_csv,
)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def sentiment_csvs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sentiment")
    return write_csv(d / "train.csv", sentiment_rows(800, seed=1)), write_csv(
        d / "dev.csv", sentiment_rows(200, 2)
    )


@pytest.fixture(scope="session")
def pair_csvs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return write_csv(d / "train.csv", pair_rows(1200, seed=3)), write_csv(d / "dev.csv", pair_rows(200, 4))


@pytest.fixture(scope="session")
def regression_csvs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("regression")
    return write_csv(d / "train.csv", regression_rows(1200, 5)), write_csv(
        d / "dev.csv", regression_rows(200, 6)
    )


def load_recipe(name: str):
    """Import recipes/<name>/run.py as a module (recipes are scripts, not a package)."""
    from recipes_lib.commands.locate import import_recipe

    return import_recipe(REPO / "recipes" / name)
