# Two set-up-and-go targets: `make demo` and `make test` (which runs `make lint` first). Both create
# .venv and install on first use.
# torch: a torch already in .venv is kept (GPU users: install your CUDA build there first);
# otherwise TORCH is installed, by default the CPU-friendly pin below.
VENV  ?= .venv
TORCH ?= torch==2.13.0
BIN   := $(VENV)/bin
# The demo's points: the submissions also carry their papers' points (issue 11), measured on GPUs.
DEMO := dense:dense shortgpt:drop-25,drop-50 llm-pruner:width-25,width-50

.PHONY: demo lint test

$(BIN)/prunereg: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/prunereg
	$(BIN)/prunereg validate submissions/*.json
	for d in $(DEMO); do \
	  $(BIN)/prunereg evaluate submissions/$${d%%:*}.json $$(echo $${d#*:} | sed 's/^/--point /; s/,/ --point /g') || exit 1; done
	$(BIN)/prunereg prune submissions/shortgpt.json --point drop-25 --out submissions/checkpoints/shortgpt-drop-25
	$(BIN)/prunereg evaluate submissions/shortgpt-checkpoint.json
	$(BIN)/prunereg register submissions/*.json
	$(BIN)/prunereg ingest results/*/*--*.json
	$(BIN)/prunereg leaderboard build --out site --force

# mypy reads the package through build/mypy/prunereg, a link to this folder (see [tool.mypy]).
lint: $(BIN)/prunereg
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p build/mypy && ln -sfn ../.. build/mypy/prunereg
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q
