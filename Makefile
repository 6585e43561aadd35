# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
FBGEMM_PACKAGE ?= fbgemm-gpu-cpu==1.8.0
TORCHREC_VERSION ?= 1.8.0
PYTEST_ARGS ?=

.PHONY: env demo test test-fast lint bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q $(FBGEMM_PACKAGE)
	$(PY) -m pip install -q --no-deps torchrec==$(TORCHREC_VERSION)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "import torchrec, fbgemm_gpu, recdim; print('recdim environment ready')"
	touch $@

demo: env
	$(VENV)/bin/recdim run --config configs/demo.toml --out runs/demo

test: env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: env
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow and not multiprocess" $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: env
	$(VENV)/bin/recdim bench --name train_throughput --out bench-out

clean:
	rm -rf $(VENV) runs bench-out
