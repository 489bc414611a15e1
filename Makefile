# edgedino — every target works on a fresh clone: the first one creates .venv and installs the project.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

OUT      ?= artifacts
SYNTH    := $(OUT)/synth
DATA     ?= $(SYNTH)
JOBS     ?= 2
DEVICE   ?= auto
FRAC     ?= 0.01
SYNTH_N  ?= 64
SHARDS   ?= $(OUT)/shards
PRETRAIN ?= $(OUT)/pretrain
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed-stamp
# This machine's pip prints one harmless line per package for a missing local index; hide those.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: help install test demo synth pseudomasks pretrain finetune inspect verify export bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | sort

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing edgedino with its dev and dask extras (first run only, a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,dask]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, timm, skimage, pyamg, h5py, cv2, click" 
	touch $@

install: $(STAMP)  ## create .venv and install (done automatically by every target)

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest -q

$(SYNTH)/.done: $(STAMP)
	$(PY) cli.py synth --out $(SYNTH) --n $(SYNTH_N) --seed 0 --jobs $(JOBS)
	touch $@

synth: $(SYNTH)/.done  ## generate the built-in synthetic dermoscopy set

# The synthetic set is made only when DATA is left at its default.
pseudomasks: $(STAMP) $(if $(filter $(SYNTH),$(DATA)),$(SYNTH)/.done)  ## stage 1: hair removal + Random Walker -> HDF5 shards
	$(PY) cli.py pseudomasks $(foreach d,$(DATA),--data $(d)) --out $(SHARDS) --jobs $(JOBS)

inspect: $(STAMP)  ## summary and contact sheet of the shards
	$(PY) cli.py inspect $(SHARDS) --png $(OUT)/shards_sheet.png

verify: $(STAMP)  ## re-hash the shards against their manifest
	$(PY) cli.py verify $(SHARDS)

export: $(STAMP)  ## pseudo-masks at original size as <ID>_segmentation.png
	$(PY) cli.py export --shards $(SHARDS) --out $(OUT)/pseudomask_png

pretrain: $(STAMP)  ## stage 2: DINO + auxiliary pseudo-mask segmentation
	$(PY) cli.py pretrain --shards $(SHARDS) --out $(PRETRAIN) --device $(DEVICE)

finetune: $(STAMP)  ## fine-tune with FRAC of the labels (default 0.01) and report metrics
	$(PY) cli.py finetune $(foreach d,$(DATA),--data $(d)) --frac $(FRAC) --checkpoint $(PRETRAIN)/export.pt --out $(OUT)/finetune-$(FRAC)

demo: $(STAMP)  ## the whole main job on built-in synthetic data
	@echo ">> 1/4 synthetic data"; $(MAKE) --no-print-directory synth
	@echo ">> 2/4 pseudo-masks";   $(MAKE) --no-print-directory pseudomasks DATA=$(SYNTH)
	@echo ">> 3/4 inspect";        $(MAKE) --no-print-directory inspect
	@echo ">> 4/4 pretrain + finetune"; \
	  if $(PY) cli.py pretrain --help | grep -q -- '--epochs'; then \
	    $(MAKE) --no-print-directory pretrain && $(MAKE) --no-print-directory finetune DATA=$(SYNTH); \
	  else echo "   pretrain/finetune are not built yet (issues #4, #5): stopping after stage 1"; fi
	@echo ">> done: shards in $(SHARDS), contact sheet $(OUT)/shards_sheet.png"

bench: $(STAMP)  ## run the benchmarks (printed figures)
	@for b in bench/bench_*.py; do echo ">> $$b"; $(PY) $$b --quick; done

clean:  ## remove generated artifacts (keeps .venv)
	find $(OUT) -mindepth 1 ! -name README.md -exec rm -rf {} +
