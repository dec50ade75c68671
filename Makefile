# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 import together (and lie on this machine's disk);
# see README "Installation" for why this pair.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo toy test test-fast wheel-check test-latest test-oldest lock world report clean

# The tested set: requirements/lock.txt pins every package besides torch (see README "Installation").
LOCK    := requirements/lock.txt

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e '.[test,ray,lmeval,tensorboard]'
	touch $@

install: $(BIN)/.installed

# The main job on the miniature world (assets/): `evollm merge` with its default config
# (configs/world-ja-math.yaml) evolves a recipe into runs/ and prints the report's table.
demo: install
	$(BIN)/evollm merge

# Issue 2's toy: every merge method on two tiny fine-tunes trained on the spot.
toy: install
	$(BIN)/python -m evollm.toy

# Regenerate the miniature world from its recipe into $(WORLD) (assets/README.md: times on CPU and GPU;
# `make world WORLD=assets` replaces the committed one).
WORLD ?= build/world
world: install
	$(BIN)/python -m miniworld.build --out $(WORLD)

# The measurements recorded in assets/README.md (CPU: about 30 min; add --device cuda on a GPU).
report: install
	$(BIN)/python -m miniworld.report --world assets --target mgsm-ja --budget 160 --fitness-items 300 --weight-max 2
	$(BIN)/python -m miniworld.report --world assets --target mixed --budget 48 --fitness-items 100
	$(BIN)/python -m miniworld.report --world assets --target vqa --budget 24 --fitness-items 100

test: install
	$(BIN)/python -m pytest tests

# The suite without the tests marked slow (runs, kills, resumes): seconds instead of minutes.
test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"

# The package as users get it: a wheel in a clean venv, used from outside the checkout (.ci/wheel-check).
wheel-check:
	PY=$(PY) TORCH="$(TORCH)" bash .ci/wheel-check

# The suite against the newest releases of everything (no lock), in its own venv made afresh: run it
# before moving the lock (then `make lock`), so that a new release's break is seen before users see it.
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q $(TORCH)
	.venv-latest/bin/pip install -q --upgrade -e '.[test,ray,lmeval,tensorboard]'
	.venv-latest/bin/pip list 2>/dev/null | grep -iE '^(transformers|tokenizers|datasets|huggingface.hub|safetensors|torch) '
	.venv-latest/bin/python -m pytest tests

# The suite on the oldest releases the project claims to support (requirements/oldest.txt).
test-oldest:
	rm -rf .venv-oldest
	$(PY) -m venv .venv-oldest
	.venv-oldest/bin/pip install -q --upgrade pip
	.venv-oldest/bin/pip install -q $(TORCH)
	.venv-oldest/bin/pip install -q -c requirements/oldest.txt -e '.[test,ray,lmeval,tensorboard]'
	.venv-oldest/bin/pip list 2>/dev/null | grep -iE '^(transformers|tokenizers|datasets|huggingface.hub|safetensors|torch) '
	.venv-oldest/bin/python -m pytest tests

# Rewrite the lock from .venv (after the suite passed there).
lock:
	{ sed -n '1,/^[^#]/{/^#/p}' $(LOCK); $(BIN)/pip freeze --exclude-editable | grep -vE '^(torch|torchvision|triton|nvidia-|cuda-)'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest build *.egg-info
