"""CLI data commands without a daemon: no node made by a typo, and status's full key set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.cli import EXISTING_NODE_COMMANDS, main
from mesh.joining import init_node

ARGS = {
    "get": ["x"],
    "delete": ["x"],
    "move": ["x", "--tier", "L2"],
    "search": ["--embedding-file", "q.npy"],
    "events": [],
    "export": ["--tier", "L1", "-o", "out.bin"],
    "status": [],
    "compact": [],
}


@pytest.mark.parametrize("command", sorted(EXISTING_NODE_COMMANDS))
def test_a_command_on_a_missing_node_fails_and_creates_nothing(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo" / "node"
    assert main([command, "--data-dir", str(missing), *ARGS[command]]) == 1
    err = capsys.readouterr().err
    assert "no memmesh node here" in err and "memmesh init" in err and err.count("\n") == 1
    assert not (tmp_path / "typo").exists()


def test_put_still_creates_a_node(tmp_path: Path) -> None:
    node = tmp_path / "fresh"
    put = ["put", "--data-dir", str(node), "--tier", "L1", "--id", "a", "--content", "x"]
    assert main(put) == 0
    assert main(["get", "--data-dir", str(node), "a"]) == 0


def test_offline_status_has_the_daemon_keys_with_offline_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = init_node(tmp_path)
    assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["daemon"] is False
    assert status["mesh_id"] == setup.credentials.mesh_id
    assert status["hub"] is None and status["is_hub"] is False and status["peers"] == 0
    assert {"node_id", "tiers", "profile"} <= status.keys()
    assert status["uptime_s"] is None and status["bad_frames"] == 0 and status["transfers"] == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [("{not json", "--metadata is not valid JSON"), ("[" * 100_000, "nested too deeply")],
)
def test_bad_metadata_is_one_line_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], metadata: str, message: str
) -> None:
    """Regression: metadata nested ~1,000 deep printed a RecursionError traceback."""
    args = ["put", "--data-dir", str(tmp_path), "--tier", "L1", "--content", "x"]
    assert main([*args, "--id", "m", "--metadata", metadata]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert main(["get", "--data-dir", str(tmp_path), "m"]) == 1  # nothing was stored
