"""A full disk at open: reads work, writes wait for space, and nothing written is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from lone_node import RecordingTransport

from crdt.config import MemoryConfig
from crdt.memory import NewItem
from mesh import committer as committer_module
from mesh.api import Mesh
from mesh.config import NodeConfig
from mesh.frames import Priority, carries_replica_data
from mesh.inputs import WriteRequested
from mesh.node import Node
from mesh.runtime import NodeRuntime, WriteError
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


def no_tombstone_retention() -> MemoryConfig:
    base = MemoryConfig()
    tiers = {t: dataclasses.replace(p, tombstone_retention_ms=0) for t, p in base.tiers.items()}
    return dataclasses.replace(base, tiers=MappingProxyType(tiers))


async def tombstone_due_at_open(tmp_path: Path) -> MemoryConfig:
    """Leave a node whose next open collects a tombstone ("gone") beside a live "kept";
    return the config (no retention) that makes it due."""
    config = no_tombstone_retention()
    async with Mesh.open(tmp_path, config=config) as mesh:
        await mesh.put("L1", "deleted", id="gone")
        await mesh.put("L1", "kept", id="kept")
        await mesh.delete("gone")
    return config


async def test_tombstones_due_at_open_wait_so_a_read_on_a_full_disk_closes_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = await tombstone_due_at_open(tmp_path)
    with disk_full(monkeypatch):
        async with Mesh.open(tmp_path, config=config) as mesh:  # close must not raise
            assert (await mesh.get("kept")).content == "kept"
            assert mesh.status()["commit_backlog"] == 1  # only the open's rows


async def test_no_compaction_while_a_change_waits_for_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    with disk_full(monkeypatch) as full:
        async with Mesh.open(tmp_path) as mesh:
            with pytest.raises(StoreFullError):
                await mesh.put("L1", "waits for space", id="new")
            full.clear()  # space is back, but the retry has not run yet
            # A snapshot from memory would hold the failed write (its clock ceiling and the
            # open's new client id) on disk ahead of its own commit.
            assert await mesh.compact() == {}
            await mesh.put("L1", "carries the rest", id="after")
    with SqliteStore.open(tmp_path) as store:
        ceiling = int(store.get_meta("hlc_ceiling_ms") or "0")
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("new")).updated.wall_ms <= ceiling


async def test_meta_carried_while_a_commit_runs_waits_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    write = committer_module._write_batch

    def slow_write(store: SqliteStore, batch: Any, carried: Any = None) -> None:
        started.set()
        assert release.wait(timeout=10)
        write(store, batch, carried)

    async with Mesh.open(tmp_path) as mesh:
        committer = mesh._running()
        monkeypatch.setattr(committer_module, "_write_batch", slow_write)
        putting = asyncio.create_task(mesh.put("L1", "in flight", id="a"))
        await asyncio.to_thread(started.wait, 10)
        committer.carry_meta({"late": "row"})  # after that batch took its copy
        release.set()
        await putting
        assert committer.failing  # the batch that just succeeded did not hold the row
        monkeypatch.setattr(committer_module, "_write_batch", write)
        await mesh.put("L1", "carries it", id="b")
        assert not committer.failing
        assert await committer.run(lambda s: s.get_meta("late")) == "row"


async def test_a_node_opened_on_a_full_disk_sends_replica_data_only_once_its_rows_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    transport = RecordingTransport()
    with disk_full(monkeypatch) as full:
        async with Mesh.open(tmp_path) as mesh:
            node = Node(mesh.memory, NodeConfig.lan(), random.Random(1))
            async with NodeRuntime(node, mesh._running(), transport) as runtime:
                mesh.attach(runtime)
                runtime.peer_found("peer-b", "10.0.0.9", 7600, ("L1", "L2", "L3"))
                runtime.link_up("peer-b", "10.0.0.9")
                with pytest.raises(WriteError, match="commit failed") as failed:
                    await mesh.put("L1", "urgent", id="c", priority=Priority.CRITICAL)
                assert failed.value.applied
                assert not [f for _peer, f in transport.sent if carries_replica_data(f)]
                full.clear()  # space is back: the committer's own retry writes everything
                await asyncio.wait_for(mesh._running().recovered(), timeout=5)
                for _ in range(100):  # the runtime then sends what it held
                    if [f for _peer, f in transport.sent if carries_replica_data(f)]:
                        break
                    await asyncio.sleep(0.01)
                assert [f for _peer, f in transport.sent if carries_replica_data(f)]
                mesh.attach(None)
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("c")).content == "urgent"


async def test_a_collection_that_fails_after_the_open_rows_landed_is_dropped_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Almost full: the open's small meta commit fits, the tombstone collection does not.
    config = await tombstone_due_at_open(tmp_path)
    original = SqliteStore.commit

    def commit(self: SqliteStore, **kwargs: Any) -> None:
        if kwargs.get("updates"):
            raise StoreFullError(f"{self.path}: database or disk is full")
        original(self, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SqliteStore, "commit", commit)
        async with Mesh.open(tmp_path, config=config) as mesh:  # close must not raise
            assert (await mesh.get("kept")).content == "kept"
            assert mesh._running().failing  # the collection waits: nothing replica leaves
    async with Mesh.open(tmp_path, config=config) as mesh:  # collected again, with space
        assert dict(mesh.memory.tier_doc("L1").versions("gone")) == {}
        assert (await mesh.get("kept")).content == "kept"


async def test_a_write_failing_while_the_compaction_waits_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stored_before(tmp_path)
    async with Mesh.open(tmp_path) as mesh:
        committer = mesh._running()
        run = committer.run
        failed: list[BaseException] = []

        async def run_then_fail_a_write(fn: Any) -> Any:
            result = await run(fn)
            if not failed:  # a writer's commit fails while compact() awaits the store
                with disk_full(monkeypatch), pytest.raises(StoreFullError) as error:
                    await mesh.put("L1", "failed meanwhile", id="failed")
                failed.append(error.value)
            return result

        monkeypatch.setattr(committer, "run", run_then_fail_a_write)
        assert await mesh.compact() == {}  # the snapshot would hold the failed write
        assert failed and committer.failing
        monkeypatch.setattr(committer, "run", run)
        await mesh.put("L1", "carries it", id="after")
    async with Mesh.open(tmp_path) as mesh:
        assert (await mesh.get("failed")).content == "failed meanwhile"


async def test_a_daemon_compaction_waits_for_changes_still_queued_in_the_runtime(
    tmp_path: Path,
) -> None:
    """Found in review: a Node input changes memory at once while its Persist waits in the
    runtime's queue; a compaction snapshotting then would put that change on disk ahead of
    its own commit. The compaction now waits until the runtime has handed everything over."""
    async with Mesh.open(tmp_path) as mesh:
        await mesh.put("L1", "old", id="old")
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        runtime = NodeRuntime(node, mesh._running(), RecordingTransport())  # not started yet
        mesh.attach(runtime)
        request_id, written = runtime.new_request_id()
        runtime.submit(WriteRequested(request_id, puts=(NewItem("L1", "queued", "q"),)))
        assert "q" in mesh.memory and not runtime.idle  # in memory, its Persist queued
        compacting = asyncio.ensure_future(mesh.compact())
        await asyncio.sleep(0.05)
        assert not compacting.done()  # waits for the runtime instead of snapshotting
        await runtime.start()  # the executor hands the Persist over
        await written
        assert (await compacting)["L1"] >= 1
        await runtime.close()
        mesh.attach(None)
    async with Mesh.open(tmp_path) as mesh:
        assert [e.item_id for e in mesh.events()] == ["old", "q"]
