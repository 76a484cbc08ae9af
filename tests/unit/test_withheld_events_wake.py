"""Events of a write whose commit failed wake subscribers once a retry commits them."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from lone_node import NullTransport, fail_next_commit

from crdt.events import EventKind
from mesh import committer as committer_module
from mesh.api import Mesh
from mesh.config import NodeConfig
from mesh.node import Node
from mesh.runtime import NodeRuntime, WriteError
from mesh.store import StoreError

WAKE_TIMEOUT_S = 10.0  # only reached when the subscriber is never woken


async def put_failing_once_then_read_event(mesh: Mesh, error: type[Exception]) -> int:
    """Park a subscriber, fail a put's commit; return the seq the subscriber then gets."""
    stream = mesh.subscribe("L1/*")
    try:
        waiting = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # the subscriber polls (nothing yet) and waits
        assert not waiting.done()
        fail_next_commit(mesh)
        with pytest.raises(error):
            await mesh.put("L1", "kept", id="a")
        # Nothing else is written: only the committer's own retry can commit the event.
        event = await asyncio.wait_for(waiting, WAKE_TIMEOUT_S)
    finally:
        await stream.aclose()
    assert (event.address, event.kind) == ("L1/a", EventKind.PUT)
    return event.seq


async def event_on_disk(mesh: Mesh, seq: int) -> bool:
    rows = await mesh._running().run(lambda s: s.events_since(seq - 1))
    return any(row_seq == seq for row_seq, _body in rows)


async def test_a_daemon_write_whose_commit_failed_wakes_subscribers_once_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RETRY_AFTER_S", 0.0)
    async with Mesh.open(tmp_path / "n") as mesh:
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        async with NodeRuntime(node, mesh._running(), NullTransport()) as runtime:
            mesh.attach(runtime)
            seq = await put_failing_once_then_read_event(mesh, WriteError)
            assert await event_on_disk(mesh, seq)
            mesh.attach(None)


async def test_a_direct_write_whose_commit_failed_wakes_subscribers_once_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "RETRY_AFTER_S", 0.0)
    async with Mesh.open(tmp_path / "n") as mesh:
        seq = await put_failing_once_then_read_event(mesh, StoreError)
        assert await event_on_disk(mesh, seq)
