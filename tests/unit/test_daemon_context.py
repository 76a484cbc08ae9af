"""`async with Daemon(...)` serves a node in this process and stops it gracefully."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh.control import call, daemon_running
from mesh.daemon import Daemon, DaemonOptions
from mesh.joining import SetupError, init_node


async def test_async_with_serves_the_control_socket_then_flushes_and_stops(
    tmp_path: Path,
) -> None:
    setup = init_node(tmp_path)
    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        assert daemon_running(tmp_path)
        status = await asyncio.to_thread(call, tmp_path, "status")
        assert status["daemon"] is True and status["node_id"] == setup.identity.node_id
        put = ["put", "--data-dir", str(tmp_path), "--tier", "L1", "--id", "kept"]
        put += ["--content", "written through it"]
        await asyncio.to_thread(call, tmp_path, "cli", argv=put, cwd="/")
    assert not daemon_running(tmp_path)
    async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))) as daemon:
        assert daemon.mesh is not None
        assert (await daemon.mesh.get("kept")).content == "written through it"


async def test_a_daemon_that_cannot_start_raises_from_async_with(tmp_path: Path) -> None:
    with pytest.raises(SetupError):  # no `memmesh init` in this folder
        async with Daemon(DaemonOptions(tmp_path, interfaces=("127.0.0.1",))):
            pass
