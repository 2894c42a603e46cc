# rk_siglip_ros developer entry points. Everything runs from a project-local virtualenv (.venv) that
# `make setup` creates from scratch; no system Python packages are touched.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/pip --disable-pip-version-check
RKNN_TOOLKIT2 := rknn-toolkit2==2.5.0

.PHONY: setup test lint bench demo clean help

help:
	@echo "make setup  - create .venv with the full stack (torch CPU, rknn-toolkit2, ONNX Runtime, rosbags, colcon)"
	@echo "make test   - set up if needed, then run the test suite (tiny random models; ~minutes)"
	@echo "make lint   - ruff"
	@echo "make bench  - full-size SigLIP-B/16@512 builds and runtime benchmarks (tens of minutes)"
	@echo "make demo   - build random-weight shards, write a sample camera bag, replay it through encode_bag"

setup: $(STAMP)

# Re-run setup whenever a requirements file or setup.py changes. torch is pinned in the constraints so pip never
# resolves a CUDA build; rknn-toolkit2's metadata pins torch<=2.4.0, so it goes in last with --no-deps.
$(STAMP): requirements/*.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	touch $(VENV)/COLCON_IGNORE
	$(PIP) install -q -c requirements/constraints.txt -r requirements/dev.txt
	$(PIP) install -q --no-deps $(RKNN_TOOLKIT2)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -rs test

lint: setup
	$(BIN)/ruff check rk_siglip_ros test launch setup.py benchmarks tools

bench: setup
	$(BIN)/python benchmarks/run_all.py

demo: setup
	$(BIN)/python tools/demo.py

clean:
	rm -rf $(VENV) build install log *.egg-info .pytest_cache
