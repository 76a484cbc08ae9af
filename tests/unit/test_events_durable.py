"""Readers of events get only committed ones, and a closing mesh still hands those out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from crdt.memory import NewItem
from mesh.api import Mesh
from mesh.store import SqliteStore, StoreFullError


async def test_a_subscriber_gets_no_event_before_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: events were delivered while their commit was still on the store thread;
    a crash then gave their seqs to other events, and a reader resuming skipped those."""
    async with Mesh.open(tmp_path) as mesh:
        await mesh.put("L1", "first", id="a")
        stream = mesh.subscribe("L1/*", from_seq=1)
        assert (await stream.__anext__()).item_id == "a"
        started, release = threading.Event(), threading.Event()
        commit = SqliteStore.commit

        def slow(self: SqliteStore, **kwargs: Any) -> None:
            if kwargs.get("updates"):
                started.set()
                assert release.wait(10)
            commit(self, **kwargs)

        monkeypatch.setattr(SqliteStore, "commit", slow)
        writing = asyncio.create_task(mesh.put_many([NewItem("L1", "second", "b")]))
        assert await asyncio.to_thread(started.wait, 10)
        reading = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0.05)
        assert not reading.done()  # the event of "b" is in the ring, not on disk yet
        assert [e.item_id for e in mesh.events()] == ["a"]
        release.set()
        await writing
        assert (await asyncio.wait_for(reading, 10)).item_id == "b"
        assert [e.item_id for e in mesh.events()] == ["a", "b"]
        await stream.aclose()


async def test_a_closing_mesh_still_hands_out_the_committed_events(tmp_path: Path) -> None:
    """Regression: a slow subscriber's iteration ended at close with events unread."""
    mesh = Mesh.open(tmp_path)
    await mesh.start()
    stream = mesh.subscribe("*")
    got: list[int] = []

    async def consume() -> None:
        async for event in stream:
            got.append(event.seq)
            await asyncio.sleep(0.01)

    reader = asyncio.create_task(consume())
    for i in range(5):
        await mesh.put("L1", "x", id=f"i{i}")
    await mesh.close()
    await asyncio.wait_for(reader, 10)
    assert got == [1, 2, 3, 4, 5]


async def test_events_that_close_itself_commits_are_still_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: close's retry of a failed commit made events durable without
    telling the readers, so a closing stream ended without them."""
    mesh = Mesh.open(tmp_path)
    await mesh.start()
    stream = mesh.subscribe("*")
    await mesh.put("L1", "a", id="a")
    commit, failures = SqliteStore.commit, [1]

    def full_once(self: SqliteStore, **kwargs: Any) -> None:
        if kwargs.get("updates") and failures:
            failures.pop()
            raise StoreFullError(f"{self.path}: database or disk is full")
        commit(self, **kwargs)

    monkeypatch.setattr(SqliteStore, "commit", full_once)
    with pytest.raises(StoreFullError):
        await mesh.put("L1", "b", id="b")
    await mesh.close()  # retries the backlog at once: b is written
    assert [e.item_id async for e in stream] == ["a", "b"]
