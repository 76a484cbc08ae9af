"""Smoke check of `python -m bench apply`: it runs and emits its JSON (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_apply_family_reports_cpu_per_item_next_to_bare_pycrdt() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "apply", "--quick", "--items", "1500", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["family"] == "apply"
    assert document["params"]["items"] == 1500
    assert document["params"]["codec"] == "i8"
    assert document["params"]["slices"] >= 2
    for name in ("apply_cpu_per_item", "loop_cpu_per_item"):
        fig = document["figures"][name]
        assert fig["value"] > 0
        assert fig["baseline"]["value"] > 0
        assert fig["ratio"] == fig["value"] / fig["baseline"]["value"]
