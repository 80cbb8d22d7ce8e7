# make install | test | lint | format | assets | demo | bench
# `make test` on a fresh machine creates .venv, installs the project with its dev extra, then tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp

.PHONY: install test lint format assets demo bench clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changed since the last install (the stamp is newer).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	# Bytecode on every core (pip compiles one file at a time: 79 s of a fresh install here, this 22 s).
	# `|| true`: torch ships a test helper in Python 3.12 syntax that no import here reaches.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

# Two workers (pytest-xdist), one per core of a 2-core machine, each file's tests in one worker.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Real checkpoints and data that work offline (see recipes_lib/commands/assets.py), into $RECIPES_CACHE.
assets: install
	$(VENV)/bin/recipes assets

# Fine-tunes real checkpoints on real data, offline, every recipe (bert_cls, gpt_clm, sft, resnet_img),
# two at a time, a progress line per run (about 6 minutes on 2 cores from a fresh clone, install included).
DEMO_OUT ?= outputs/demo
demo: install
	$(VENV)/bin/recipes demo --output $(DEMO_OUT)
	@echo "demo runs and summary.json are in $(DEMO_OUT)"

# Side-by-side benchmarks on the offline assets (about 40 minutes on 2 cores; see BENCHMARKS.md).
# JSON, summary.md and logs go to outputs/bench/, the chart to benchmarks/bench_summary.png.
# BENCH_ARGS="--wait_idle 600" waits for idle CPUs first; "--only overhead resnet" runs a subset.
BENCH_ARGS ?=
bench: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
