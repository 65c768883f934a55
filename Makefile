# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGIN_DISTS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: run test typecheck pytest test-mypy-oldest bench clean

# The oldest Python divergefork runs on (pyproject.toml's requires-python).
FLOOR := 3.11
comma := ,
FLOOR_CHECK := import sys; sys.exit(0 if sys.version_info >= ($(subst .,$(comma) ,$(FLOOR))) else 1)

# A .venv whose python no longer runs (its interpreter was removed or upgraded away) is
# rebuilt, even though its stamp looks up to date.
ifneq ($(wildcard $(STAMP)),)
ifeq ($(shell [ -x $(BIN)/python ] && echo ok),)
$(info $(VENV)/bin/python no longer runs: rebuilding $(VENV))
$(shell rm -f $(STAMP))
endif
endif

# No stamp means the last set-up did not finish (an old Python, pip failing half way): that
# .venv is removed and built again from scratch, never reused.
$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found; divergefork needs Python $(FLOOR) or newer: run e.g. make PYTHON=python3.12 $(MAKECMDGOALS)" >&2; exit 1; }
	@$(PYTHON) -c '$(FLOOR_CHECK)' || { \
	  echo "error: divergefork needs Python $(FLOOR) or newer, and $(PYTHON) is $$($(PYTHON) -V 2>&1 | cut -d' ' -f2); run e.g. make PYTHON=python3.12 $(MAKECMDGOALS) (nothing was installed)" >&2; exit 1; }
	@if [ -d $(VENV) ] && { [ ! -e $(STAMP) ] || ! $(BIN)/python -c '$(FLOOR_CHECK)' 2>/dev/null; }; then \
	  echo "$(VENV) is left from a set-up that did not finish (or is too old): rebuilding it"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	@rm -f $(STAMP)  # until the install below succeeds
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach d,$(PLUGIN_DISTS),-e ./$(d))
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/divergefork run

# Strict mypy with our own plugin runs before the tests (no cache, so a changed plugin can
# never be hidden by a stale one), then the whole gate over the same files, as users run it.
typecheck: $(STAMP)
	$(BIN)/python -m mypy --no-incremental --cache-dir=/dev/null src plugins tests
	$(BIN)/divergefork check --config-file mypy.ini src plugins tests

pytest: $(STAMP)
	$(BIN)/python -m pytest

# The gate's own tests again on the oldest mypy that pyproject.toml's `check` extra allows
# (the main .venv has the newest), so both ends of the declared range are tested.
MYPY_FLOOR := $(shell sed -n 's/^check = \["mypy>=\([0-9.]*\),.*/\1/p' pyproject.toml)
VENV_OLDEST := .venv-mypy-oldest
STAMP_OLDEST := $(VENV_OLDEST)/.installed-$(MYPY_FLOOR)

$(STAMP_OLDEST): pyproject.toml Makefile
	rm -rf $(VENV_OLDEST)
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install --quiet -e '.[test]' 'mypy==$(MYPY_FLOOR)'
	touch $(STAMP_OLDEST)

test-mypy-oldest: $(STAMP_OLDEST)
	$(VENV_OLDEST)/bin/python -m pytest -p no:cacheprovider tests/test_gate_corpus.py tests/test_mypy_plugin.py tests/test_check.py

test: typecheck pytest test-mypy-oldest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) build .mypy_cache .pytest_cache
