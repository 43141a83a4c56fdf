# Two commands: `make run` starts the whole system, `make test` runs every test.
# Both create .venv and install requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run bench lint clean tools

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

# The example tool written in C.
tools: examples/tools/c/strtool

examples/tools/c/strtool: examples/tools/c/strtool.c
	$(CC) -std=c99 -Wall -Wextra -O2 -o $@ $<

bench: $(STAMP)
	$(PY) bench/aterm_bench.py
	$(PY) bench/eval_vs_celery.py
	$(PY) bench/start_storm.py
	$(PY) bench/result_storm.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

run: $(STAMP)
	@echo "make run arrives with the portal (webapp/); for now see README.md for the library."
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build examples/tools/c/strtool
