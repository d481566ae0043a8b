# Two entry points (see README): `make main` sets up and runs the main job, `make test` sets up
# and runs every test. Set-up installs the CPU build torch==2.13.0 before anything else so pip
# never resolves a multi-GB CUDA build.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup main test

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[notebooks,dev]"
	touch $@

main: $(STAMP)
	$(VENV)/bin/esper-lab tour

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env tests notebooks
