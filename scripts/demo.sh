#!/usr/bin/env bash
# The main job: set up on first run, then show memmesh working.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
exec "$root/.venv/bin/memmesh" walkthrough "$@"
