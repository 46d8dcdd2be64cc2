# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` and nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

BENCH_STAMP := $(VENV)/.installed-bench
BENCHMARKS := overhead drain matrix enqueue latency scale memory tracing_cost refusal schedule_idle web_list wal retention server_bound flow batches

.PHONY: demo test check lint typecheck bench bench-quick chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -X dev -m pytest $(PYTEST_ARGS)

$(BENCH_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed

# The full set (about 25 minutes on 2 cores); figures go to bench/results/, the chart to bench/.
bench: $(BENCH_STAMP)
	for name in $(BENCHMARKS); do $(BIN)/python bench/$$name.py || exit 1; done

# Each benchmark's --quick mode (under a minute): checks they run, measures nothing of note.
bench-quick: $(BENCH_STAMP)
	for name in $(BENCHMARKS); do $(BIN)/python bench/$$name.py --quick || exit 1; done

# The fault and bad-input suites at the scale of issue #5 (BATCHWORKS_CHAOS_SCALE=full), printing
# their figures; `make test` runs the same tests at CI scale. Figures of a full run:
# tests/chaos/README.md. BATCHWORKS_CHAOS_FIGURES=path also writes them as JSON.
chaos: $(STAMP)
	BATCHWORKS_CHAOS_SCALE=full $(BIN)/python -X dev -m pytest tests/chaos tests/badinput $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
