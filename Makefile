# Two set-up-and-go targets: `make demo` and `make test`. Both create .venv and install on first use.
# torch: a torch already in .venv is kept (GPU users: install your CUDA build there first);
# otherwise TORCH is installed, by default the CPU-friendly pin below.
VENV  ?= .venv
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin
SUBMISSIONS := dense shortgpt llm-pruner

.PHONY: demo test

$(BIN)/prunereg: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/prunereg
	$(BIN)/prunereg validate $(SUBMISSIONS:%=submissions/%.json)
	for s in $(SUBMISSIONS); do $(BIN)/prunereg evaluate submissions/$$s.json || exit 1; done
	$(BIN)/prunereg ingest results/*/*--*.json
	$(BIN)/prunereg leaderboard build --out site

test: $(BIN)/prunereg
	$(BIN)/pytest -q
