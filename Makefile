# One task runner for people and CI. Everything installs into .venv from pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install kafka demo test test-unit test-integration lint typecheck check schemas faults clean bench bench-quick

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

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

demo: $(STAMP)
	$(BIN)/cancel-processor demo

test: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not faults"

test-integration: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q -m integration

lint: $(STAMP)
	$(BIN)/ruff check consumer tests bench kafka_local
	$(BIN)/ruff format --check consumer tests bench kafka_local

typecheck: $(STAMP)
	$(BIN)/mypy consumer tests bench kafka_local

check: lint typecheck test

# Regenerate schemas/ from the pydantic models (a test fails when they drift).
schemas: $(STAMP)
	$(BIN)/python -m consumer.tools.schemas

# The fault suite (README "Guarantees"): crashes, rebalances, outages, bad input, secrets,
# each against real processes; prints the results table and writes fault-results.json.
faults: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest -q -m faults tests/faults

# The benchmarks (README "Performance", "Webhook ingress"): the processor's, then the ingress's
# (merged into bench-results.json); both always run, and the target fails when either missed a
# target. BENCH_ARGS=--quick (or `make bench-quick`) shortens the processor run.
bench: $(STAMP) $(KAFKA_STAMP)
	status=0; $(BIN)/python -m bench $(BENCH_ARGS) || status=1; \
	$(BIN)/python -m bench.ingress || status=1; exit $$status

bench-quick: $(STAMP)
	$(MAKE) bench BENCH_ARGS=--quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
