#!/usr/bin/env bash
# The main job: set up on first run, then three nodes find each other and replicate.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
exec "$root/.venv/bin/memmesh" demo "$@"
