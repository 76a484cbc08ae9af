"""`async with Daemon(...)` serves a node in this process and stops it gracefully."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mesh.control import call, daemon_running
from mesh.daemon import METRICS_MAX_CLIENTS, Daemon, DaemonOptions
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> bytes:
    """Return the whole reply; b"" when the server closed at once (a reset counts too)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our request unread
            pass
    return b"".join(chunks)


async def test_the_metrics_endpoint_serves_a_bounded_number_of_clients(tmp_path: Path) -> None:
    """Found in review: any local user could hold unbounded metrics connections, and every
    scrape counted every tier's items on the event loop."""
    init_node(tmp_path)
    port = free_port()
    options = DaemonOptions(tmp_path, interfaces=("127.0.0.1",), metrics_port=port)
    async with Daemon(options):
        reply = await asyncio.to_thread(scrape, port)
        assert reply.startswith(b"HTTP/1.0 200 OK") and b"memmesh_" in reply
        idle = [
            await asyncio.open_connection("127.0.0.1", port) for _ in range(METRICS_MAX_CLIENTS)
        ]
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(scrape, port) == b""  # over the bound: closed at once
        for _reader, writer in idle:
            writer.close()
        await asyncio.sleep(0.05)
        assert (await asyncio.to_thread(scrape, port)).startswith(b"HTTP/1.0 200 OK")
