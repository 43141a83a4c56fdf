# Two commands: `make run` starts the whole system, `make test` runs every test.
# Both create .venv and install requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run bench lint clean tools browser chaos screenshots

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m pytest

# The browser test drives Debian's Chromium: Playwright's own browser download is not used.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get install -y -q chromium; \
	  else echo "Chromium is missing: 'sudo apt-get install chromium' (the browser test needs it)"; fi; }

# Retakes the README's pictures in docs/images: the browser test takes them in Chromium, as a
# candidate and an operator see the pages (it needs Redis, as `make test` does).
screenshots: $(STAMP) browser
	rm -rf test-artifacts/browser/docs-images
	CI=true $(PY) -m pytest -q tests/test_browser.py -k a_candidate_passes_the_demo_exam
	cp test-artifacts/browser/docs-images/*.png docs/images/

# Full fault-injection variants (the fast ones run in `make test`).
chaos: $(STAMP)
	TOOLCALL_CHAOS=full $(PY) -m pytest -rA tests/test_chaos.py

# The example tool written in C.
tools: examples/tools/c/strtool

examples/tools/c/strtool: examples/tools/c/strtool.c
	$(CC) -std=c99 -Wall -Wextra -O2 -o $@ $<

# Every benchmark, then one table of ratios against their same-run baselines.
bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Every Procfile process on embedded defaults (SQLite, local Redis -- a private one when none runs).
run: $(STAMP) tools
	$(PY) scripts/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build examples/tools/c/strtool
