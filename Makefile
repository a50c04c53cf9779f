# Two commands on a fresh machine: `make run` and `make test`. Each bootstraps .venv first
# (a quick no-op when pyproject.toml has not changed since the last install).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEED := ../shared/data/transactions.csv
# The folders installed as recstream.<folder> (pyproject.toml's package-dir).
PACKAGES := stream ingest retrain updater recommender deploy

.PHONY: bootstrap browser run test lint bench down clean

bootstrap: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Headless Chromium (Debian's package, ~30 s to install) for the test that opens `recstream report`'s
# page as a person would (tests/e2e/test_demo_loop.py). Not fatal here: `make run` does not need it.
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "warning: chromium could not be installed (apt-get install chromium); the report's browser test needs it"

# The main job on the embedded stack: every service, the seed replayed, the loop shown live
# (Ctrl-C stops it all; `make run ARGS="--for 300"` stops by itself and writes a summary).
run: bootstrap
	$(BIN)/recstream up --demo --seed $(SEED) $(ARGS)

test: bootstrap browser
	$(BIN)/python -m pytest

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p build/typecheck/recstream
	@for p in $(PACKAGES); do ln -sfn $(CURDIR)/$$p build/typecheck/recstream/$$p; done
	$(BIN)/mypy

bench: bootstrap
	$(BIN)/python -m bench

down: bootstrap
	$(BIN)/recstream down

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
