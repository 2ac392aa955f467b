# hlrp: two commands for a newcomer.
#   make demo   set up .venv (if missing) and run the whole workflow on the embedded demo,
#               ending with the path of the final report
#   make test   the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds this project is tested with; on the
# cluster, environment.yml installs the CUDA build for Python 3.12.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export MUJOCO_GL ?= egl
export WANDB_MODE ?= offline
# the demo and the tests build their backbones offline: nothing may come from the hub
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast lint format dryrun dag bench doctor clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[sim,dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores all all
	@echo "final report: $(CURDIR)/results/report/index.html (stage reports: results/laq_report/, results/foundation_report/)"

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=900

test-fast: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -m "not slow" --timeout=300

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/black --check src tests bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/black src tests bench

dryrun: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -n all

dag: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --dag all > dag.dot
	@echo "wrote dag.dot (render with: dot -Tpng dag.dot > dag.png)"

doctor: setup
	$(BIN)/python -m hlrp.doctor

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/preprocess_throughput.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/loader_throughput.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/dryrun_10k.py

clean:
	rm -rf results logs benchmarks .snakemake dag.dot
