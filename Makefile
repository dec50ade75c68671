# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 import together (and lie on this machine's disk);
# see README "Installation" for why this pair.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test world report clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python -m evollm.demo

# Regenerate the miniature world in assets/ from its recipe (CPU: see assets/README.md for times).
world: install
	$(BIN)/python -m evollm.world.build --out assets

# The measurements recorded in assets/README.md.
report: install
	$(BIN)/python -m evollm.world.report --world assets --target mgsm-ja --budget 48 --fitness-items 150
	$(BIN)/python -m evollm.world.report --world assets --target mixed --budget 48 --fitness-items 150
	$(BIN)/python -m evollm.world.report --world assets --target vqa --budget 24 --fitness-items 100

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
