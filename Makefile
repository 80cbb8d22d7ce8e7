# make install | test | lint | format | assets | demo
# `make test` on a fresh machine creates .venv, installs the project with its dev extra, then tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp

.PHONY: install test lint format assets demo clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changed since the last install (the stamp is newer).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Real checkpoints and data that work offline (see recipes_lib/assets.py), into $RECIPES_CACHE.
assets: install
	$(VENV)/bin/recipes assets

# Fine-tunes real checkpoints on real data, offline, all three recipes (about 10 minutes on 2 cores).
DEMO_OUT ?= outputs/demo
demo: install
	$(VENV)/bin/recipes demo --output $(DEMO_OUT)
	@echo "demo runs and summary.json are in $(DEMO_OUT)"

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
