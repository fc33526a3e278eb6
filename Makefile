# Two commands on a fresh machine: `make demo` runs the whole flow, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint docs deploy-files provision test-3 test-4 unit integration bench bench-smoke clean clean-rabbitmq4

$(BIN)/bus: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/bus  ## the whole flow on this machine, live
	$(BIN)/bus demo

lint: $(BIN)/bus
	$(BIN)/ruff format --check bus demo subscribers api tests bench
	$(BIN)/ruff check bus demo subscribers api tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .bus/site

docs: $(BIN)/bus  ## serve the docs site on http://127.0.0.1:8000/ while you edit docs/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test: lint provision  ## ruff, mypy, import layers, the docs build, then every test on RabbitMQ 3.10 and 4.0
	$(BIN)/pytest -q
	BUS_TEST_BROKER=4.0 $(BIN)/pytest -q -m rabbitmq4 tests/integration

deploy-files: $(BIN)/bus  ## bring deploy/ in line with topology/topology.yaml (subscribers added or removed)
	$(BIN)/python scripts/sync_deploy.py

provision:  ## what the tests need besides Python packages: chromium, promtool, RabbitMQ 4
	scripts/provision

test-3: $(BIN)/bus  ## every test, on the machine's RabbitMQ
	$(BIN)/pytest -q

test-4: $(BIN)/bus provision  ## the tests marked rabbitmq4, on a private RabbitMQ 4.0 node
	BUS_TEST_BROKER=4.0 $(BIN)/pytest -q -m rabbitmq4 tests/integration

unit: $(BIN)/bus
	$(BIN)/pytest -q tests/unit

integration: $(BIN)/bus
	$(BIN)/pytest -q tests/integration

bench: $(BIN)/bus
	$(BIN)/python -m bench

bench-smoke: $(BIN)/bus
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .bus .pytest_cache .mypy_cache .ruff_cache

RABBITMQ4 ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/bus/rabbitmq-4.0
clean-rabbitmq4:  ## remove the cached RabbitMQ 4 folder (unmounting /proc and /dev first)
	-umount "$(RABBITMQ4)/proc" "$(RABBITMQ4)/dev"
	rm -rf --one-file-system "$(RABBITMQ4)"
