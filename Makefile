# Everything installs into a local virtual environment (.venv); nothing is installed globally.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m slow"`.
PYTEST_ARGS ?=

.PHONY: install install-dev demo test test-slow lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt setup.cfg
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job on the embedded default dataset (runs offline, writes under outputs/).
demo: install
	WANDB_MODE=offline $(BIN)/gd demo

test: install-dev
	$(BIN)/python -m pytest -q -n auto $(PYTEST_ARGS)

test-slow: install-dev
	$(BIN)/python -m pytest -q -n auto -m slow $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/python -m flake8 guided_diffusion classifiers tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info outputs guided_diffusion/configs
