"""The real `memmesh` console script, run as a subprocess against real data directories.

Errors must be one line on stderr with a non-zero exit status and never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

MEMMESH = Path(sys.executable).parent / "memmesh"
TIMEOUT_S = 60


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEMMESH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def ok(*args: str | Path) -> str:
    proc = run(*args)
    assert proc.returncode == 0, f"memmesh {args} failed ({proc.returncode}):\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def ok_json(*args: str | Path) -> Any:
    return json.loads(ok(*args, "--json"))


def fails(*args: str | Path) -> str:
    """Run a command that must fail cleanly; return its one-line error message."""
    proc = run(*args)
    assert proc.returncode != 0, f"memmesh {args} unexpectedly succeeded:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{proc.stderr}"
    assert lines[0].startswith("memmesh: error:"), lines[0]
    return lines[0]


def npy(path: Path, values: Any) -> Path:
    np.save(path, np.asarray(values, dtype=np.float32))
    return path


def test_console_script_exists() -> None:
    assert MEMMESH.exists() and os.access(MEMMESH, os.X_OK)


def test_put_get_search_events_delete(tmp_path: Path) -> None:
    data = tmp_path / "node"
    rng = np.random.default_rng(1)
    vectors = {name: rng.standard_normal(24) for name in ("alpha", "beta", "gamma")}
    for n, (name, values) in enumerate(vectors.items()):
        item = ok_json(
            "put",
            "--data-dir",
            data,
            "--tier",
            ["L1", "L2", "L3"][n],
            "--id",
            name,
            "--content",
            f"the {name} memory",
            "--metadata",
            json.dumps({"n": n, "name": name}),
            "--embedding-file",
            npy(tmp_path / f"{name}.npy", values),
            "--tags",
            "one,two",
        )
        assert item["id"] == name
        assert item["embedding_dim"] == 24
    plain_id = ok("put", "--data-dir", data, "--tier", "L1", "--content", "no id").strip()
    assert plain_id and "\n" not in plain_id

    got = ok_json("get", "--data-dir", data, "beta")
    assert {"id", "tier", "content"} <= got.keys()
    assert (got["id"], got["tier"], got["content"]) == ("beta", "L2", "the beta memory")
    assert got["metadata"] == {"n": 1, "name": "beta"}
    assert got["tags"] == ["one", "two"]
    assert got["conflicts"] == []
    with_emb = ok_json("get", "--data-dir", data, "alpha", "--with-embedding")
    np.testing.assert_array_equal(
        np.asarray(with_emb["embedding"], dtype=np.float32), vectors["alpha"].astype(np.float32)
    )

    query = npy(tmp_path / "q.npy", vectors["gamma"] + 0.05 * rng.standard_normal(24))
    hits = ok_json("search", "--data-dir", data, "--embedding-file", query, "-k", "3")
    assert isinstance(hits, list) and len(hits) == 3
    assert all({"id", "tier", "score"} <= hit.keys() for hit in hits)
    assert (hits[0]["id"], hits[0]["tier"]) == ("gamma", "L3")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["content"] == "the gamma memory"
    l1_only = ok_json("search", "--data-dir", data, "--embedding-file", query, "--tiers", "L1")
    assert [h["id"] for h in l1_only] == ["alpha"]

    ok("delete", "--data-dir", data, "beta")
    message = fails("get", "--data-dir", data, "beta")
    assert "beta" in message
    assert "beta" in fails("delete", "--data-dir", data, "beta")

    events = ok_json("events", "--data-dir", data)
    assert [(e["kind"], e["item_id"]) for e in events] == [
        ("put", "alpha"),
        ("put", "beta"),
        ("put", "gamma"),
        ("put", plain_id),
        ("delete", "beta"),
    ]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    since = ok_json("events", "--data-dir", data, "--since", str(events[2]["seq"]))
    assert [e["item_id"] for e in since] == [plain_id, "beta"]

    ok("move", "--data-dir", data, "alpha", "--tier", "L2")
    assert ok_json("get", "--data-dir", data, "alpha")["tier"] == "L2"
    status = ok_json("status", "--data-dir", data)
    assert {t: s["items"] for t, s in status["tiers"].items()} == {"L1": 1, "L2": 1, "L3": 1}


def test_export_then_import_into_another_node(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    ok("put", "--data-dir", src, "--tier", "L2", "--id", "trip", "--content", "train to lyon")
    ok("put", "--data-dir", src, "--tier", "L2", "--id", "gone", "--content", "deleted later")
    ok("delete", "--data-dir", src, "gone")
    export = tmp_path / "l2.yjs"
    ok("export", "--data-dir", src, "--tier", "L2", "-o", export)
    assert export.stat().st_size > 0

    ok("import", "--data-dir", dst, "--tier", "L2", export)
    got = ok_json("get", "--data-dir", dst, "trip")
    assert (got["id"], got["tier"], got["content"]) == ("trip", "L2", "train to lyon")
    fails("get", "--data-dir", dst, "gone")
    src_status, dst_status = (
        ok_json("status", "--data-dir", src),
        ok_json("status", "--data-dir", dst),
    )
    assert src_status["tiers"]["L2"] == dst_status["tiers"]["L2"]  # same count and digest
    assert src_status["node_id"] != dst_status["node_id"]
    imported = ok_json("events", "--data-dir", dst)
    assert {(e["item_id"], e["origin"]) for e in imported} == {("trip", "remote")}

    garbage = tmp_path / "garbage.yjs"
    garbage.write_bytes(b"\xff\xfe not a yjs update")
    assert "garbage.yjs" in fails("import", "--data-dir", dst, "--tier", "L2", garbage)
    assert "missing.yjs" in fails(
        "import", "--data-dir", dst, "--tier", "L2", tmp_path / "missing.yjs"
    )
    assert ok_json("get", "--data-dir", dst, "trip")["content"] == "train to lyon"


def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "node"
    ok("put", "--data-dir", data, "--tier", "L1", "--id", "keep", "--content", "kept")

    message = fails(
        "put",
        "--data-dir",
        data,
        "--tier",
        "L1",
        "--id",
        "m",
        "--content",
        "x",
        "--metadata",
        "{bad",
    )
    assert "--metadata" in message and "JSON" in message

    missing = tmp_path / "nope.npy"
    message = fails(
        "put", "--data-dir", data, "--tier", "L1", "--id", "e", "--content", "x",
        "--embedding-file", missing,
    )  # fmt: skip
    assert "embedding" in message and str(missing) in message

    nan_file = npy(tmp_path / "nan.npy", [1.0, float("nan")])
    message = fails(
        "put", "--data-dir", data, "--tier", "L1", "--id", "n", "--content", "x",
        "--embedding-file", nan_file,
    )  # fmt: skip
    assert "NaN" in message

    assert "unknown-id" in fails("get", "--data-dir", data, "unknown-id")

    assert [e["item_id"] for e in ok_json("events", "--data-dir", data)] == ["keep"]
    assert ok_json("status", "--data-dir", data)["tiers"]["L1"]["items"] == 1


@pytest.mark.parametrize("header", [b"", b"SQLite format 3\x00"], ids=["random", "sqlite-header"])
def test_corrupt_database_is_reported_and_left_untouched(tmp_path: Path, header: bytes) -> None:
    data = tmp_path / "node"
    data.mkdir()
    db = data / "memmesh.db"
    corrupt = header + np.random.default_rng(5).bytes(8192)
    db.write_bytes(corrupt)
    for args in (
        ("get", "--data-dir", data, "anything"),
        ("put", "--data-dir", data, "--tier", "L1", "--content", "x"),
    ):
        message = fails(*args)
        assert "memmesh.db" in message
        assert "database" in message.lower()
        assert db.read_bytes() == corrupt
    assert sorted(p.name for p in data.iterdir()) == ["memmesh.db"]


def test_walkthrough_runs_and_replicas_converge() -> None:
    out = ok("walkthrough")
    assert "Merkle roots equal: True" in out
    assert "phone resolves the same value: True" in out
