# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medtok-installed
# CPU machines take the local CPU wheel; GPU users install their CUDA torch into .venv first and run with TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 3000
MEDTOK_MODEL_DIR ?= model
export MEDTOK_MODEL_DIR

.PHONY: install browser instance demo test ui clean-outputs gpu-check

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The instance `make ui` serves (the demo writes to it too); deploy/dagster.yaml is its starting config.
INSTANCE := $(MEDTOK_MODEL_DIR)/dagster_home
instance:
	mkdir -p $(INSTANCE)
	test -f $(INSTANCE)/dagster.yaml || cp deploy/dagster.yaml $(INSTANCE)/

demo: install
	$(BIN)/python -m medtok_dagster.demo

# The UI tests drive Debian's Chromium headless (screenshot of the asset graph); installed from apt
# as root, or through passwordless sudo.
APT := $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get
browser:
	@command -v chromium >/dev/null || { $(APT) update -qq && $(APT) install -y -qq chromium fonts-noto-cjk >/dev/null; } || echo "chromium missing: the asset-graph screenshot test will be skipped"

# Lint and format check first (ruff, configured in pyproject.toml), then the suite.
test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

ui: install instance
	DAGSTER_HOME=$(abspath $(INSTANCE)) $(BIN)/dagster dev -m medtok_dagster.definitions -h $(HOST) -p $(PORT)

clean-outputs:
	rm -rf $(MEDTOK_MODEL_DIR)/tokenizer $(MEDTOK_MODEL_DIR)/raw_lora_added $(MEDTOK_MODEL_DIR)/trained $(MEDTOK_MODEL_DIR)/corpora $(MEDTOK_MODEL_DIR)/vocab $(MEDTOK_MODEL_DIR)/medtok.duckdb

# On a GPU machine: the MedGemma 4B-shaped at-size path and the embedded demo graph at the GPU
# defaults, one JSON object (docs/at_size.md). Offline, and no install step: the repository is put on
# sys.path, so copied files run wherever the dependencies import (the venv's python, else python3).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bench/gpu_check.py $(GPU_CHECK_ARGS)
