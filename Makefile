# The two commands of README.md: `make run` (the default workflow) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Headless MuJoCo through EGL: Mesa renders on the CPU where there is no GPU (image datasets, image evaluation).
export MUJOCO_GL ?= egl
export XLA_FLAGS ?= --xla_cpu_multi_thread_eigen=true
export JAX_PLATFORMS ?= cpu

# `make bench`: the offrl-vs-d3rlpy speed benchmark (benchmarks/speed.py, docs/speed.md) in its own environment,
# because d3rlpy 2.8.1 pins gymnasium==1.0.0 and the sim extra's metaworld needs >=1.1. torch==2.13.0 is
# installed first and exactly, so that pip takes the CPU build instead of the newest CUDA one.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS  ?=

.PHONY: run test lint bench clean-venv

# Headless rendering needs Mesa's EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri); installed when missing.
$(STAMP): pyproject.toml
	@ldconfig -p | grep -q libEGL_mesa || { echo "installing Mesa EGL for headless rendering"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[sim,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/offrl workflow

test: $(STAMP)
	$(BIN)/ruff check offrl tests benchmarks
	$(BIN)/python -m pytest

$(BENCH_STAMP): pyproject.toml
	test -d $(BENCH_VENV) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@$(BENCH_VENV)/bin/python benchmarks/speed.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV) $(BENCH_VENV)
