# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGIN_DISTS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: run test typecheck pytest bench clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach d,$(PLUGIN_DISTS),-e ./$(d))
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/divergefork run

# The mypy gate (strict, with our own plugin) runs before the tests; no cache, so a
# changed plugin can never be hidden by a stale one.
typecheck: $(STAMP)
	$(BIN)/python -m mypy --no-incremental --cache-dir=/dev/null src plugins tests

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache
