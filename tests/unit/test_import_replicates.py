"""`memmesh import` through a daemon replicates like a write: at the next flush, no digests."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from crdt.memory import NewItem
from crdt.tier import TierDoc
from mesh.api import Mesh, wall_ms
from mesh.cli_net import run_in_daemon
from mesh.codec import decode_message
from mesh.config import NodeConfig
from mesh.messages import Digest, MemorySync, SyncKind
from mesh.node import Node
from mesh.runtime import NodeRuntime

ARRIVAL_TIMEOUT_S = 10.0  # only reached when the update never goes out


class Recorder:
    """A transport linked to one peer; keeps the UPDATE bodies and counts digests sent."""

    def __init__(self) -> None:
        self.updates: list[MemorySync] = []
        self.digests = 0
        self.update_sent = asyncio.Event()

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        return None

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        message = decode_message(frame)[1]
        if isinstance(message, Digest):
            self.digests += 1
        if isinstance(message, MemorySync) and message.kind is SyncKind.UPDATE:
            self.updates.append(message)
            self.update_sent.set()
        return True

    def disconnect(self, peer_id: str) -> None:
        return None


async def export_of(data_dir: Path, ids: list[str]) -> Path:
    """Write an L1 export holding items `ids`, made on another node."""
    async with Mesh.open(data_dir) as source:
        source.memory.put_many([NewItem("L1", f"content of {i}", i) for i in ids], wall_ms())
        path = data_dir / "l1.yjs"
        path.write_bytes(await source.export_tier("L1"))
    return path


@pytest.mark.parametrize("priority", ["normal", "critical"])
async def test_an_import_through_the_daemon_is_flooded_without_any_digest(
    tmp_path: Path, priority: str
) -> None:
    export = await export_of(tmp_path / "source", ["imported-1", "imported-2"])
    config = NodeConfig(anti_entropy_interval_s=3600.0)  # no digest comparison in this test
    async with Mesh.open(tmp_path / "n") as mesh:
        node = Node(mesh.memory, config, random.Random(1))
        transport = Recorder()
        async with NodeRuntime(node, mesh._running(), transport) as runtime:
            mesh.attach(runtime)
            runtime.link_up("peer")
            argv = ["import", "--data-dir", str(tmp_path / "n"), "--tier", "L1", str(export)]
            argv += ["--priority", priority]
            reply = await run_in_daemon(mesh, argv, {}, "/")
            async with asyncio.timeout(ARRIVAL_TIMEOUT_S):
                await transport.update_sent.wait()
            mesh.attach(None)
    assert reply == {"stdout": "imported into L1: 2 items changed\n", "error": None}
    assert transport.digests == 0
    peer = TierDoc("L1", client_id=7)
    for message in transport.updates:
        peer.apply_update(message.body)
    assert {"imported-1", "imported-2"} <= set(peer.item_ids())
