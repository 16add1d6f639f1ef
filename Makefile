# `make demo` and `make test` are the whole set-up on a fresh machine: each creates .venv and installs
# the project into it when missing (or when setup.py changed), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: demo test clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m launch.demo --workdir=$(DEMO_DIR)

# The linter, the formatter's check and the type checker (pyproject.toml), then the tests.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
