"""Smoke check of `python -m bench sim` on tiny sizes: the JSON has the expected figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sim_document(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "sim", "--sizes", "10,20"),
            *("--idle-seconds", "10", "--quiet", "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == document
    assert document["family"] == "sim"
    figures = document["figures"]
    assert set(figures) == {"convergence_n10", "convergence_n20", "idle_traffic"}
    for name in ("convergence_n10", "convergence_n20"):
        fig = figures[name]
        assert fig["converged"] is True
        assert fig["lost_acked_writes"] == 0
        assert fig["rounds"]["met"] is True
        assert fig["rounds"]["baseline"]["name"] == "log2(N) + ln(N)"
        assert fig["bytes_per_node"]["value"] > fig["bytes_per_node"]["baseline"]["value"] > 0
    idle = figures["idle_traffic"]
    assert idle["met"] is True
    assert idle["raw"]["dominant_type"] in idle["raw"]["by_type"]
    assert document["targets"]["idle_traffic"]["met"] is True
