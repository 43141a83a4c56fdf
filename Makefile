# Two commands: `make run` starts the whole system, `make test` runs every test.
# Both create .venv and install requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run bench lint clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/aterm_bench.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

run: $(STAMP)
	@echo "make run arrives with the portal (webapp/); for now see README.md for the library."
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build
