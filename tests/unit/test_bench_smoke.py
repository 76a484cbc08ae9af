"""Smoke check of the benchmark command: it runs and emits the expected JSON (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = (
    "put_durable",
    "put_many",
    "put_many_embedded",
    "get_cached",
    "get_uncached",
    "search_top10",
    "rss_l1_f32",
    "rss_l3_i8",
)
FIGURE_KEYS = {"value", "unit", "baseline", "ratio", "target", "met", "raw"}
TARGETED = {"put_many", "get_cached", "search_top10"}  # 384-d puts: reported, no target


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "local.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "local", "--quick", "--items", "2000", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == parsed
    return parsed


def test_document_envelope(document: dict[str, Any]) -> None:
    assert document["family"] == "local"
    assert document["schema_version"] == 1
    for key in ("machine", "params", "figures", "targets", "duration_s"):
        assert key in document
    assert document["params"]["items"] == 2000
    assert document["params"]["quick"] is True
    for key in ("nproc", "python", "numpy_blas"):
        assert key in document["machine"]


def test_every_figure_has_value_baseline_and_ratio(document: dict[str, Any]) -> None:
    figures = document["figures"]
    assert set(FIGURES) <= set(figures)
    for name in FIGURES:
        fig = figures[name]
        assert set(fig) >= FIGURE_KEYS, name
        assert fig["value"] > 0, name
        assert fig["baseline"]["value"] > 0, name
        assert fig["ratio"] == pytest.approx(fig["value"] / fig["baseline"]["value"]), name


def test_targets_are_reported(document: dict[str, Any]) -> None:
    assert set(document["targets"]) == TARGETED
    for name in TARGETED:
        assert document["figures"][name]["target"] is not None
        assert document["figures"][name]["met"] in (True, False, None)
    search = document["figures"]["search_top10"]
    assert search["met"] is None  # 2,000 items is not the 100k x 384 target scale
    for key in ("median_ms", "p95_ms", "p99_ms"):
        assert key in search["raw"]["latency"]
    assert "load" in search["raw"]
