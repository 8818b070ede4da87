# Two entry points, both from a fresh clone: `make quickstart` and `make test`.
# Each creates .venv if missing and installs torch==2.13.0 first (a CPU build; an unpinned
# torch would pull several GB of CUDA packages), then the package with its dev extras.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
RLSERVICE := $(VENV)/bin/rlservice
STAMP := $(VENV)/.installed

.PHONY: install quickstart test

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: a small PARS tuning job on local Ray (it builds its Hopper-v5 dataset if missing),
# tracked in the embedded MLflow store; it ends by printing where the results are.
quickstart: install
	$(RLSERVICE) tune run tuning/quickstart.yaml --name quickstart-$$(date +%Y%m%d-%H%M%S)

test: install
	$(PYTHON) -m pytest -q --durations=25    # the slowest tests, to keep the suite short
