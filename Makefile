# slicecache: `make run` starts the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lock run test lint typecheck pytest soak crash bench bench-full bench-fleet fleet chart-check clean profile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change. requirements.lock pins every
# distribution (scripts/lock.py writes it), so each install gets the same versions.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test,bench]'
	@touch $@

# Refresh requirements.lock after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python scripts/lock.py

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
	$(BIN)/python -m bench.fleet --quick

# N instances behind HAProxy (balance uri + hash-type consistent): aggregate hit throughput
# for 1..N instances, and origin fetches per object across the fleet.
bench-fleet: install
	$(BIN)/python -m bench.fleet

# The one-machine fleet: N instances (default: one per core) behind HAProxy on PORT.
N ?= $(shell nproc)
PORT ?= 8080
fleet: install
	$(BIN)/python scripts/fleet.py --instances $(N) --port $(PORT) --upstream $(UPSTREAM)

bench-full: install
	$(BIN)/python -m bench.run

# Where a 4 KiB cache hit's time goes: py-spy (cProfile without it) over slicecache under
# wrk -t2 -c64; writes bench/results/<date>/profile.svg and profile-top.txt (bench/profile.py).
PROFILE_SECONDS ?= 5
profile: install
	$(BIN)/python -m bench.profile --seconds $(PROFILE_SECONDS)

# L2 crash loop (not in `make test`; ~3-4 min): kill -9 a store under mixed load 30 times,
# check every restart (verify clean, no wrong byte, synced puts kept, purges stay purged).
crash: install
	$(BIN)/python -m tests.rawdisk.crash_loop --cycles 30

chart-check: install
	PYTHON=$(BIN)/python bash scripts/chart-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
