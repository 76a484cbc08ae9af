"""`memmesh import` through a daemon commits in the Node's effect order: nothing races ahead."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from crdt.config import MemoryConfig
from crdt.memory import NewItem
from mesh.api import Mesh, wall_ms
from mesh.cli_net import run_in_daemon
from mesh.config import NodeConfig
from mesh.frames import MsgType, Priority, decode_frame
from mesh.node import Node
from mesh.runtime import NodeRuntime, WriteError
from mesh.store import StoreFullError

FUTURE_MS = 30_000  # the imported item's clock: ahead of us, within the drift bound


class Recorder:
    """A transport linked to one peer; notes each urgent update and the ceiling on disk then."""

    def __init__(self, durable: list[int]) -> None:
        self.durable = durable
        self.urgent_updates: list[int] = []  # the durable HLC ceiling at each such send

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        return None

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        if urgent and decode_frame(frame).msg_type is MsgType.MEMORY_SYNC:
            self.urgent_updates.append(self.durable[0])
        return True

    def disconnect(self, peer_id: str) -> None:
        return None


class GatedStore:
    """Wraps a store's commit: tracks the durable ceiling; fails the first commit once held."""

    def __init__(self, mesh: Mesh, durable: list[int]) -> None:
        self.store = mesh._running().store
        self.durable = durable
        self.entered = threading.Event()
        self.release = threading.Event()
        self.armed = False
        self._commit = self.store.commit
        self.store.commit = self.commit  # type: ignore[method-assign]

    def commit(self, **kwargs: Any) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(10)
            raise StoreFullError(f"{self.store.path}: database or disk is full")
        self._commit(**kwargs)
        ceiling = (kwargs.get("meta") or {}).get("hlc_ceiling_ms")
        if ceiling is not None:
            self.durable[0] = max(self.durable[0], int(ceiling))


async def export_from_the_future(data_dir: Path) -> Path:
    """Write an L1 export holding one item stamped FUTURE_MS ahead of now."""
    async with Mesh.open(data_dir) as source:
        source.memory.put_many(
            [NewItem("L1", "from the future", "imported")], wall_ms() + FUTURE_MS
        )
        path = data_dir / "l1.yjs"
        path.write_bytes(await source.export_tier("L1"))
    return path


async def test_an_urgent_write_never_leaves_before_an_imports_clock_ceiling_is_durable(
    tmp_path: Path,
) -> None:
    export = await export_from_the_future(tmp_path / "source")
    config = dataclasses.replace(MemoryConfig.default(), hlc_ceiling_window_ms=200)  # the daemon's
    async with Mesh.open(tmp_path / "n", config=config) as mesh:
        durable = [int(await mesh._running().run(lambda s: s.get_meta("hlc_ceiling_ms") or "0"))]
        gate = GatedStore(mesh, durable)
        transport = Recorder(durable)
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        async with NodeRuntime(node, mesh._running(), transport) as runtime:
            mesh.attach(runtime)
            runtime.link_up("peer")
            # The import observes the item's clock: its change carries the new ceiling, and
            # its commit (held on the store thread, then failing) is what makes it durable.
            gate.armed = True
            argv = ["import", "--data-dir", str(tmp_path / "n"), "--tier", "L1", str(export)]
            imported = asyncio.ensure_future(run_in_daemon(mesh, argv, {}, "/"))
            assert await asyncio.to_thread(gate.entered.wait, 10)
            # A CRITICAL write now stamps above the old ceiling on disk, and its change
            # carries none of its own (the import's took the rise).
            put = asyncio.ensure_future(
                mesh.put("L1", "urgent", id="urgent", priority=Priority.CRITICAL)
            )
            for _ in range(20):  # let the runtime run the write's effects as far as it may
                await asyncio.sleep(0)
            gate.release.set()
            reply = await imported
            item = await put
            mesh.attach(None)
    assert reply["error"] is not None and "disk is full" in reply["error"]
    assert transport.urgent_updates, "the urgent write was flooded to the peer"
    # A crash right after any such send restarts the clock at the durable ceiling: it must
    # already be above the timestamp that went out.
    assert all(ceiling > item.updated.wall_ms for ceiling in transport.urgent_updates)


async def test_an_import_into_a_stopped_runtime_changes_nothing(tmp_path: Path) -> None:
    export = await export_from_the_future(tmp_path / "source")
    async with Mesh.open(tmp_path / "n") as mesh:
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        runtime = NodeRuntime(node, mesh._running(), Recorder([0]))
        await runtime.start()
        await runtime.close()
        mesh.attach(runtime)
        with pytest.raises(WriteError) as refused:
            await mesh.apply_update("L1", export.read_bytes())
        assert refused.value.applied is False and "imported" not in mesh.memory
        mesh.attach(None)
