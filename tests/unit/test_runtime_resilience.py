"""A failing Tick or effect is logged and counted; the runtime's timer and executor go on."""

from __future__ import annotations

import asyncio

import pytest

from mesh import runtime as runtime_module
from mesh.effects import Effect, Send, WriteAcked
from mesh.inputs import Input, Tick
from mesh.runtime import ForwardClock, NodeRuntime, WriteError


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


class AlwaysFailingTicks:
    """Always due, and every Tick raises."""

    def __init__(self) -> None:
        self.ticks = 0

    def next_deadline(self) -> float:
        return 0.0

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.ticks += 1
        raise RuntimeError("a bug in a timer")


async def test_a_tick_that_keeps_raising_does_not_spin_the_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the deadline stayed due, so the timer retried at once, forever (73,000
    logged tracebacks a second at full CPU)."""
    monkeypatch.setattr(runtime_module, "TICK_RETRY_S", 0.2)
    node = AlwaysFailingTicks()
    runtime = NodeRuntime(node, None, None)  # type: ignore[arg-type]
    await runtime.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        await runtime.close()
    assert 1 <= node.ticks <= 4  # one attempt per pause, not thousands


async def test_a_write_whose_effects_raise_fails_instead_of_hanging() -> None:
    transport = BrokenTransport()
    runtime = NodeRuntime(None, None, transport)  # type: ignore[arg-type]
    request_id, answer = runtime.new_request_id()
    runtime._queue.put_nowait(([Send("p", b"boom"), WriteAcked(request_id, ())], request_id))
    runtime._queue.put_nowait(None)
    await asyncio.wait_for(runtime._execute(), timeout=10)
    with pytest.raises(WriteError, match="internal error") as failed:
        await asyncio.wait_for(answer, timeout=1)
    assert failed.value.applied is True


def test_the_runtime_clock_absorbs_a_backward_step_of_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: with time.time, a step an hour back left every Node deadline an hour away."""
    wall, mono = [1_000_000.0], [50.0]
    monkeypatch.setattr(runtime_module.time, "time", lambda: wall[0])
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: mono[0])
    clock = ForwardClock()
    assert clock() == 1_000_000.0
    wall[0] -= 3600.0  # NTP steps the clock back an hour ...
    mono[0] += 2.0  # ... while 2 s really pass
    assert clock() == 1_000_002.0
    wall[0] += 3610.0  # back past where we were: the wall clock leads again
    mono[0] += 1.0
    assert clock() == 1_000_010.0
    wall[0] += 60.0  # a forward step is followed at once
    assert clock() == 1_000_070.0
