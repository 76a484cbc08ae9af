"""A database whose contents cannot be read is refused with an error naming the file, untouched."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from mesh.api import Mesh
from mesh.cli import main
from mesh.store import DB_FILENAME, StoreCorruptError

CORRUPTIONS = {
    "client ids": "UPDATE meta SET value = 'not json' WHERE key = 'yjs_client_ids_used'",
    "hlc ceiling": "UPDATE meta SET value = 'soon' WHERE key = 'hlc_ceiling_ms'",
    "event row": "UPDATE events SET body = '{\"seq\": ' WHERE seq = 1",
    "event row not an object": "UPDATE events SET body = '[1]' WHERE seq = 1",
    "update row": "UPDATE updates SET data = x'00ff00ff13'"
    " WHERE id = (SELECT max(id) FROM updates)",
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _node_with_one_item(data_dir: Path) -> None:
    async with Mesh.open(data_dir) as mesh:
        await mesh.put("L1", "kept", id="kept")


@pytest.mark.parametrize("statement", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
async def test_unreadable_contents_raise_naming_the_file_and_change_nothing(
    tmp_path: Path, statement: str
) -> None:
    await _node_with_one_item(tmp_path)
    db = tmp_path / DB_FILENAME
    conn = sqlite3.connect(db)
    with conn:
        assert conn.execute(statement).rowcount == 1
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(db)
    with pytest.raises(StoreCorruptError, match=str(db)):
        async with Mesh.open(tmp_path):
            pass
    assert _digest(db) == before


def test_the_cli_reports_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_node_with_one_item(tmp_path))
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    with conn:
        conn.execute(CORRUPTIONS["event row"])
    conn.close()
    assert main(["get", "--data-dir", str(tmp_path), "kept"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / DB_FILENAME) in err
