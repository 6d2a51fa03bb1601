# The two commands of README.md: `make run` (the default workflow) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Headless MuJoCo through EGL: Mesa renders on the CPU where there is no GPU (image datasets, image evaluation).
export MUJOCO_GL ?= egl
export XLA_FLAGS ?= --xla_cpu_multi_thread_eigen=true
export JAX_PLATFORMS ?= cpu

.PHONY: run test lint clean-venv

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

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
