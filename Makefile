# Two commands on a fresh clone, with no network but the package index:
#   make demo   sets up .venv and runs the embedded default pipeline (teacher -> student -> distill -> benchmark)
#   make test   sets up .venv with the dev extra and runs the README's test command
# Both are idempotent. torch: the CPU wheel torch==2.13.0 unless a torch is installed already, or TORCH= names
# another spec (e.g. make test TORCH="torch==2.13.0+cu126" on a GPU machine). ARGS= passes flags to the pipeline.

VENV ?= .venv
PYTHON ?= python3
TORCH ?=
ARGS ?=
CPU_TORCH := torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test torch

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

torch: $(BIN)/python
	@if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH)"; \
	elif ! $(BIN)/python -c "import torch" 2>/dev/null; then $(BIN)/python -m pip install --quiet "$(CPU_TORCH)"; fi

demo: torch
	$(BIN)/python -m pip install --quiet -e ".[demo]"
	$(BIN)/seq2seq-distill pipeline $(ARGS)

test: torch
	$(BIN)/python -m pip install --quiet -e ".[dev,demo]"
	$(BIN)/pytest -q
