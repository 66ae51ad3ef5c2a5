# pdagent-sd — `make demo`, `make test`, `make bench` on a fresh Debian 12 machine as root.

PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv test test-fast test-pythons demo demo-local bench deb rpm repo reliability clean

all: test

deps:
	./.ci/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[test,fleet]' ruff mypy
	touch $@

venv: deps $(VENV)/.installed

test: venv
	$(PY) -m pytest -ra $(PYTEST_ARGS)
	./.ci/test-pythons.sh

test-pythons: deps
	./.ci/test-pythons.sh

test-fast: venv
	$(PY) -m pytest -ra -m "not system and not package and not slow" $(PYTEST_ARGS)

demo: venv
	./packaging/demo.sh

demo-local: venv
	$(PY) tests/demo_local.py

bench: venv
	$(PY) bench/run_all.py

reliability: venv
	RELIABILITY_FULL=1 $(PY) -m pytest -ra -m slow tests/reliability tests/robustness $(PYTEST_ARGS)
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
