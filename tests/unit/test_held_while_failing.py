"""While a failed commit waits for its retry, no frame carrying replica data leaves the node."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from crdt.config import MemoryConfig
from crdt.tier import TierDoc
from mesh import committer as committer_module
from mesh import runtime as runtime_module
from mesh.api import Mesh
from mesh.codec import decode_message, encode_message
from mesh.config import NodeConfig
from mesh.effects import Send
from mesh.frames import MsgType, Priority, carries_replica_data, decode_frame
from mesh.inputs import Tick
from mesh.messages import Digest, MemoryResponse, MemorySync, Ping, SyncAck, SyncKind
from mesh.node import Node
from mesh.runtime import NodeRuntime, WriteError
from mesh.store import StoreFullError

WAIT_S = 10.0  # only reached when what the test waits for never happens


class FullDisk:
    """Wraps a store's commit: fails while `full`; counts the commits that succeeded."""

    def __init__(self, mesh: Mesh) -> None:
        self.store = mesh._running().store
        self.full = False
        self.committed = 0
        self._hold_next = False
        self._lock = threading.Lock()  # the store thread reads what the test sets
        self.entered = threading.Event()
        self.release = threading.Event()
        self._commit = self.store.commit
        self.store.commit = self.commit  # type: ignore[method-assign]

    def recover_after_release(self) -> None:
        """Let the next commit (a retry) succeed, once it has waited for `release`."""
        with self._lock:
            self._hold_next, self.full = True, False

    def commit(self, **kwargs: Any) -> None:
        with self._lock:
            held, self._hold_next = self._hold_next, False
            full = self.full
        if held:
            self.entered.set()
            self.release.wait(WAIT_S)
        if full:
            raise StoreFullError(f"{self.store.path}: database or disk is full")
        self._commit(**kwargs)
        self.committed += 1


class Recorder:
    """A transport linked to one peer; notes each frame's type and the commits done then."""

    def __init__(self, disk: list[FullDisk]) -> None:
        self.disk = disk
        self.frames: list[bytes] = []
        self.updates: list[tuple[MemorySync, int]] = []
        self.update_sent = asyncio.Event()

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        return None

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        committed = self.disk[0].committed if self.disk else 0
        self.frames.append(frame)
        message = decode_message(frame)[1]
        if isinstance(message, MemorySync) and message.kind is SyncKind.UPDATE:
            self.updates.append((message, committed))
            self.update_sent.set()
        return True

    def disconnect(self, peer_id: str) -> None:
        return None


