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
# Fine-tune steps in the demo: a 12 x 12-token step costs about 3x the old 6 x 6 one, so 40 instead of 120.
DEMO_ITERS ?= 40
METHOD   ?= walker
# Each pseudo-mask method gets its own shard folder (a folder never mixes configurations).
SHARDS   ?= $(OUT)/shards$(if $(filter-out walker,$(METHOD)),-$(METHOD))
PRETRAIN ?= $(OUT)/pretrain
# self-training rounds (make refine): round-2/, round-3/, ... each with shards/ (relabelled) and pretrain/
REFINE   ?= $(OUT)/refine
ROUNDS   ?= 1
ROUND_EPOCHS ?= 4
# ROUND=N: finetune, predict's default model and table start from round N's student and pool instead
ifdef ROUND
PRETRAIN := $(REFINE)/round-$(ROUND)/pretrain
SHARDS   := $(REFINE)/round-$(ROUND)/shards
endif
PRESET   ?= auto
SHARD_SIZE ?= 64
ARGS     ?=
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed-stamp
# This machine's pip prints one harmless line per package for a missing local index; hide those.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: help install test demo synth pseudomasks pretrain refine advise finetune predict table inspect verify export bench clean

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
	$(PY) cli.py pseudomasks $(foreach d,$(DATA),--data $(d)) --out $(SHARDS) --jobs $(JOBS) --shard-size $(SHARD_SIZE) --method $(METHOD)

inspect: $(STAMP)  ## summary and contact sheet of the shards
	$(PY) cli.py inspect $(SHARDS) --png $(OUT)/shards_sheet.png

verify: $(STAMP)  ## re-hash the shards against their manifest
	$(PY) cli.py verify $(SHARDS)

export: $(STAMP)  ## pseudo-masks at original size as <ID>_segmentation.png
	$(PY) cli.py export --shards $(SHARDS) --out $(OUT)/pseudomask_png

pretrain: $(STAMP)  ## stage 2: DINO + auxiliary pseudo-mask segmentation
	$(PY) cli.py pretrain --shards $(SHARDS) --out $(PRETRAIN) --device $(DEVICE) --preset $(PRESET) $(ARGS)

refine: $(STAMP)  ## self-training: ROUNDS rounds, each relabels the pool with the last student and trains the next (then ROUND=2 on finetune)
	$(PY) cli.py refine --shards $(SHARDS) --pretrain $(PRETRAIN) --out $(REFINE) --rounds $(ROUNDS) --epochs $(ROUND_EPOCHS) --device $(DEVICE) $(ARGS)

N        ?= 16
ADVISE   ?= $(OUT)/advise
advise: $(STAMP)  ## which N images to label first (default 16), from round 2's pool (make refine first): ADVISE/advise.csv + annotate/
	$(PY) cli.py advise --shards $(REFINE)/round-2/shards $(foreach d,$(DATA),--data $(d)) --n $(N) --out $(ADVISE) --device $(DEVICE) $(ARGS)

# fine-tuning beside the pool's pseudo-masks (ours+semi) when the shards exist: never below plain fine-tuning in
# docs/RESULTS.md's real-data table; SEMI=0 turns it off
SEMI     ?= 1
SEMI_ARG  = $(if $(and $(filter 1,$(SEMI)),$(wildcard $(SHARDS)/manifest.json)),--pseudo-shards $(SHARDS))
# test masks (and 'make predict' with the model) made together with stage 1's walker, per image (the fixed fusion
# beat both the model alone and the pseudo-masks alone in docs/RESULTS.md); FUSE=0 turns it off
FUSE     ?= 1
FUSE_ARG  = $(if $(filter 1,$(FUSE)),--fuse)
# LABELS=FILE (advise.csv, or one id per line): fine-tune on exactly those images instead of a random FRAC
LABEL_ARG = $(if $(LABELS),--labels-from $(LABELS),--frac $(FRAC))
FT_NAME   = finetune-$(if $(LABELS),listed,$(FRAC))$(if $(ROUND),-round$(ROUND))
finetune: $(STAMP)  ## fine-tune with FRAC of the labels (default 0.01) or the LABELS list, beside the pseudo-masks of SHARDS (SEMI=0: labels only; FUSE=0: masks from the model alone)
	@test -f $(PRETRAIN)/export.pt || { echo "no pretrained checkpoint at $(PRETRAIN)/export.pt: run 'make pretrain' first"; exit 1; }
	@echo ">> using the latest pretraining export: $(PRETRAIN)/export.pt$(if $(SEMI_ARG), and the pseudo-masks of $(SHARDS))"
	$(PY) cli.py finetune $(foreach d,$(DATA),--data $(d)) $(LABEL_ARG) --checkpoint $(PRETRAIN)/export.pt --out $(OUT)/$(FT_NAME) --device $(DEVICE) --preset $(PRESET) $(SEMI_ARG) $(FUSE_ARG) $(ARGS)

