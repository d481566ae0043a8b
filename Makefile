# Two entry points (see README): `make main` sets up and runs the main job, `make test` sets up
# and runs every test. Set-up installs the CPU build torch==2.13.0 before anything else so pip
# never resolves a multi-GB CUDA build.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One intra-op thread: the models are tiny, and on a shared 2-core machine two threads per
# process (pytest, notebook kernels, papermill runs) contend badly.
export OMP_NUM_THREADS ?= 1

.PHONY: setup browser main lint check test

setup: $(STAMP)

# Debian's Chromium for the dashboard's browser test (Playwright drives it; never a downloaded browser).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[notebooks,dev]"
	touch $@

# The main job: Pack 0 at the smoke preset, end to end (papermill -> Parquet -> DuckDB -> report).
main: $(STAMP)
	$(VENV)/bin/esper-lab pack run pack0 --preset smoke --jobs 2

# Lint and format check (ruff, configured in pyproject.toml), before the tests in CI; `ruff format .` fixes the format.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The edit loop: lint and the tests not marked slow, on both cores (a few minutes).
check: lint
	$(PY) -m pytest -q -p no:cacheprovider -n 2 -m "not slow" tests

# Every test and notebook, on both cores; a file's tests share one worker (and its module fixtures).
test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --nbval-lax --nbval-current-env tests notebooks