class Clock:
    """The Node's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_write_whose_commit_failed_is_sent_only_after_its_retry_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RETRY_AFTER_S", 0.01)
    clock = Clock()
    config = NodeConfig(anti_entropy_interval_s=3600.0)
    async with Mesh.open(tmp_path / "n") as mesh:
        disk: list[FullDisk] = []
        transport = Recorder(disk)
        node = Node(mesh.memory, config, random.Random(1))
        async with NodeRuntime(node, mesh._running(), transport, clock=clock) as runtime:
            mesh.attach(runtime)
            runtime.link_up("peer")
            disk.append(FullDisk(mesh))
            disk[0].full = True
            with pytest.raises(WriteError, match="commit failed"):
                await mesh.put("L1", "not on disk yet", id="a")
            mark = len(transport.frames)  # link-up's HELLO and STEP1s went before
            # Well past the sync interval: the outbox flushes, SWIM probes the peer.
            clock.now += 1.0
            runtime.submit(Tick())
            # A write queued behind that Tick: once it failed, the Tick's effects ran.
            with pytest.raises(WriteError, match="commit failed"):
                await mesh.put("L1", "nor this", id="b")
            assert not transport.updates, "an update left while its commit had failed"
            while_failing = transport.frames[mark:]
            assert not any(carries_replica_data(frame) for frame in while_failing)
            assert MsgType.PING in {decode_frame(f).msg_type for f in while_failing}  # SWIM flows
            assert runtime.stats.frames_held >= 1
            # The disk recovers: the committer's own retry commits both, then they go out.
            disk[0].full = False
            async with asyncio.timeout(WAIT_S):
                await transport.update_sent.wait()
            mesh.attach(None)
    assert all(committed >= 1 for _m, committed in transport.updates)
    # The frame the Tick built (b was written after it, and waits in the outbox).
    assert [item_keys(m) for m, _c in transport.updates] == [["a"]]


async def test_no_urgent_send_while_the_retry_of_a_failed_commit_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RETRY_AFTER_S", 0.0)
    # A wide ceiling window: the urgent write's change carries no ceiling of its own, so
    # only the failed change (whose ceiling is not on disk) stops an early send.
    memory = dataclasses.replace(MemoryConfig.default(), hlc_ceiling_window_ms=60_000)
    async with Mesh.open(tmp_path / "n", config=memory) as mesh:
        disk: list[FullDisk] = []
        transport = Recorder(disk)
        node = Node(mesh.memory, NodeConfig(anti_entropy_interval_s=3600.0), random.Random(1))
        async with NodeRuntime(node, mesh._running(), transport) as runtime:
            mesh.attach(runtime)
            runtime.link_up("peer")
            disk.append(FullDisk(mesh))
            disk[0].full = True
            with pytest.raises(WriteError, match="commit failed"):
                await mesh.put("L1", "first", id="a")
            # The committer's retry is on the store thread, held there, and will succeed.
            disk[0].recover_after_release()
            assert await asyncio.to_thread(disk[0].entered.wait, WAIT_S)
            put = asyncio.ensure_future(
                mesh.put("L1", "urgent", id="u", priority=Priority.CRITICAL)
            )
            for _ in range(20):  # let the runtime run the write's effects as far as it may
                await asyncio.sleep(0)
            assert not transport.updates, "the urgent update left before the retry committed"
            disk[0].release.set()
            await put
            mesh.attach(None)
    assert transport.updates and all(committed >= 1 for _m, committed in transport.updates)


def item_keys(message: MemorySync) -> list[str]:
    doc = TierDoc(message.tier, client_id=7)
    doc.apply_update(message.body)
    return list(doc.item_ids())


def test_frames_that_carry_replica_data_are_told_apart_by_their_type() -> None:
    def frame(message: Any) -> bytes:
        return encode_message(message, priority=Priority.NORMAL, timestamp_ns=0)

    sync = MemorySync(b"b" * 16, "a", "*", "L1", SyncKind.UPDATE, b"\x00\x00", 1)
    assert carries_replica_data(frame(sync))
    assert carries_replica_data(frame(MemoryResponse(1, True)))
    assert not carries_replica_data(frame(Ping(1, ())))
    assert not carries_replica_data(frame(Digest((("L1", b"r" * 32),))))
    assert not carries_replica_data(frame(SyncAck(b"b" * 16, "a")))
    assert not carries_replica_data(b"short")


class Switch:
    """A committer stand-in whose failure the test switches off (only what `_run` reads)."""

    def __init__(self) -> None:
        self.failing = True
        self.backlog = 1
        self.recovery = asyncio.Event()

    async def recovered(self) -> None:
        await self.recovery.wait()


class Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        self.sent.append(frame)
        return True


def test_held_frames_are_bounded_and_go_out_in_order_when_the_commit_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def sync(n: int) -> bytes:
        body = bytes([n]) * 100
        message = MemorySync(bytes([n]) * 16, "a", "*", "L1", SyncKind.UPDATE, body, 1)
        return encode_message(message, priority=Priority.NORMAL, timestamp_ns=0)

    ping = encode_message(Ping(1), priority=Priority.CRITICAL, timestamp_ns=0)
    monkeypatch.setattr(runtime_module, "HELD_MAX_BYTES", 2 * len(sync(1)))

    async def main() -> tuple[list[bytes], list[bytes], NodeRuntime]:
        committer, wire = Switch(), Wire()
        runtime = NodeRuntime(None, committer, wire)  # type: ignore[arg-type]
        sends = [Send("p", sync(1)), Send("p", ping), Send("p", sync(2)), Send("p", sync(3))]
        await runtime._run(list(sends))
        while_failing = list(wire.sent)
        committer.failing = False
        committer.recovery.set()
        entry = await runtime._queue.get()  # the wake-up the recovery queued
        assert entry is not None
        await runtime._run(*entry)
        return while_failing, wire.sent, runtime

    while_failing, sent, runtime = asyncio.run(main())
    assert while_failing == [ping]  # SWIM flows, replica data waits
    assert sent == [ping, sync(1), sync(2)]  # in order; the third was over the bound
    assert (runtime.stats.frames_held, runtime.stats.held_dropped) == (2, 1)
