#!/usr/bin/env bash
# The whole check: set up on first run, then lint, type-check, layering, and every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/venv.sh
bin="$root/.venv/bin"
echo "== ruff"; "$bin/ruff" check .
echo "== ruff format"; "$bin/ruff" format --check .
echo "== mypy (strict on crdt/ mesh/ hub_role/)"; "$bin/mypy"
echo "== import contracts"; "$bin/lint-imports"
echo "== pytest"; exec "$bin/pytest" "$@"
