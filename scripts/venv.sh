#!/usr/bin/env bash
# Create .venv (when missing or when pyproject.toml changed) and install memmesh with its
# dev tools into it. Sourced by the other scripts; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.memmesh-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "memmesh: creating virtual environment in $venv" >&2
  python3 -m venv "$venv"
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
