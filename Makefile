# lficam: `make train` and `make test` are all a new machine needs.
# torch/torchvision are pinned to the releases that lie on this project's machines' local disk
# (any other version is a multi-GB download); change TORCH_PINS for your own CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline

.PHONY: help setup train test test-fast lint format bench clean fashion-mnist chromium slurm

help:  ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[all]' $(TORCH_PINS)
	touch $(STAMP)

setup: $(STAMP)  ## create or update the virtual environment in .venv

train: $(STAMP)  ## train LFI-CAM on the built-in synthetic data set
	$(BIN)/python train.py $(ARGS)

# pytest-xdist: one worker per core (TEST_WORKERS=1 runs them in one process, in order)
TEST_WORKERS ?= auto
test: $(STAMP)  ## run the whole offline test suite (what CI runs)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests that need no training loop, subprocess or large model (under 2 minutes)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff autofix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## print the training-step benchmark table
	$(BIN)/python bench/train_step.py

FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-mnist:  ## install Fashion-MNIST (Debian package dataset-fashion-mnist) where apt is allowed
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
		echo "Fashion-MNIST is installed in $(FASHION_DIR)/"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get install -y dataset-fashion-mnist || \
		  ( $$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist ) ) && \
		echo "Fashion-MNIST is installed in $(FASHION_DIR)/" || \
		echo "make fashion-mnist: apt could not install dataset-fashion-mnist here; copy the four files" \
		     "(train-images-idx3-ubyte.gz …) into a folder and pass data.root=<folder>"; \
	else \
		echo "make fashion-mnist: no apt-get on this machine; copy Fashion-MNIST's four IDX files" \
		     "(train-images-idx3-ubyte.gz …) into a folder and pass data.root=<folder>"; \
	fi

chromium:  ## install Debian's chromium and chromium-driver for the browser tests (tests/test_app_browser.py)
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver are installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get install -y chromium chromium-driver || \
		  ( $$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver ) ) || \
		echo "make chromium: apt could not install chromium here; the browser tests will be skipped"; \
	else \
		echo "make chromium: no apt-get on this machine; the browser tests will be skipped"; \
	fi

slurm:  ## install SLURM and munge (Debian's slurm-wlm, munge; postgresql) for the cluster tests (tests/test_cluster_*.py)
	@if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 \
	    && [ -x /usr/lib/postgresql/15/bin/initdb ]; then \
		echo "slurm, munge and postgresql are installed"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		( $$SUDO apt-get install -y slurm-wlm munge postgresql || \
		  ( $$SUDO apt-get update && $$SUDO apt-get install -y slurm-wlm munge postgresql ) ) || \
		echo "make slurm: apt could not install slurm-wlm here; the cluster tests will be skipped"; \
	else \
		echo "make slurm: no apt-get on this machine; the cluster tests will be skipped"; \
	fi

# --- the reproduction study (conf/study/, lficam/study/): resumable, rerun the same target after a stop ---
.PHONY: reproduce reproduce-quick
reproduce: $(STAMP)  ## rerun the paper's claims (~2 h on 2 CPU cores): docs/results.md, .json, figures
	$(BIN)/python reproduce.py $(ARGS)

reproduce-quick: $(STAMP)  ## the same study pipeline at a toy scale (minutes), into outputs/study/quick/
	$(BIN)/python reproduce.py study=quick $(ARGS)

clean:  ## remove run outputs (keeps .venv)
	rm -rf outputs multirun .pytest_cache
