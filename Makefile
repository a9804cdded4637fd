# One task runner for people and CI. Everything installs into .venv from pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration lint typecheck check schemas clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cancel-processor demo

test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

test-integration: $(STAMP)
	$(BIN)/pytest -q -m integration

lint: $(STAMP)
	$(BIN)/ruff check consumer tests
	$(BIN)/ruff format --check consumer tests

typecheck: $(STAMP)
	$(BIN)/mypy consumer tests

check: lint typecheck test

# Regenerate schemas/ from the pydantic models (a test fails when they drift).
schemas: $(STAMP)
	$(BIN)/python -m consumer.schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
