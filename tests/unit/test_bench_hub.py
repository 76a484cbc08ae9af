"""Smoke check of `python -m bench hub` (simulator part only): the JSON it emits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_hub_simulator_part_reports_bytes_with_and_without_the_hub() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "hub", "--skip-net", "--sim-nodes", "10", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["family"] == "hub"
    assert document["params"]["skipped"] == {"network": "--skip-net"}
    fig = document["figures"]["sim_bytes_per_node_n10"]
    assert fig["value"] == fig["raw"]["with_hub"]["bytes_per_node"] > 0
    assert fig["baseline"]["value"] == fig["baseline"]["run"]["bytes_per_node"] > 0
    assert fig["ratio"] == fig["value"] / fig["baseline"]["value"]
    assert fig["raw"]["with_hub"]["converged"] and fig["raw"]["with_hub"]["lost_acked_writes"] == 0
    assert fig["raw"]["with_hub"]["links_per_node"] > 0
