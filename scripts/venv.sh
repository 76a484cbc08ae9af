#!/usr/bin/env bash
# Create .venv (when missing or when pyproject.toml changed) and install memmesh with its
# dev tools into it. Sourced by the other scripts; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.memmesh-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  # The first Python 3.11+ found: $PYTHON if set, then python3, then versioned names.
  python=""
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "memmesh: needs Python 3.11 or later (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  echo "memmesh: creating virtual environment in $venv with $python" >&2
  if ! "$python" -m venv "$venv"; then
    echo "memmesh: '$python -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2
    exit 1
  fi
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "memmesh: installing memmesh and its dependencies (first run takes a minute)" >&2
  log="$venv/pip-install.log"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[dev]" \
      >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "memmesh: installing dependencies failed; full log in $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
