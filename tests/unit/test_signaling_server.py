"""The signaling endpoint cannot be held by strangers: per-address slots, eviction, deadlines.

Real TCP sockets on loopback; sources 127.0.0.2-9 stand for other hosts (all of 127/8 is
loopback on Linux).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mesh import signaling_server as ss
from mesh.daemon import RefusalLog

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def server(refused: list[str]) -> AsyncIterator[ss.SignalingServer]:
    async def answer(offer: bytes, address: str) -> bytes:
        return b"answer to " + offer

    endpoint = ss.SignalingServer(
        answer, lambda address, reason: refused.append(reason), host="127.0.0.1", port=0
    )
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.close()


async def silent(port: int, source: str) -> Streams:
    """Open a connection from `source` that never sends a byte."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_server(streams: Streams) -> bool:
    """True if the server closed this connection without answering."""
    reader, _writer = streams
    try:
        return await asyncio.wait_for(reader.read(), timeout=5) == b""
    except ConnectionResetError:
        return True


async def test_one_address_gets_at_most_its_share_of_the_slots() -> None:
    refused: list[str] = []
    async with server(refused) as endpoint:
        held = [await silent(endpoint.port, "127.0.0.2") for _ in range(ss.MAX_PER_ADDRESS)]
        extra = await silent(endpoint.port, "127.0.0.2")
        assert await closed_by_server(extra)
        assert refused == ["busy"] and endpoint.busy_refusals == 1
        # Another host is served meanwhile.
        assert await ss.exchange("127.0.0.1", endpoint.port, b"offer") == b"answer to offer"
        for _reader, writer in [*held, extra]:
            writer.close()


async def test_a_dialer_is_answered_while_strangers_hold_every_slot() -> None:
    refused: list[str] = []
    async with server(refused) as endpoint:
        sources = [f"127.0.0.{n}" for n in range(2, 10)]
        held = [await silent(endpoint.port, s) for s in sources for _ in range(ss.MAX_PER_ADDRESS)]
        assert len(held) == ss.MAX_CONCURRENT
        await asyncio.sleep(0.05)  # every one of them is being served (reading)
        assert await ss.exchange("127.0.0.1", endpoint.port, b"offer") == b"answer to offer"
        assert await closed_by_server(held[0])  # the oldest silent one made room
        for _reader, writer in held:
            writer.close()


async def test_a_connection_that_sends_no_length_is_dropped_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ss, "HEAD_TIMEOUT_S", 0.2)
    refused: list[str] = []
    async with server(refused) as endpoint:
        idle = await silent(endpoint.port, "127.0.0.2")
        began = asyncio.get_running_loop().time()
        assert await closed_by_server(idle)
        assert asyncio.get_running_loop().time() - began < ss.IO_TIMEOUT_S
        assert refused == ["timeout"]
        idle[1].close()


def test_the_daemon_logs_a_flood_of_refusals_sparingly(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog()
    with caplog.at_level(logging.INFO, logger="memmesh.daemon"):
        for _ in range(250):
            refusals("10.0.0.9", "busy")
        refusals("10.0.0.8", "wrong-mesh")
        refusals("10.0.0.7", "glare")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused signaling from 10.0.0.9: busy",
        "refused signaling from 10.0.0.9: busy (101 so far)",
        "refused signaling from 10.0.0.9: busy (201 so far)",
        "refused signaling from 10.0.0.8: wrong-mesh",
        "refused signaling from 10.0.0.7: glare",
    ]
    assert [r.levelno for r in caplog.records][-1] == logging.INFO
