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
	$(BIN)/python -m consumer.tools.schemas

# The fault suite (README "Guarantees"): crashes, rebalances, outages, bad input, secrets,
# each against real processes; prints the results table and writes fault-results.json.
faults: $(STAMP)
	$(BIN)/pytest -q -m faults tests/faults

# The benchmarks (README "Performance", "Webhook ingress"): the processor's, then the ingress's
# (merged into bench-results.json); both always run, and the target fails when either missed a
# target. BENCH_ARGS=--quick (or `make bench-quick`) shortens the processor run.
bench: $(STAMP)
	status=0; $(BIN)/python -m bench $(BENCH_ARGS) || status=1; \
	$(BIN)/python -m bench.ingress || status=1; exit $$status

bench-quick: $(STAMP)
	$(MAKE) bench BENCH_ARGS=--quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
