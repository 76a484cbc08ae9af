"""A write whose commit failed is reported as applied: it is in memory and the retry persists it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lone_node import NullTransport, fail_next_commit

from mesh.api import Mesh
from mesh.config import NodeConfig
from mesh.inputs import AckLevel
from mesh.node import Node
from mesh.runtime import NodeRuntime, WriteError


@pytest.mark.parametrize("ack", [AckLevel.LOCAL, AckLevel.PEER])
async def test_a_write_whose_commit_failed_is_applied_and_on_disk_after_the_retry(
    tmp_path: Path, ack: AckLevel
) -> None:
    async with Mesh.open(tmp_path / "n") as mesh:
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        async with NodeRuntime(node, mesh._running(), NullTransport()) as runtime:
            mesh.attach(runtime)
            fail_next_commit(mesh)
            with pytest.raises(WriteError, match="commit failed") as failed:
                await mesh.put("L1", "first", id="a", ack=ack, timeout_s=60.0)
            # The caller must not write it again: it took effect and waits for a retry.
            assert failed.value.applied is True
            assert (await mesh.get("a")).content == "first"
            assert mesh._running().backlog == 1
            # The next commit retries it first, in the same transaction.
            await mesh.put("L1", "second", id="b")
            assert mesh._running().backlog == 0
            mesh.attach(None)
    async with Mesh.open(tmp_path / "n") as reopened:
        assert (await reopened.get("a")).content == "first"
        assert (await reopened.get("b")).content == "second"


async def test_a_write_refused_before_anything_changed_is_not_applied(tmp_path: Path) -> None:
    async with Mesh.open(tmp_path / "n") as mesh:
        node = Node(mesh.memory, NodeConfig(), random.Random(1))
        runtime = NodeRuntime(node, mesh._running(), NullTransport())
        await runtime.start()
        await runtime.close()
        mesh.attach(runtime)
        with pytest.raises(WriteError) as refused:
            await mesh.put("L1", "never", id="a")
        assert refused.value.applied is False
        assert "a" not in mesh.memory
        mesh.attach(None)