# the newest fine-tuned model (make demo leaves artifacts/finetune-0.1/model.pt)
MODEL    ?= $(or $(shell ls -t $(OUT)/finetune-*/model.pt 2>/dev/null | head -n 1),$(OUT)/finetune-$(FRAC)/model.pt)
predict: $(STAMP)  ## segment the images in DATA with MODEL (default: the latest finetune's model.pt) into $(OUT)/predict
	@test -f "$(MODEL)" || { echo "no model at $(MODEL): run 'make finetune' first or give MODEL=path/to/model.pt"; exit 1; }
	$(PY) cli.py predict --model $(MODEL) $(foreach d,$(DATA),--data $(d)) --out $(OUT)/predict --overlay $(OUT)/predict/overlay.png --device $(DEVICE) $(ARGS)

table: $(STAMP)  ## the comparison grid on DATA (add TEST=folder for an external test set)
	$(PY) cli.py table $(foreach d,$(DATA),--data $(d)) $(foreach t,$(TEST),--test-data $(t)) --out $(OUT)/table --preset $(PRESET) --jobs $(JOBS) --device $(DEVICE) $(ARGS)

demo: $(STAMP)  ## the whole main job on built-in synthetic data (a few minutes on 2 cores)
	@echo ">> 1/7 synthetic dermoscopy ($(SYNTH_N) images)"; $(MAKE) --no-print-directory synth
	@echo ">> 2/7 pseudo-masks (hair removal + Random Walker -> HDF5 shards)"
	@$(MAKE) --no-print-directory pseudomasks DATA=$(SYNTH) SHARD_SIZE=16
	@echo ">> 3/7 inspect the shards"; $(MAKE) --no-print-directory inspect
	@echo ">> 4/7 pretrain (DINO + auxiliary pseudo-mask loss)"; $(MAKE) --no-print-directory pretrain
	@echo ">> 5/7 one self-training round (the student relabels the pool, the next student learns from it)"
	@$(MAKE) --no-print-directory refine ROUND_EPOCHS=2
	$(PY) cli.py inspect $(REFINE)/round-2/shards --png $(OUT)/round2_sheet.png --rows 6
	@echo ">> 6/7 fine-tune round 2's student with 10 % of the labels"; $(MAKE) --no-print-directory finetune ROUND=2 DATA=$(SYNTH) FRAC=0.1 ARGS="--iters $(DEMO_ITERS)"
	@echo ">> 7/7 a short comparison table"
	$(PY) cli.py table --data $(SYNTH) --out $(OUT)/table --shards $(SHARDS) --pretrained ours=$(PRETRAIN) \
	  --fracs 0.2 --seeds 1 --methods scratch,ours,ours+fuse,pseudo-masks --finetune-iters $(DEMO_ITERS) --preset $(PRESET) --device $(DEVICE) --no-progress
	@echo ">> done. Look at:"
	@echo "   $(OUT)/shards_sheet.png            pseudo-masks (contact sheet)"
	@echo "   $(PRETRAIN)/pictures/              predicted masks and CLS attention during pretraining"
	@echo "   $(OUT)/round2_sheet.png            round 2's least confident masks: walker, student, chosen"
	@echo "   $(OUT)/finetune-0.1-round2/        fine-tune metrics.json, best_worst.png and the model.pt to keep"
	@echo "   $(OUT)/table/results.md            the comparison table; results.png beside it"

bench: $(STAMP)  ## run the benchmarks (printed figures)
	@for b in bench/bench_*.py; do echo ">> $$b"; $(PY) $$b --quick; done

clean:  ## remove generated artifacts (keeps .venv)
	find $(OUT) -mindepth 1 ! -name README.md -exec rm -rf {} +
