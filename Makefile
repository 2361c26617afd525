# Durable Agents Lab — two commands on a fresh machine:  make demo   make test
# Each creates and fills .venv/ when it is missing. Needs only Python >= 3.11, git and make.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test check-solutions up down lock bench clean-state help

help:
	@echo "make demo    run the Lab 01 crash demo on the reference solution"
	@echo "make test    run every test (kit, self-test, notebooks); xdist workers from the CPUs (.ci/workers)"
	@echo "make setup   create .venv/ (done automatically by the two above)"
	@echo "make up / make down   start / stop the course services in the background"
	@echo "make bench   time lab check 01 --solution and make test"

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "Python >= 3.11 is needed (python3 --version)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "ready: $(BIN)/lab is the course CLI"

setup: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NODE_STAMP); else \
	  echo "npm not found: Lab 07 needs Node.js 20+ and npm for the Restate server (then run make setup again);"; \
	  echo "until then its checks report NOT CHECKED, and everything else works (lab doctor)"; fi

# Lab 07's Restate server comes from npm (package.json pins @restatedev/restate-server). The binary
# is in a per-platform package with no install script; the only script in the tree is @scarf/scarf's
# usage report, which an offline course has no reason to run.
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts

demo: setup
	$(BIN)/lab demo 01 --no-ui

# xdist workers: from the CPU this machine (or its cgroup quota) gives us, 1.5 per core, at least 1
# (.ci/workers says the rule; `make test WORKERS=N` or LAB_TEST_WORKERS=N overrides it).
WORKERS ?= $(shell $(PYTHON) .ci/workers)

test: setup
	@$(PYTHON) .ci/workers --explain >/dev/null
	$(BIN)/python -m pytest tests -q -n $(WORKERS)

up: setup
	$(BIN)/lab up

down:
	@test -x $(BIN)/lab && $(BIN)/lab down || true

bench: setup
	$(BIN)/python bench/run.py

# Regenerate requirements.lock from pyproject.toml in a throwaway venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e .
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	rm -rf .lock-venv

clean-state: down
	rm -rf .lab

# The Gradescope autograder: dist/gradescope-autograder.zip (LABS=01 or 01,02: the labs it grades;
# default every lab). See README.md, Instructors.
.PHONY: gradescope
gradescope: setup
	$(BIN)/python -m labkit.gradescope build --out dist/gradescope-autograder.zip $(if $(LABS),--labs $(LABS),)
