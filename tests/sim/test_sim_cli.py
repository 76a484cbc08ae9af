"""`memmesh sim` and `python -m simulations`: JSON, CSV, plot, summary and errors."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import main as memmesh_main
from simulations.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--nodes", "8", "--seed", "3", "--duration", "4", "--quiet"]


def test_memmesh_sim_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert memmesh_main(["sim", "partition-heal", *SMALL, "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["scenario"] == "partition-heal"
    assert summary["nodes"] == 8
    assert summary["converged"] is True
    assert "s wall" in out.err  # wall time goes to stderr only


def test_memmesh_sim_help_is_the_simulator_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        memmesh_main(["sim", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: memmesh sim" in text
    assert "lost_acked_writes" in text


def test_human_summary_without_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["churn", *SMALL, "--crash-rate", "0.05"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("churn: 8 nodes, seed 3")
    assert "converged in" in text
    assert "acked writes lost" in text


def test_csv_time_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "series.csv"
    assert main(["lossy-lan", *SMALL, "--csv", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["t_s"] == "0.000"
    times = [float(r["t_s"]) for r in rows]
    assert times == sorted(times)
    assert float(rows[-1]["t_s"]) == pytest.approx(summary["sim_time_s"])
    assert float(rows[-1]["delivered_fraction"]) == 1.0
    sent = [int(r["bytes_sent"]) for r in rows]
    assert sent == sorted(sent)
    assert {r["phase"] for r in rows} == {"boot", "lossy-lan", "settle"}


def test_plot_png(tmp_path: Path) -> None:  # matplotlib is a dev dependency: no skip
    path = tmp_path / "convergence.png"
    assert main(["partition-heal", *SMALL, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def no_matplotlib(name: str, package: str | None = None) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    path = tmp_path / "x.png"
    assert main(["partition-heal", *SMALL, "--plot", str(path)]) == 2
    assert "pip install memmesh[plot]" in capsys.readouterr().err
    assert not path.exists()


def test_bad_parameters_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition-heal", "--nodes", "1"]) == 2
    assert "memmesh sim: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-scenario"])


def test_python_m_simulations_is_deterministic_across_processes() -> None:
    """Two processes with different hash seeds print the same bytes."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-m", "simulations", "partition-heal", *SMALL, "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["seed"] == 3
