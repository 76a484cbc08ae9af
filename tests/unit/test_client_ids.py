"""Every open writes under fresh Yjs client ids; the record of recent ones stays bounded."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import mesh.api
from mesh.api import Mesh
from mesh.store import DB_FILENAME


def _recorded(data_dir: Path) -> list[int]:
    conn = sqlite3.connect(data_dir / DB_FILENAME)
    try:
        (value,) = conn.execute(
            "SELECT value FROM meta WHERE key = 'yjs_client_ids_used'"
        ).fetchone()
    finally:
        conn.close()
    ids: list[int] = json.loads(value)
    return ids


async def _open_ids(data_dir: Path) -> list[int]:
    async with Mesh.open(data_dir) as mesh:
        return [mesh.memory.tier_doc(t).client_id for t in ("L1", "L2", "L3")]


async def test_opens_get_fresh_ids_and_only_the_latest_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mesh.api, "_USED_CLIENT_IDS_KEPT", 7)
    seen: list[int] = []
    for _ in range(4):
        ids = await _open_ids(tmp_path)
        assert not set(ids) & set(seen[-7:])  # never one of the recorded recent ids
        seen.extend(ids)
    assert _recorded(tmp_path) == seen[-7:]


async def test_a_recorded_id_is_not_drawn_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _open_ids(tmp_path)
    draws = iter([first[0], first[1], 11, 22, 33])
    monkeypatch.setattr(mesh.api.secrets, "randbits", lambda _bits: next(draws))
    assert await _open_ids(tmp_path) == [11, 22, 33]
