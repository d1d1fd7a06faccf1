# tcpstack.tuning: build and test tooling.  `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.NOTPARALLEL:

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
REQS   := requirements-dev.txt
STAMP  := $(VENV)/.installed
FQCN   := tcpstack-tuning
# the venv's tools (ansible, ansible-galaxy, ...) come first for every recipe
export PATH := $(BIN):$(PATH)
# The collections directory whose ansible_collections/tcpstack/tuning links to this checkout: made (and printed)
# by tests/support/collection.py, the one definition of it (pytest.ini's pythonpath names it for the tests).
# Expanded in the recipes that use it, each time.
COLLECTIONS = $(or $(shell $(PYTHON) -m tests.support.collection),$(error tests/support/collection.py failed))

.PHONY: test venv hostdeps guard unit sanity lint changelog-lint build integration reliability user-path molecule \
  core-lines demo bench clean

test: hostdeps venv guard unit sanity lint changelog-lint build integration reliability user-path molecule core-lines

venv: $(STAMP)

# rebuilt from scratch whenever the pinned requirements change
$(STAMP): $(REQS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "make venv: Python >= 3.11 required, '$(PYTHON)' is: $$($(PYTHON) -V 2>/dev/null || echo not found)" >&2; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(REQS)
	touch $@

hostdeps:
	$(PYTHON) tools/hostdeps.py

# the house limits: every file under plugins/ at most 500 lines (a module's DOCUMENTATION, EXAMPLES and RETURN
# aside), every function at most 60 lines (standard library only; tests/unit/tools/test_guard.py tests it)
guard:
	$(PYTHON) tools/guard.py

# pytest exits 5 when it collected no test: that fails too
unit: venv
	$(BIN)/pytest tests/unit -q || { rc=$$?; [ $$rc != 5 ] || echo "unit: no tests collected" >&2; exit $$rc; }

# The user's controller: ansible-core alone (+ pywinrm), exact pins in requirements-user.txt; no `ansible` package
USER_VENV  := .venv-user
USER_STAMP := $(USER_VENV)/.installed
$(USER_STAMP): requirements-user.txt
	rm -rf $(USER_VENV)
	$(PYTHON) -m venv $(USER_VENV)
	$(USER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(USER_VENV)/bin/python -m pip install --quiet -r requirements-user.txt
	touch $@

# the user's path: build the tarball, install it next to ansible-core alone, run everything by FQCN
# (tests/user_path; the tests run from .venv, every Ansible command from .venv-user with a clean environment)
user-path: venv $(USER_STAMP)
	$(BIN)/pytest tests/user_path -v

# also compiles for Python 3.9 (found via $$PYTHON39, PATH or pyenv); with no
# Python 3.9 that step is skipped with a warning, or fails when CI=true
sanity: venv
	$(BIN)/python tools/sanity.py

# ansible-lint resolves tcpstack.tuning.* through a symlink to this checkout
lint: venv
	ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS) $(BIN)/ansible-lint

changelog-lint: venv
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

build: venv
	rm -rf .build/dist .build/installed
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist
	ANSIBLE_COLLECTIONS_PATH=.build/installed $(BIN)/ansible-galaxy collection install \
	  --offline --force -p .build/installed .build/dist/$(FQCN)-*.tar.gz
	$(BIN)/python tools/doccheck.py .build/installed

integration: venv
	$(BIN)/pytest tests/integration -v

# tests/reliability and the property tests, in one pytest session; writes their figures to .build/reliability.json
reliability: venv
	$(BIN)/python tools/reliability_report.py

# unit + sanity on the second ansible-core line, 2.21 on Python 3.12, in .venv-2.21 (requirements-core-2.21.txt);
# `unit` and `sanity` above are the 2.19 line. No Python 3.12: skipped with a warning, or fails when CI=true
core-lines:
	$(PYTHON) tools/core_lines.py

# extensions/molecule scenarios (molecule's place in a collection): default boots Debian containers under podman
# (images built once by tools/images.py, then reused), windows drives simulated Windows hosts; see docs/testing.md
MOLECULE_ENV = CONTAINERS_CONF=$(CURDIR)/extensions/molecule/containers.conf ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS)
molecule: venv hostdeps
	$(MOLECULE_ENV) $(BIN)/python tools/images.py
	$(MOLECULE_ENV) $(BIN)/molecule test -s default
	$(MOLECULE_ENV) $(BIN)/molecule test -s windows

# demo/ and bench/ are packages run from the repository root: they import tests.support, and the collection from
# PYTHONPATH, as the tests do through pytest.ini
demo: venv hostdeps
	PYTHONPATH=$(COLLECTIONS) $(BIN)/python -m demo.demo

# not part of `test`: every performance figure, side by side in one run (root, Podman, under 10 minutes) ->
# bench/results/latest.json + latest.png; see docs/benchmarks.md. The fleet runs on the bookworm image (built once).
# BENCH_ARGS: bench.run's arguments, e.g. BENCH_ARGS="--only cure" (default: every section, 20 hosts)
BENCH_ARGS ?=
bench: venv hostdeps
	CONTAINERS_CONF=$(CURDIR)/extensions/molecule/containers.conf $(BIN)/python tools/images.py bookworm
	PYTHONPATH=$(COLLECTIONS) $(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-* .build tests/output .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -exec rm -rf {} +
