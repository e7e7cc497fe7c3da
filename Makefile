# One entry point for developers and CI (.ci/run runs `make test`).
#   make prereqs   host tools from Debian's packages (as root; otherwise prints the command)
#   make install   .venv with the project and its dev tools
#   make images    base image, wheelhouse, sandbox and app images (containers/build.py)
#   make up        build and start the clean room, wait until healthy (scripts/up.sh)
#   make down      stop it, keeping its volumes; `make destroy` removes the volumes too
#   make test      ruff, mypy, then pytest against the freshly built images, with a coverage figure
#   make check     the fast local check without Docker (scripts/check: lint, types, contracts, fast tests)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
INSTALL_STAMP := $(VENV)/.install-stamp
IMAGES_ENV := containers/.build/images.env
COMPOSE := scripts/compose.sh
PYTEST_ARGS ?=

.PHONY: help prereqs prereqs-test install images up down destroy clean-room-state lint typecheck test bench check

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

prereqs:
	scripts/prereqs.sh

# The browser tests need Chromium and its driver: installed here as root, a loud failure otherwise.
prereqs-test:
	scripts/prereqs.sh test

install: prereqs $(INSTALL_STAMP)

$(INSTALL_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $@

images: install
	$(PY) containers/build.py

# scripts/up.sh runs prereqs, then install and the images at the same time, and prints each stage's time.
up:
	scripts/up.sh

down:
	$(COMPOSE) down --remove-orphans

destroy clean-room-state:
	$(COMPOSE) down --remove-orphans --volumes

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

# pytest's exit code 5 (no test collected) fails here like any other failure. The coverage figure is
# printed whatever the outcome and never changes the exit code (no threshold yet).
test: prereqs-test install lint typecheck images
	set -a; . ./$(IMAGES_ENV); set +a; \
	rc=0; $(PY) -m pytest --cov --cov-report= $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	total=$$($(PY) -m coverage report --format=total 2>/dev/null) && \
		echo "make test: coverage $$total% of cleanroom/ lines (code run in this process)" || true; \
	exit $$rc

bench: install images
	set -a; . ./$(IMAGES_ENV); set +a; \
	$(PY) benchmarks/upload.py --sizes 100M; \
	$(PY) benchmarks/jobs.py --rows 100000; \
	$(PY) benchmarks/load.py --seconds 30

check: install
	scripts/check
