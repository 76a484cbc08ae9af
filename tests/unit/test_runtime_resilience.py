"""A failing Tick or effect is logged and counted; the runtime's timer and executor go on."""

from __future__ import annotations

import asyncio

import pytest

from mesh.effects import Effect, Send
from mesh.inputs import Input, Tick
from mesh.runtime import NodeRuntime


class FlakyNode:
    """Due at once; its first Tick raises, later ones are recorded."""

    def __init__(self) -> None:
        self.ticks = 0
        self.done = asyncio.Event()

    def next_deadline(self) -> float:
        return 0.0

    def handle(self, event: Input, now: float) -> list[Effect]:
        assert isinstance(event, Tick)
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("a bug in a timer")
        if self.ticks == 3:
            self.done.set()
        return []


class BrokenTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        if frame == b"boom":
            raise RuntimeError("a bug in the transport")
        self.sent.append(frame)
        return True


async def test_the_timer_survives_a_tick_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    node = FlakyNode()
    runtime = NodeRuntime(node, None, None)  # type: ignore[arg-type]
    await runtime.start()
    try:
        await asyncio.wait_for(node.done.wait(), timeout=10)
    finally:
        await runtime.close()
    assert runtime.stats.tick_failures == 1
    assert "Node.handle(Tick) failed" in caplog.text


async def test_the_executor_survives_an_effect_that_raises() -> None:
    transport = BrokenTransport()
    runtime = NodeRuntime(None, None, transport)  # type: ignore[arg-type]
    runtime._queue.put_nowait(([Send("p", b"boom")], None))
    runtime._queue.put_nowait(([Send("p", b"after")], None))
    runtime._queue.put_nowait(None)
    await asyncio.wait_for(runtime._execute(), timeout=10)
    assert transport.sent == [b"after"]
    assert runtime.stats.effect_failures == 1
