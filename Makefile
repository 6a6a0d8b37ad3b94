# Two commands on a fresh machine: `make demo` (the whole pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bundle-run quality style bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[spark,test,lint,http,gsm]'
	$(BIN)/prism assets fetch
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/prism assets fetch qwen-coder-0.5b
	$(BIN)/prism run

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q --slow $(PYTEST_ARGS)

# Every task of the bundle's two jobs (databricks.yml), in depends_on order, through jobs/<stage>.py, on the
# embedded engine with the dev target's parameters (CI runs it after `make test`; tests/integration/test_bundle_run.py).
BUNDLE_ROOT ?= bundle-local
bundle-run: setup
	rm -rf $(BUNDLE_ROOT)
	$(BIN)/prism bundle run-local --target dev --root $(BUNDLE_ROOT)

# Lint + format check (CI runs it after the tests); `make style` fixes what it can.
quality: setup
	$(BIN)/ruff check lib tests jobs bench notebooks resources
	$(BIN)/ruff format --check lib tests jobs bench notebooks resources

style: setup
	$(BIN)/ruff check --fix lib tests jobs bench notebooks resources
	$(BIN)/ruff format lib tests jobs bench notebooks resources

clean:
	rm -rf lakehouse bundle-local .pytest_cache
