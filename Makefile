# The whole set-up on a fresh machine is `make test` or `make demo`: each creates .venv when missing
# and installs the package with what it needs (idempotent: reinstalls only when setup.cfg changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_WORKDIR ?= demo_workdir
export TF_CPP_MIN_LOG_LEVEL ?= 2
# On a machine without an accelerator JAX runs on the CPU only: the test extra installs libtpu (for
# the TPU plans), and JAX would otherwise start a TPU runtime in every process, which prints
# libtpu's "could not determine TPU accelerator type" warnings when there is no TPU.
ifeq ($(wildcard /dev/nvidia0 /dev/accel0 /dev/vfio/0),)
export JAX_PLATFORMS ?= cpu
endif

.PHONY: install demo test test-fast benchmark clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) -m sdeseg_jax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests --ignore=tests/test_distributed.py
	# Two JAX processes joined by gloo collectives run alone: beside other tests the 2 cores starve
	# gloo's 30 s context set-up.
	# -v alone (-q would cancel it): each test's name as it starts, and a line per launched run.
	$(PY) -m pytest -v tests/test_distributed.py

# The maintainer's loop: ops, models, configs and pure functions, without the tests marked slow
# (stage runs, subprocesses, full-size compiles).
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" tests --ignore=tests/test_distributed.py

benchmark: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(DEMO_WORKDIR) .cache .pytest_cache
