# vl — every target but `setup` uses the project's own virtual environment in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VL := $(VENV)/bin/vl
STAMP := $(VENV)/.vl-installed
export TOKENIZERS_PARALLELISM := false
# Python writes the bytecode of what it imports (`__pycache__`), even where the shell says not to: the install
# compiles nothing up front (--no-compile, below), so without the cache every process that imports torch,
# Lightning and transformers compiled them again from source (16 CPU s a process instead of 7).
unexport PYTHONDONTWRITEBYTECODE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Demo data (override: make demo DEMO_DATA=/tmp/synth) and the run directory set in configs/pretrain/demo.yaml.
DEMO_DATA ?= data/synth
DEMO_RUN := runs/demo

.PHONY: setup demo test test-fast bench app clean help

help:
	@echo "make setup   create .venv and install vl with its extras (idempotent)"
	@echo "make demo    synthesise shards, pretrain the tiny model on CPU, evaluate, print R@1/R@5 vs chance"
	@echo "make test    the whole test suite on CPU (installs first)"
	@echo "make bench   CPU benchmarks; rewrites BENCHMARKS.md"
	@echo "make app     the text-to-video search app on the demo checkpoint (after make demo)"

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. DeepSpeed ships as a source distribution whose setup.py
# imports torch, so it is installed without build isolation, after torch. --no-compile: Python compiles
# the modules it imports on first use (and keeps them, see above) instead of pip compiling every file of
# every package up front (the install took 180 s with it and 89 s without on a 2-core machine). The last step runs `vl fit --help`
# once: it records the options of vl's modules (vl.known_options), so that even a first misspelled model
# or data key is reported before torch loads.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	$(PY) -m pip install -q --no-compile --no-build-isolation 'deepspeed>=0.15'
	@echo "recording the options of vl's modules, so that vl checks a command line before loading torch ..."
	@$(VL) fit --help > /dev/null 2>&1 || true
	@touch $(STAMP)

demo: setup
	$(VL) data synth --out $(DEMO_DATA) --train 2000 --val 24 --test 24 --holdout --skip-existing
	@# a second make demo keeps the trained run (vl fit refuses to overwrite it: make clean starts over)
	test -f $(DEMO_RUN)/checkpoints/last.ckpt || $(VL) fit -c configs/pretrain/demo.yaml --data.init_args.root $(DEMO_DATA)
	$(VL) test -c configs/pretrain/demo.yaml --data.init_args.root $(DEMO_DATA) --ckpt_path $(DEMO_RUN)/checkpoints/last.ckpt
	$(VL) index --ckpt $(DEMO_RUN)/checkpoints/last.ckpt --videos '$(DEMO_DATA)/test-*.tar' --out $(DEMO_RUN)/index --overwrite

test: setup
	$(PY) -m pytest tests -q --durations=10 -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest tests -q -m "not slow"

bench: setup
	$(PY) scripts/bench/run_all.py

app: setup
	@test -f $(DEMO_RUN)/index/config.json || { echo "no search index at $(DEMO_RUN)/index: run 'make demo' first"; exit 1; }
	$(VL) demo --index $(DEMO_RUN)/index

clean:
	rm -rf $(DEMO_RUN) bench_results .pytest_cache
