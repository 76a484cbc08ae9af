"""The runtime overlaps urgent sends with their commit only where that is safe."""

from __future__ import annotations

import asyncio

import pytest

from crdt.memory import Change
from mesh.effects import Effect, Persist, Send, WriteAcked
from mesh.frames import Priority
from mesh.runtime import NodeRuntime, WriteError
from mesh.store import StoreFullError


class SlowCommitter:
    """Commits only when the test releases it; records what happened in `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.release = asyncio.Event()
        self.backlog = 0  # no earlier change waits for its commit
        self.failing = False  # no earlier commit failed (its retry may be running)

    async def commit(self, change: Change) -> None:
        self.log.append("commit started")
        await self.release.wait()
        self.log.append("committed")


class Recorder:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        self.log.append(f"send {frame.decode()}")
        return True


def run(effects: list[Effect], *, backlog: int = 0, failing: bool = False) -> list[str]:
    """Run one effect list; release the commit once the loop is idle; return the log."""
    log: list[str] = []

    async def main() -> None:
        committer = SlowCommitter(log)
        committer.backlog = backlog
        committer.failing = failing
        runtime = NodeRuntime(None, committer, Recorder(log))  # type: ignore[arg-type]
        _request, acked = runtime.new_request_id()
        acked.add_done_callback(lambda _f: log.append("acked"))
        task = asyncio.create_task(runtime._run(effects))
        for _ in range(5):
            await asyncio.sleep(0)
        log.append("disk done")
        committer.release.set()
        await task
        await asyncio.sleep(0)

    asyncio.run(main())
    return log


def write(ceiling: int | None, priority: Priority) -> list[Effect]:
    change = Change(updates=(("L1", b"update"),), ceiling_ms=ceiling)
    return [
        Persist(change),
        WriteAcked(1, ()),
        Send("peer", b"update", priority),
        Persist(Change(updates=(("L1", b"later"),))),
        Send("peer", b"later", priority),
    ]


def test_an_urgent_send_goes_out_during_its_commit_but_the_ack_waits() -> None:
    log = run(write(None, Priority.CRITICAL))
    assert log.index("send update") < log.index("disk done") < log.index("acked")
    assert log.index("committed") < log.index("acked")
    # A Send after a later Persist still waits for the first commit.
    assert log.index("send later") > log.index("committed")


def test_a_change_with_a_new_clock_ceiling_is_committed_before_it_is_sent() -> None:
    log = run(write(1_000, Priority.CRITICAL))
    assert log.index("committed") < log.index("send update")


def test_normal_sends_wait_for_the_commit() -> None:
    log = run(write(None, Priority.NORMAL))
    assert log.index("committed") < log.index("send update")
    assert log.count("send update") == 1


def test_each_urgent_frame_is_sent_once() -> None:
    log = run(write(None, Priority.EMERGENCY))
    assert log.count("send update") == 1 and log.count("send later") == 1


def test_no_urgent_send_before_its_commit_while_an_earlier_commit_waits_for_a_retry() -> None:
    # The earlier, failed change may carry the clock ceiling that makes an early send safe.
    log = run(write(None, Priority.CRITICAL), backlog=1)
    assert log.index("committed") < log.index("send update")


def test_no_urgent_send_before_its_commit_while_a_failed_commits_retry_runs() -> None:
    # The retry took the backlog to the store thread (backlog reads 0): still not durable.
    log = run(write(None, Priority.CRITICAL), failing=True)
    assert "send update" not in log[: log.index("committed")]


class FailingCommitter:
    backlog = 0
    failing = False

    async def commit(self, change: Change) -> None:
        raise StoreFullError("disk full")


def test_a_write_whose_commit_fails_is_failed_at_once_even_if_its_ack_comes_later() -> None:
    async def main() -> WriteError:
        runtime = NodeRuntime(None, FailingCommitter(), Recorder([]))  # type: ignore[arg-type]
        request, answer = runtime.new_request_id()
        # A `peer` write: its WriteAcked would come in a later effect list, after an ack.
        await runtime._run([Persist(Change(updates=(("L1", b"u"),))), Send("p", b"u")], request)
        with pytest.raises(WriteError) as failed:
            await answer
        return failed.value

    error = asyncio.run(main())
    # Applied: the change stays in memory and the committer retries it.
    assert error.applied is True and "disk full" in str(error)
