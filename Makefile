# The two commands of the README's quick start:
#   make book   build the book into _build/html (warnings are errors)
#   make test   the linter, the unit tests, the docstring examples and every notebook (nbval)
# Each installs what it needs into .venv on first use and skips that step afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
NB     ?= notebooks

export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow
export MPLBACKEND ?= Agg

.PHONY: book test lint unit nbval install clean

$(STAMP): requirements.txt benchmarks/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	# MONAI: the benchmarks' peer, needed by their tests, never by the book or the package.
	$(BIN)/python -m pip install --no-deps -r benchmarks/requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going

test: $(STAMP) lint
	$(BIN)/python -m pytest --durations=15 --doctest-modules mednets tests notebooks $(NBVAL)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(STAMP)
	$(BIN)/python -m pytest --doctest-modules mednets tests

nbval: $(STAMP)
	$(BIN)/python -m pytest $(NBVAL) $(NB)

clean:
	rm -rf _build .pytest_cache .hypothesis
