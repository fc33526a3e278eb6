# Two commands on a fresh machine: `make demo` runs the whole flow, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint unit integration bench bench-smoke clean

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

test: lint  ## ruff, mypy, import layers, then unit and integration tests
	$(BIN)/pytest -q

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
