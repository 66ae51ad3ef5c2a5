#!/usr/bin/env bash
# `make test-pythons`: what can differ between interpreters, on every CPython 3.9-3.13 found under pyenv.
#
# For each minor version it takes the newest patch release in $PYENV_ROOT/versions (default ~/.pyenv), keeps
# a virtualenv for it under .venvs/ (rebuilt only when the interpreter or the project's dependencies change),
# installs the project editable with its test extras (systemd-python builds from source: libsystemd-dev and
# pkg-config come from .ci/install-deps.sh) and runs pytest on the tree. Prints which interpreters were found
# and which are missing, a table of results with the time each took, and exits non-zero if any run failed.
#
# Environment: PYTHON_VERSIONS="3.9 3.10 ..." to choose, MARKERS for the pytest selection (the Makefile says
# which, and why), JOBS=N to run N interpreters at a time, VENVS_DIR to move the cache, PYTEST_ARGS for extra pytest arguments, REQUIRE_ALL=1 to fail
# when one of the versions is missing (the default under CI=true: there every interpreter asked for must run).
set -uo pipefail
cd "$(dirname "$0")/.."

VERSIONS=${PYTHON_VERSIONS:-"3.9 3.10 3.11 3.12 3.13"}
PYENV_VERSIONS="${PYENV_ROOT:-$HOME/.pyenv}/versions"
VENVS_DIR=${VENVS_DIR:-.venvs}
# By default the unit tier and the integration tests marked `interpreters`; ruff and mypy (quality) run once, in
# `make test`'s main tier, as do power cuts (the layer is Debian's Python and the kernel's, and what it judges,
# fsync calls, does not change with the Python that runs the daemon) and the container tiers.
MARKERS=${MARKERS:-"(unit or interpreters) and not quality and not slow"}
case "${CI:-}" in true | TRUE | True | 1 | yes) REQUIRE_ALL=${REQUIRE_ALL:-1} ;; esac
# shellcheck disable=SC2206  # word splitting of PYTEST_ARGS is what the caller asks for
EXTRA_ARGS=(${PYTEST_ARGS:-})

newest_patch() {  # newest $PYENV_VERSIONS/<minor>.N with a python3 in it, or nothing
  local minor=$1 dir best="" best_patch=-1 patch
  for dir in "$PYENV_VERSIONS/$minor".*; do
    [[ -x "$dir/bin/python3" ]] || continue
    patch=${dir##*/"$minor".}
    [[ "$patch" =~ ^[0-9]+$ ]] || continue  # 3.13.0 yes; 3.13.0t, 3.13-dev no
    if ((patch > best_patch)); then best=$dir best_patch=$patch; fi
  done
  [[ -n "$best" ]] && echo "$best/bin/python3"
}

found=() missing=()
declare -A interpreter
for minor in $VERSIONS; do
  if python=$(newest_patch "$minor"); then
    interpreter[$minor]=$python
    found+=("$minor")
    echo "found:   CPython $minor -> $python"
  else
    missing+=("$minor")
    echo "missing: CPython $minor (no $PYENV_VERSIONS/$minor.N/bin/python3)"
  fi
done
if ((${#missing[@]})) && [[ "${REQUIRE_ALL:-0}" == 1 ]]; then
  echo "REQUIRE_ALL=1 (the default under CI=true) and ${missing[*]} missing" >&2
  exit 1
fi
if ((${#found[@]} == 0)); then
  echo "no CPython 3.9-3.13 under $PYENV_VERSIONS: nothing to test" >&2
  exit 1
fi

quiet_pip() {  # pip without this machine's warnings about index directories it does not have
  local venv=$1
  shift
  "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

prepare_venv() {  # $1 minor, $2 interpreter; a cached venv with the project and its test deps
  local minor=$1 python=$2 venv="$VENVS_DIR/py$1" stamp key
  # rebuilt when the interpreter or the project's metadata (dependencies, extras) change; not for tool settings
  key="$("$python" -c 'import sys; print(" ".join(sys.version.split()))') $(
    sed -n '/^\[project\]/,/^\[tool\./p' pyproject.toml | sha256sum | cut -c1-16)"
  stamp="$venv/.installed"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    return 0
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv" || return 1
  quiet_pip "$venv" install -q --upgrade pip || return 1
  quiet_pip "$venv" install -q --config-settings editable_mode=compat -e '.[test]' || return 1
  echo "$key" >"$stamp"
}

run_one() {  # $1 minor: venv, then pytest; prints its report, writes "$VENVS_DIR/py$1.result"
  local minor=$1 start=$SECONDS setup outcome
  echo "=== CPython $minor: ${interpreter[$minor]} (-m \"$MARKERS\")"
  if ! prepare_venv "$minor" "${interpreter[$minor]}"; then
    echo "venv-failed $((SECONDS - start))" >"$VENVS_DIR/py$minor.result"
    return
  fi
  setup=$((SECONDS - start))
  # -p no:cacheprovider: the runs share the tree, and a cache written by one would steer the next
  if "$VENVS_DIR/py$minor/bin/python" -m pytest -q -p no:cacheprovider -m "$MARKERS" "${EXTRA_ARGS[@]}"; then
    outcome=passed
  else
    outcome=FAILED
  fi
  echo "=== CPython $minor: $outcome in $((SECONDS - start)) s (venv ${setup} s)"
  echo "$outcome $((SECONDS - start))" >"$VENVS_DIR/py$minor.result"
}

# JOBS interpreters at a time (default 1). The tests mostly wait (on sockets, the stand-in, fsync), so two runs
# share two cores well; each run's output is printed whole when it ends.
JOBS=${JOBS:-1}
mkdir -p "$VENVS_DIR"
declare -A result seconds
failed=0
total_start=$SECONDS
running=0
for minor in "${found[@]}"; do
  rm -f "$VENVS_DIR/py$minor.result"
  echo
  if ((JOBS <= 1)); then
    run_one "$minor"
    continue
  fi
  if ((running >= JOBS)); then
    wait -n
    running=$((running - 1))
  fi
  echo "=== CPython $minor: started (output in $VENVS_DIR/py$minor.log, printed when it ends)"
  (run_one "$minor" >"$VENVS_DIR/py$minor.log" 2>&1; cat "$VENVS_DIR/py$minor.log") &
  running=$((running + 1))
done
wait
for minor in "${found[@]}"; do
  outcome="no result" took="-"
  if [[ -f "$VENVS_DIR/py$minor.result" ]]; then read -r outcome took <"$VENVS_DIR/py$minor.result"; fi
  result[$minor]=$outcome
  seconds[$minor]=$took
  [[ "$outcome" == passed ]] || failed=1
done

echo
echo "interpreter  result       seconds"
for minor in "${found[@]}"; do
  printf '%-12s %-12s %7s\n' "$minor" "${result[$minor]}" "${seconds[$minor]}"
done
for minor in "${missing[@]}"; do
  printf '%-12s %-12s %7s\n' "$minor" "missing" "-"
done
echo "total: $((SECONDS - total_start)) s"
exit $failed
