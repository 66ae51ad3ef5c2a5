# pdagent-sd — `make demo`, `make test`, `make bench` on a fresh Debian 12 machine as root.

PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv test check test-fast test-pythons demo demo-local bench deb rpm repo reliability clean

all: test

deps:
	./.ci/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[test,fleet]' ruff mypy
	touch $@

venv: deps $(VENV)/.installed

# What runs where: each test once per purpose (issue 21).
# - `make test`, first the main tier, on Debian's python3 (the .venv): every tier in its short form. Unit,
#   integration, power cut, disk full, other user, the real nagios4 and Icinga 2, the booted-systemd tier and the
#   package tier (the .deb in clean Debian 12 and 13 containers), and ruff and mypy (marker quality), run here
#   only. Under CI (CI=true) a tier whose tool is missing fails instead of skipping (tests/tiers.py).
# - then every other CPython 3.9-3.13 (.ci/test-pythons.sh) runs what can differ between interpreters: the unit
#   tier (parsers, validation, JSON and Unicode edges, the store on that interpreter's sqlite3, the scheduler rig,
#   the property tests) and the integration tests marked `interpreters` (the real daemon started by that
#   interpreter: sockets, signals, SQLite, the HTTP client and TLS, socket activation, pd-send, pd-queue and the
#   integrations end to end, the fuzzed socket). Debian's minor version (3.11 on Debian 12) is left out there:
#   the main tier ran everything on it. Two interpreters run at a time (JOBS=2: the tests mostly wait on sockets
#   and fsync). Under CI every one of these interpreters must be present.
# - the full forms (marker slow: the 5,000-event storms, chaos, power-cut and capacity runs): `make reliability`.
MAIN_MARKERS := not slow
INTERPRETER_MARKERS := (unit or interpreters) and not quality and not slow
DEBIAN_MINOR = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
OTHER_PYTHONS = $(filter-out $(DEBIAN_MINOR),3.9 3.10 3.11 3.12 3.13)

test: venv
	$(PY) -m pytest -ra -m "$(MAIN_MARKERS)" $(PYTEST_ARGS)
	PYTHON_VERSIONS="$(OTHER_PYTHONS)" MARKERS="$(INTERPRETER_MARKERS)" JOBS=2 ./.ci/test-pythons.sh

# the edit-test loop: unit and integration tiers on the .venv, no containers, no full forms (about 4 minutes)
check: venv
	$(PY) -m pytest -ra -m "(unit or integration) and not slow" $(PYTEST_ARGS)

# every CPython 3.9-3.13 under pyenv, 3.11 too, with the interpreters' selection
test-pythons: deps
	MARKERS="$(INTERPRETER_MARKERS)" ./.ci/test-pythons.sh

test-fast: venv
	$(PY) -m pytest -ra -m "not system and not package and not slow" $(PYTEST_ARGS)

demo: venv
	./packaging/demo.sh

demo-local: venv
	$(PY) tests/demo_local.py

bench: venv
	$(PY) bench/run_all.py

reliability: venv
	RELIABILITY_FULL=1 $(PY) -m pytest -ra -m slow tests/reliability tests/robustness tests/test_storm.py $(PYTEST_ARGS)
	RELIABILITY_FULL=1 $(PY) -m pytest -ra tests/robustness/test_properties.py
	RELIABILITY_FULL=1 $(PY) -m pytest -ra -m unit tests/test_cli_compat.py

deb: deps
	./packaging/build-deb.sh

rpm: deps
	./packaging/build-rpm.sh

# dist/repo (apt) and dist/rpmrepo (dnf), signed by a throwaway key unless REPO_KEY names the real one
# (docs/packaging.md, "Signed repositories").
repo: deps
	./packaging/build-repo.sh $(if $(REPO_KEY),--key $(REPO_KEY)) $(if $(REPO_URL),--url $(REPO_URL))

clean:
	rm -rf $(VENV) .venvs dist build .pytest_cache *.egg-info
