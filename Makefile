# slicecache: `make run` starts the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest bench bench-full chart-check crash clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@

install: $(STAMP)

# Demo origin on 127.0.0.1:8081, the proxy in front of it on 127.0.0.1:8080. Ctrl-C stops both.
run: install
	$(BIN)/python -m bench.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench.run --quick

bench-full: install
	$(BIN)/python -m bench.run

# L2 crash loop (not in `make test`; ~3-4 min): kill -9 a store under mixed load 30 times,
# check every restart (verify clean, no wrong byte, synced puts kept, purges stay purged).
crash: install
	$(BIN)/python -m tests.rawdisk.crash_loop --cycles 30

chart-check: install
	PYTHON=$(BIN)/python bash scripts/chart-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
