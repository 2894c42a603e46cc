# rk_siglip_ros developer entry points. Everything runs from a project-local virtualenv (.venv) that
# `make setup` creates from scratch; no system Python packages are touched.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/pip --disable-pip-version-check
RKNN_TOOLKIT2 := rknn-toolkit2==2.5.0

# A ROS 2 for the real-ROS suite and `make ros-demo`: the one already sourced (ROS_DISTRO set), else this tree (CI
# and dev machines have a source-built Humble there), else none: the ROS tests then skip with the reason.
# SHARED: the folder beside the clone holding the ROS 2 tree and shared test data (a worktree elsewhere: SHARED=...).
SHARED ?= ../shared
ROS_TREE ?= $(SHARED)/ros2-humble
# Runs "$(1)" in a bash subshell with the venv activated and a ROS 2 sourced on top (venv first: the tree's scripts
# run the first python3 on PATH). Without a ROS 2 it runs "$(1)" with the venv only and RK_SIGLIP_NO_ROS set to the
# reason, which test/ros/conftest.py turns into a skip of every ROS test.
define with_ros
	@if [ -n "$$ROS_DISTRO" ]; then \
	  echo "== ROS 2 $$ROS_DISTRO (already sourced)"; \
	  bash -c '. $(BIN)/activate && $(1)'; \
	elif [ -f $(ROS_TREE)/setup.bash ]; then \
	  echo "== ROS 2 from $(ROS_TREE)"; \
	  bash -c '. $(BIN)/activate && . $(ROS_TREE)/setup.bash && $(1)'; \
	else \
	  echo "== no ROS 2: ROS_DISTRO is not set and $(ROS_TREE)/setup.bash does not exist"; \
	  RK_SIGLIP_NO_ROS="no ROS 2: source /opt/ros/<distro>/setup.bash, or put a ROS 2 tree at $(ROS_TREE)" \
	    bash -c '. $(BIN)/activate && $(1)'; \
	fi
endef

.PHONY: setup test test-offros test-ros lint bench demo ros-demo clean help

help:
	@echo "make setup  - create .venv with the full stack (torch CPU, rknn-toolkit2, ONNX Runtime, rosbags, colcon)"
	@echo "make test   - set up if needed, then run the test suite (tiny random models; ~minutes):"
	@echo "              test-offros (no ROS needed) then test-ros (real ROS 2, see ROS_TREE; skips without one)"
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

test-ros: setup
	$(call with_ros,RK_SIGLIP_SHARED=$(SHARED) python -m pytest -rs test/ros)

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
	rm -rf $(VENV) build install log *.egg-info .pytest_cache
