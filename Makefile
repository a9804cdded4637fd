# One task runner for people and CI. Everything installs into .venv from pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration lint typecheck check schemas faults clean bench bench-quick

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cancel-processor demo

test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not faults"

test-integration: $(STAMP)
	$(BIN)/pytest -q -m integration

lint: $(STAMP)
	$(BIN)/ruff check consumer tests bench
	$(BIN)/ruff format --check consumer tests bench

typecheck: $(STAMP)
	$(BIN)/mypy consumer tests bench

check: lint typecheck test

# Regenerate schemas/ from the pydantic models (a test fails when they drift).
schemas: $(STAMP)
	$(BIN)/python -m consumer.schemas

# The fault suite (README "Guarantees"): crashes, rebalances, outages, bad input, secrets,
# each against real processes; prints the results table and writes fault-results.json.
faults: $(STAMP)
	$(BIN)/pytest -q -m faults tests/faults

# The processor benchmark (README "Performance"): prints a table, writes bench-results.json,
# fails when a target is missed. BENCH_ARGS=--quick (or `make bench-quick`) for a short run.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
