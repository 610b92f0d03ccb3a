# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need first (./.venv, the Apache Kafka jars).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast lint format kafka-start kafka-stop clean

# Python, Java and Maven are all `make install` and `make demo` need. The last step
# builds the dbt manifest the Airflow DAGs render dbt from (they never run dbt while
# Airflow parses them); it is a no-op while the dbt project is unchanged.
install: $(STAMP)
	$(BIN)/python -m flows.transform.orchestration manifest

# Packages the whole suite uses beyond Python, Java and Maven (Chromium for the
# report's browser test, docker-compose to validate docker-compose.yml, PostgreSQL
# for the Airflow scheduler test): installed on Debian, named elsewhere. The script
# says what it installs and does nothing when they are there.
system-deps:
	@bash infra/ci/install-system-deps.sh

$(STAMP): pyproject.toml constraints.txt infra/kafka/pom.xml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/stockpipe kafka fetch
	touch $(STAMP)

demo: install
	$(BIN)/stockpipe demo

# The whole suite: a real broker, dbt, Airflow, a browser. What CI runs.
test: install system-deps
	$(BIN)/python -m pytest

# The fast tier for daily work: no broker, no dbt, no browser, no Airflow, no
# system packages (tests are marked by what they use in tests/conftest.py).
FAST := not kafka and not dbt and not browser and not airflow and not system
test-fast: install
	$(BIN)/python -m pytest -m "$(FAST)"

lint: install
	$(BIN)/ruff check flows tests dags benchmarks
	$(BIN)/ruff format --check flows tests dags benchmarks

format: install
	$(BIN)/ruff check --fix flows tests dags benchmarks
	$(BIN)/ruff format flows tests dags benchmarks

kafka-start: install
	$(BIN)/stockpipe kafka start

kafka-stop: install
	$(BIN)/stockpipe kafka stop

clean:
	rm -rf data reports dbt/target dbt/logs .pytest_cache
