# Every target sets up what it needs on a fresh machine: a virtual environment and the npm packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: setup browser test lint unit up down demo bench clean

$(STAMP): requirements.txt requirements-dev.txt samples/mnist/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -r samples/mnist/requirements.txt
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP) $(NPM_STAMP)

# Headless Chromium for the dashboard's browser tests (tests/ui): Debian's packages, installed when
# missing (as root, or with sudo). Nothing is downloaded by the test tools themselves.
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The whole suite: lint, unit tests and end-to-end tests against the local stack (the tests start
# and stop every server they use). Two pytest-xdist workers, a test file each at a time: most
# end-to-end tests wait on emulators and timers, so two overlap well even on 2 cores; each worker
# has its own local stack.
TEST_WORKERS ?= 2
test: setup browser lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

unit: $(STAMP)
	$(PY) -m pytest -m "not e2e"

up: setup
	$(PY) -m infra.local.stack up

down:
	@test -x $(PY) && $(PY) -m infra.local.stack down || true

# KEEP_UP=1 keeps the local stack (and the dashboard) up after the run, until Ctrl-C.
demo: setup
	$(PY) -m samples.mnist.demo --backend $(or $(BACKEND),batchai) $(if $(KEEP_UP),--keep-up)

bench: setup
	$(PY) -m bench

clean:
	rm -rf .local .pytest_cache .ruff_cache
