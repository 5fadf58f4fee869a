# slicecache: `make run` starts the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest soak bench bench-full chart-check clean

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

# Minutes of cold/warm traffic with disconnects, idle readers, PURGEs, version flips and
# origin faults, then leak, byte and memory checks (bench/soak.py). Not part of `make test`.
soak: install
	$(BIN)/pytest -q -s -p no:cacheprovider bench/soak.py

bench: install
	$(BIN)/python -m bench.run --quick

bench-full: install
	$(BIN)/python -m bench.run

chart-check: install
	PYTHON=$(BIN)/python bash scripts/chart-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
