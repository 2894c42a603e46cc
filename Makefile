# rk_siglip_ros developer entry points. Everything runs from a project-local virtualenv (.venv) that
# `make setup` creates from scratch; no system Python packages are touched.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/pip --disable-pip-version-check
RKNN_TOOLKIT2 := rknn-toolkit2==2.5.0

# A ROS 2 for `make ros-demo` and `make bench`: the one already sourced (ROS_DISTRO set), else this tree (CI and dev
# machines have a source-built Humble there), else none.
# SHARED: the folder beside the clone holding the ROS 2 trees and shared test data (a worktree elsewhere: SHARED=...).
SHARED ?= ../shared
ROS_TREE ?= $(SHARED)/ros2-humble
# The real-ROS suite's Jazzy combination: ROS 2 Jazzy (CPython 3.12) in $(JAZZY_TREE), with a venv of the node's
# run-time dependencies made by $(PYTHON312) (pyenv's 3.12.1 here; torch has no 3.12 build, so shard sets come from
# .venv). Without either, `make test-ros` says so and runs the Humble combinations only.
JAZZY_TREE ?= $(SHARED)/ros2-jazzy
JAZZY_VENV := .venv-jazzy
PYTHON312 ?= $(shell pyenv prefix 3.12.1 2>/dev/null)/bin/python3
JAZZY_STAMP := $(JAZZY_VENV)/.setup-done
# Runs "$(1)" in a bash subshell with the venv activated and a ROS 2 sourced on top (venv first: the tree's scripts
# run the first python3 on PATH). Without a ROS 2 it runs "$(1)" with the venv only.
define with_ros
	@if [ -n "$$ROS_DISTRO" ]; then \
	  echo "== ROS 2 $$ROS_DISTRO (already sourced)"; \
	  bash -c '. $(BIN)/activate && $(1)'; \
	elif [ -f $(ROS_TREE)/setup.bash ]; then \
	  echo "== ROS 2 from $(ROS_TREE)"; \
	  bash -c '. $(BIN)/activate && . $(ROS_TREE)/setup.bash && $(1)'; \
	else \
	  echo "== no ROS 2: ROS_DISTRO is not set and $(ROS_TREE)/setup.bash does not exist"; \
	  bash -c '. $(BIN)/activate && $(1)'; \
	fi
endef

.PHONY: setup setup-jazzy test test-offros test-ros lint bench demo ros-demo clean help

help:
	@echo "make setup  - create .venv with the full stack (torch CPU, rknn-toolkit2, ONNX Runtime, rosbags, colcon)"
	@echo "make test   - set up if needed, then run the test suite (tiny random models; ~minutes):"
	@echo "              test-offros (no ROS needed) then test-ros: the real-ROS suite under every ROS 2 / middleware"
	@echo "              present (Humble + Cyclone DDS, Humble + Fast DDS, Jazzy + Fast DDS, Jazzy + Cyclone DDS;"
	@echo "              tools/ros_matrix.py); skips with the reason without any"
	@echo "make setup-jazzy - the CPython 3.12 venv (.venv-jazzy) for the Jazzy combinations (make test-ros makes it)"
	@echo "make lint   - ruff"
	@echo "make bench  - full-size SigLIP-B/16@512 builds and runtime benchmarks (tens of minutes)"
	@echo "make demo   - build random-weight shards, write a sample camera bag, replay it through encode_bag"
	@echo "make ros-demo - the same bag played into the real encoder node (ros2 launch), when a ROS 2 is available"

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

# Two pytest sessions: the off-ROS suite in a plain environment (what a machine without ROS runs), then test/ros with
# a ROS 2 sourced. Both always run; the second one's failure is reported even if the first passed.
test: setup
	@status=0; $(MAKE) --no-print-directory test-offros || status=1; \
	$(MAKE) --no-print-directory test-ros || status=1; exit $$status

test-offros: setup
	$(BIN)/python -m pytest -rs test --ignore=test/ros

# Every combination whose tree is present, each its own pytest session; a table of which ran, with their counts, at
# the end. ROS_MATRIX=humble-cyclone,... runs only those.
test-ros: setup $(if $(wildcard $(JAZZY_TREE)/setup.bash),setup-jazzy)
	$(BIN)/python tools/ros_matrix.py --shared $(SHARED) $(if $(ROS_MATRIX),--only $(ROS_MATRIX))

# The Jazzy venv: CPython 3.12 with the node's run-time dependencies, the tree's Python requirements and the test
# tools, nothing of the builder (no torch for 3.12 here). Skipped, with the reason, where there is no CPython 3.12.
setup-jazzy: $(JAZZY_STAMP)

$(JAZZY_STAMP): requirements/runtime.txt requirements/ros.txt requirements/jazzy.txt setup.py
	@if [ ! -x "$(PYTHON312)" ]; then echo "== no CPython 3.12 ($(PYTHON312)): the Jazzy combinations will not run"; \
	else \
	  set -e; test -x $(JAZZY_VENV)/bin/python || $(PYTHON312) -m venv $(JAZZY_VENV); \
	  touch $(JAZZY_VENV)/COLCON_IGNORE; \
	  $(JAZZY_VENV)/bin/pip --disable-pip-version-check install -q -c requirements/constraints.txt \
	    -r requirements/jazzy.txt; \
	  $(JAZZY_VENV)/bin/pip --disable-pip-version-check install -q --no-deps --no-build-isolation -e .; \
	  touch $(JAZZY_STAMP); \
	fi

lint: setup
	$(BIN)/ruff check rk_siglip_ros test launch setup.py benchmarks tools

bench: setup
	RK_SIGLIP_ROS_TREE=$(ROS_TREE) $(BIN)/python benchmarks/run_all.py

demo: setup
	$(BIN)/python tools/demo.py

# The demo's sample camera bag into the real node through ros2 launch (tools/ros_demo.py --help for options).
ros-demo: setup
	$(call with_ros,python tools/ros_demo.py)

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build install log *.egg-info .pytest_cache
