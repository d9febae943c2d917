# The two commands: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: run test bench docs lint format audit-docs install clean

install: $(STAMP)

# torch first: on a machine without CUDA, the pinned CPU build installs from a local file in seconds,
# whereas an unpinned `torch` may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet "torch>=2.4"; \
	else \
		$(BIN)/python -m pip install --quiet torch==2.13.0; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev,hf,distributed]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/isotorch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the peers the benchmarks compare against (the bench extra) install here only, not for run/test
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/primitives.py
	$(BIN)/python benchmarks/audit.py
	$(BIN)/python benchmarks/probes.py
	$(BIN)/python benchmarks/params.py
	$(BIN)/python benchmarks/cka.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/fold.py
	$(BIN)/python benchmarks/align.py

# docs/audit.md is generated from the measured audit table (a test fails when it is stale)
audit-docs: $(STAMP)
	$(BIN)/isotorch audit --primitives --markdown docs/audit.md

# API reference (mkdocs + mkdocstrings) and guides into site/; --strict makes every warning an error
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis runs site
