# Two entry points, both from a fresh clone: `make quickstart` and `make test`.
# Each creates .venv if missing and installs torch==2.13.0 first (a CPU build; an unpinned
# torch would pull several GB of CUDA packages), then the package with its dev extras.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
RLSERVICE := $(VENV)/bin/rlservice
STAMP := $(VENV)/.installed
QUICKSTART_HOME ?= $(HOME)/.rlservice

.PHONY: install quickstart test

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(RLSERVICE) datasets build --env Hopper-v5 --quality random --dataset-steps 20000 --overwrite
	$(RLSERVICE) train --dataset rlservice/hopper-v5/random-v0 --preset pars --steps 2000 --eval-every 1000 --eval-episodes 5

test: install
	$(PYTHON) -m pytest -q
