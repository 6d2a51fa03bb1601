# The two commands of README.md: `make run` (the default workflow) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Headless MuJoCo: the default workflow renders nothing, but evaluation imports MuJoCo; EGL is not on a CPU box.
export MUJOCO_GL ?= disable
export XLA_FLAGS ?= --xla_cpu_multi_thread_eigen=true
export JAX_PLATFORMS ?= cpu

.PHONY: run test lint clean-venv

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/offrl workflow

test: $(STAMP)
	$(BIN)/ruff check offrl tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
