#!/usr/bin/env bash
# The project's commands. Usage: scripts/dev.sh setup | demo [ARGS...] | test [PYTEST ARGS...] | lint
# setup creates .venv/ (Python 3.11, as the bpy module requires) with the pinned, tested-together
# versions in requirements/constraints.txt; it re-installs only when the requirement files change.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "error: Python 3.11 is required (the bpy 5.0 module supports only 3.11)" >&2
  exit 1
}

setup() {
  local stamp=.venv/.requirements.sha256
  local wanted
  wanted=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return
  fi
  [ -x .venv/bin/python ] || "$(find_python)" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt
  echo "$wanted" >"$stamp"
}

lint() {
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
}

command=${1:-}
shift || true
case "$command" in
  setup) setup ;;
  demo)
    setup
    HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} .venv/bin/python -m demo "$@"
    ;;
  test)
    setup
    lint
    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
    ;;
  lint)
    setup
    lint
    ;;
  *)
    echo "usage: scripts/dev.sh setup | demo [ARGS...] | test [PYTEST ARGS...] | lint" >&2
    exit 2
    ;;
esac
