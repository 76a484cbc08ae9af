"""Mesh.put_batches: pipelined bulk loads commit in order and lose no acknowledged batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from lone_node import fail_next_commit

import mesh.committer as committer_module
from crdt.errors import InvalidItemError
from crdt.memory import Change, NewItem, TieredMemory
from mesh.api import Mesh
from mesh.committer import GroupCommitter
from mesh.store import SqliteStore, StoreFullError


def batch(start: int, count: int) -> list[NewItem]:
    return [NewItem("L1", f"item {i}", f"bulk-{i}") for i in range(start, start + count)]


@pytest.mark.parametrize("in_flight", [1, 2, 4])
async def test_every_batch_is_stored_and_reported_in_order(tmp_path: Path, in_flight: int) -> None:
    reported: list[int] = []
    async with Mesh.open(tmp_path / "n") as mesh:
        stored = await mesh.put_batches(
            (batch(i * 50, 50) for i in range(7)), in_flight=in_flight, on_committed=reported.append
        )
    assert stored == 350
    assert reported == [50 * k for k in range(1, 8)]
    async with Mesh.open(tmp_path / "n") as reopened:
        assert reopened.memory.count("L1") == 350
        assert (await reopened.get("bulk-349")).content == "item 349"


async def test_a_bad_batch_raises_and_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    reported: list[int] = []
    bad = [*batch(100, 5), NewItem("L1", "", "bulk-bad", confidence=7.0)]
    batches = [batch(0, 50), batch(50, 50), bad, batch(200, 50)]
    async with Mesh.open(tmp_path / "n") as mesh:
        with pytest.raises(InvalidItemError):
            await mesh.put_batches(iter(batches), in_flight=2, on_committed=reported.append)
    assert reported == [50, 100]
    async with Mesh.open(tmp_path / "n") as reopened:
        assert (await reopened.get("bulk-99")).content == "item 99"
        assert "bulk-100" not in reopened.memory  # the bad batch wrote nothing


async def test_in_flight_must_be_positive(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path / "n") as mesh:
        with pytest.raises(ValueError, match="in_flight"):
            await mesh.put_batches([batch(0, 1)], in_flight=0)


async def test_the_next_batch_is_built_while_the_previous_one_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold each commit on the store thread until the following batch has been built: this
    # finishes only if a batch's write starts before the caller builds the next batch.
    built = [threading.Event() for _ in range(4)]
    writing: list[int] = []
    build = TieredMemory.put_many
    write = committer_module._write_batch

    def put_many(self: TieredMemory, requests: Sequence[NewItem], now_ms: int) -> Change:
        change = build(self, requests, now_ms)
        built[int(requests[0].id.split("-")[1]) // 10].set()
        return change

    def write_batch(store: SqliteStore, batch: Sequence[Any], carried: Any = None) -> None:
        index = len(writing)
        writing.append(len(batch))
        if index + 1 < len(built):
            assert built[index + 1].wait(timeout=10), "the next batch was not built meanwhile"
        write(store, batch, carried)

    async with Mesh.open(tmp_path / "n") as mesh:
        monkeypatch.setattr(TieredMemory, "put_many", put_many)
        monkeypatch.setattr(committer_module, "_write_batch", write_batch)
        stored = await mesh.put_batches((batch(i * 10, 10) for i in range(4)), in_flight=2)
    assert stored == 40
    assert writing == [1, 1, 1, 1]  # one change per write: each started as soon as it came


async def test_a_failed_retry_at_close_still_stops_the_thread_and_keeps_the_changes(
    tmp_path: Path,
) -> None:
    store = SqliteStore.open(tmp_path)
    committer = GroupCommitter(store)

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise StoreFullError(f"{tmp_path}: database or disk is full")

    original = store.commit
    store.commit = full  # type: ignore[method-assign]
    change = Change(updates=(("L1", b"update"),))
    with pytest.raises(StoreFullError):
        await committer.commit(change)
    with pytest.raises(StoreFullError):
        await committer.close()  # its one retry fails too
    assert committer._executor._shutdown  # the worker thread was stopped anyway
    assert committer.backlog == 1  # and the change was not dropped
    store.commit = original  # type: ignore[method-assign]
    store.close()


async def test_a_failed_commit_is_retried_on_its_own_when_nothing_else_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RETRY_AFTER_S", 0.01)
    store = SqliteStore.open(tmp_path)
    committer = GroupCommitter(store)
    fail_next_commit(store)
    with pytest.raises(StoreFullError):
        await committer.commit(Change(updates=(("L1", b"update"),)))
    assert committer.backlog == 1
    for _ in range(500):  # the retry runs on the loop, with no new commit to carry it
        if committer.backlog == 0:
            break
        await asyncio.sleep(0.01)
    assert committer.backlog == 0
    await committer.close()
    store.close()
    with SqliteStore.open(tmp_path) as reopened:
        assert reopened.last_update_id("L1") == 1
