"""A full disk at open: reads work, writes wait for space, and nothing written is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from crdt.memory import NewItem
from mesh.api import Mesh
from mesh.store import SqliteStore, StoreFullError


@contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Make every store commit fail as on a full disk until the yielded flag is cleared."""
    full = [True]
    original = SqliteStore.commit

    def commit(self: SqliteStore, **kwargs: Any) -> None:
        if full:
            raise StoreFullError(f"{self.path}: database or disk is full")
        original(self, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SqliteStore, "commit", commit)
        yield full


async def stored_before(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path) as mesh:
        await mesh.put("L1", "kept from before", id="old")


async def test_a_full_disk_at_open_still_serves_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    with disk_full(monkeypatch):
        async with Mesh.open(tmp_path) as mesh:  # opening wrote nothing, and closing neither
            assert (await mesh.get("old")).content == "kept from before"
            assert mesh.status()["commit_backlog"] == 1  # the open's own rows wait
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("old")).content == "kept from before"


async def test_a_write_waits_for_space_then_lands_with_the_open_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    with disk_full(monkeypatch) as full:
        async with Mesh.open(tmp_path) as mesh:
            client_id = mesh.memory.tier_doc("L1").client_id
            with pytest.raises(StoreFullError, match="disk is full"):
                await mesh.put("L1", "written while full", id="new")
            assert (await mesh.get("new")).content == "written while full"  # kept in memory
            full.clear()  # space freed: the next commit carries the waiting ones first
            await mesh.put("L1", "written after", id="after")
    with SqliteStore.open(tmp_path) as store:
        used = json.loads(store.get_meta("yjs_client_ids_used") or "[]")
    assert client_id in used  # recorded with the first writes made under it
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("new")).content == "written while full"
        assert (await mesh.get("after")).content == "written after"


async def test_a_write_that_never_found_space_is_reported_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    with disk_full(monkeypatch):
        mesh = Mesh.open(tmp_path)
        await mesh.start()
        with pytest.raises(StoreFullError):
            await mesh.put_many([NewItem(tier="L1", content="lost", id="lost")])
        with pytest.raises(StoreFullError):  # said, not silently dropped
            await mesh.close()
    async with Mesh.open(tmp_path) as mesh:
        assert mesh.memory.count("L1") == 1


async def test_carried_meta_marks_the_committer_failing_until_a_commit_writes_it(
    tmp_path: Path,
) -> None:
    async with Mesh.open(tmp_path) as mesh:
        committer = mesh._running()
        assert not committer.failing and committer.backlog == 0
        committer.carry_meta({"probe": "carried"})
        # Failing: the runtime holds replica data and makes no urgent send before a commit.
        assert committer.failing and committer.backlog == 1
        await mesh.put("L1", "carries it", id="x")
        assert not committer.failing and committer.backlog == 0
        assert await committer.run(lambda s: s.get_meta("probe")) == "carried"
