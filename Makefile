# Two commands a new user needs: `make demo` (the main job) and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export WANDB_MODE ?= offline
# test workers (pytest-xdist): one per core, at most 4 (each Ray / Flower test starts its own processes)
JOBS   ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install demo test test-fast clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e ".[dev]"  # -qq: errors only (an offline mirror warns once per package)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## D-Net on the embedded synthetic LiTS phantoms, CPU-sized (python -m experiments.run +exp=lits_dnet)
	$(PY) -m experiments.run +exp=lits_dnet

test: $(STAMP)  ## the whole CPU test suite, one worker per core (JOBS=0 for one process)
	$(PY) -m pytest -n $(JOBS) --dist loadfile --no-loadscope-reorder --durations=25

test-fast: $(STAMP)  ## everything but the learning tests
	$(PY) -m pytest -n $(JOBS) --dist loadfile --no-loadscope-reorder -m "not slow"

clean:
	rm -rf logs .pytest_cache
