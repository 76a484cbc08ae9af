"""Child of the net benchmark: `memmesh run` with timestamps taken inside the daemon.

Usage: ``python -m bench._net_daemon run --data-dir D --interface IP ...`` (the arguments
of `memmesh run`, passed to `mesh.cli.main` unchanged).

The daemon is the production one (`mesh.daemon.Daemon`, same CLI, same Node, store and
transport). Before it starts, thin wrappers are put around six production functions; each
appends ``(time.time_ns(), kind, ...)`` to an in-memory trace and then calls the original:

==========  ===================================================  ============================
kind        taken when                                           fields
==========  ===================================================  ============================
write       `NodeRuntime.submit(WriteRequested)` is entered       first id, items, priority
handled     that `submit` returned (Node.handle done, queued)      first id
send        `WebRtcTransport.send` is entered (a Send effect)      msg type, bytes, urgent, flags
frame       `NodeRuntime.frame` is entered (aiortc delivered it)   msg type, bytes, peer, flags
applied     `TieredMemory.apply_remote` returned: readable by get  tier, items, first id
emit        `Mesh.notify` (after the commit): a subscriber wakes   remote items, first id
link_up     `NodeRuntime.link_up`                                  peer, process CPU s (os.times)
==========  ===================================================  ============================

All processes of one machine share CLOCK_REALTIME, so these times compare directly with
each other's and with the benchmark process's `time.time_ns()` (network namespaces do not
virtualise clocks). A wrapper costs about a microsecond.

MM_BENCH_WHAT_IF=swim-urgent (an experiment, never a production figure) also sends the
SWIM frames (PING, PING_REQ, PING_ACK) on the urgent channel, as if the Node gave them an
urgent priority.

One extra control op, ``{"op": "bench", "action": ...}``, serves the benchmark:
``trace`` (records from index `since`, plus running totals), ``put_many`` (write generated
items through `Mesh.put_many`, as an in-process client would), ``counters`` (node and
transport counters, item counts), ``profile`` (with MM_BENCH_PROFILE set: dump the cProfile
of the phase that just ended to `dump` and start the next one).
"""

from __future__ import annotations

import cProfile
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from bench.data import content_for, item_id
from crdt.memory import NewItem, TieredMemory
from mesh import daemon as daemon_module
from mesh.api import Mesh
from mesh.frames import HEADER_SIZE, MsgType, Priority
from mesh.inputs import WriteRequested
from mesh.runtime import NodeRuntime
from mesh.webrtc import WebRtcTransport

PROCESS_START_NS = time.time_ns()  # after the interpreter started and imported the above

SWIM_TYPES = frozenset({"PING", "PING_REQ", "PING_ACK"})  # for MM_BENCH_WHAT_IF=swim-urgent
TRACE: list[tuple[Any, ...]] = []
APPLIED: Counter[str] = Counter()  # tier -> items changed by remote updates
LAST_APPLIED_NS: dict[str, int] = {}


def _msg_type(data: bytes) -> str:
    if len(data) < HEADER_SIZE:
        return "?"
    code = int.from_bytes(data[8:10], "big")
    try:
        return MsgType(code).name
    except ValueError:
        return hex(code)


def _flags(data: bytes) -> int:
    return int.from_bytes(data[10:12], "big") if len(data) >= HEADER_SIZE else 0


def _install() -> None:
    submit, runtime_frame, link_up = NodeRuntime.submit, NodeRuntime.frame, NodeRuntime.link_up
    send, apply_remote, notify = WebRtcTransport.send, TieredMemory.apply_remote, Mesh.notify

    def traced_submit(self: NodeRuntime, event: Any) -> None:
        if isinstance(event, WriteRequested) and event.puts:
            first = event.puts[0].id
            TRACE.append((time.time_ns(), "write", first, len(event.puts), event.priority.name))
            submit(self, event)
            TRACE.append((time.time_ns(), "handled", first))
            return
        submit(self, event)

    def traced_frame(self: NodeRuntime, peer_id: str, data: bytes) -> None:
        TRACE.append((time.time_ns(), "frame", _msg_type(data), len(data), peer_id, _flags(data)))
        runtime_frame(self, peer_id, data)

    def traced_link_up(self: NodeRuntime, peer_id: str, address: str = "") -> None:
        cpu = os.times()  # the whole process: every thread
        TRACE.append((time.time_ns(), "link_up", peer_id, cpu.user + cpu.system))
        link_up(self, peer_id, address)

    swim_urgent = os.environ.get("MM_BENCH_WHAT_IF") == "swim-urgent"

    def traced_send(
        self: WebRtcTransport, peer_id: str, frame: bytes, *, urgent: bool = False
    ) -> bool:
        if swim_urgent and _msg_type(frame) in SWIM_TYPES:
            urgent = True
        TRACE.append((time.time_ns(), "send", _msg_type(frame), len(frame), urgent, _flags(frame)))
        return send(self, peer_id, frame, urgent=urgent)

    def traced_apply(self: TieredMemory, tier: str, update: bytes, now_ms: int) -> Any:
        change = apply_remote(self, tier, update, now_ms)
        now = time.time_ns()
        ids = {e.item_id for e in change.events}
        if ids:
            APPLIED[tier] += len(ids)
            LAST_APPLIED_NS[tier] = now
            first = change.events[0].item_id
            TRACE.append((now, "applied", tier, len(ids), first))
        return change

    def traced_notify(self: Mesh, events: Any) -> None:
        remote = [e for e in events if e.origin == "remote"]
        if remote:
            TRACE.append((time.time_ns(), "emit", len(remote), remote[0].item_id))
        notify(self, events)

    NodeRuntime.submit = traced_submit  # type: ignore[method-assign]
    NodeRuntime.frame = traced_frame  # type: ignore[method-assign]
    NodeRuntime.link_up = traced_link_up  # type: ignore[method-assign]
    WebRtcTransport.send = traced_send  # type: ignore[method-assign]
    TieredMemory.apply_remote = traced_apply  # type: ignore[method-assign]
    Mesh.notify = traced_notify  # type: ignore[method-assign]


class TracedDaemon(daemon_module.Daemon):
    """The production daemon plus the `bench` control op."""

    def handle(self, request: dict[str, Any]) -> Awaitable[Any]:
        """Serve `bench` requests here; everything else as the production daemon does."""
        if request.get("op") != "bench":
            return super().handle(request)  # a put reaches the node before this returns
        return self._bench(request)

    async def _bench(self, request: dict[str, Any]) -> Any:
        action = request.get("action")
        if action == "trace":
            since = int(request.get("since", 0))
            return {
                "records": TRACE[since:],
                "next": len(TRACE),
                "applied": dict(APPLIED),
                "last_applied_ns": dict(LAST_APPLIED_NS),
                "process_start_ns": PROCESS_START_NS,
            }
        if action == "put_many":
            return await self._put_many(request)
        if action == "counters":
            return self._counters()
        if action == "profile":
            return _profile_phase(str(request["dump"]))
        raise ValueError(f"unknown bench action {action!r}")

    async def _put_many(self, request: dict[str, Any]) -> dict[str, Any]:
        mesh = self.mesh
        assert mesh is not None
        tier, prefix = str(request["tier"]), str(request["prefix"])
        start, count, batch = int(request["start"]), int(request["count"]), int(request["batch"])
        priority = Priority[str(request.get("priority", "NORMAL")).upper()]
        began = time.time_ns()
        for first in range(start, start + count, batch):
            n = min(batch, start + count - first)
            items = [
                NewItem(tier=tier, content=content_for(i), id=item_id(prefix, i))
                for i in range(first, first + n)
            ]
            await mesh.put_many(items, priority=priority)
        return {"began_ns": began, "ended_ns": time.time_ns()}

    def _counters(self) -> dict[str, Any]:
        runtime, transport, mesh = self.runtime, self.transport, self.mesh
        assert runtime is not None and transport is not None and mesh is not None
        return {
            "node": {
                k: v
                for k, v in dataclasses.asdict(runtime.node.counters).items()
                if not isinstance(v, dict)
            },
            "links": {p: dataclasses.asdict(i) for p, i in transport.links().items()},
            "items": {t: mesh.memory.count(t) for t in mesh.memory.tiers},
            "time_ns": time.time_ns(),
        }


PROFILER: list[cProfile.Profile] = []  # the active profiler, when profiling


def _profile_phase(dump: str) -> dict[str, Any]:
    """Dump the running profile to `dump` and start the next phase's (main thread only)."""
    if not PROFILER:
        return {"profiling": False}
    profiler = PROFILER.pop()
    profiler.disable()
    profiler.dump_stats(dump)
    fresh = cProfile.Profile()
    PROFILER.append(fresh)
    fresh.enable()
    return {"profiling": True, "dumped": dump}


def main(argv: list[str]) -> int:
    """Run `memmesh run` with the traced daemon; under cProfile if MM_BENCH_PROFILE is set.

    With MM_BENCH_PROFILE=PATH the profile runs from here; the `profile` bench action dumps
    it per phase, and what follows the last phase is dumped to PATH at exit.
    """
    _install()
    daemon_module.Daemon = TracedDaemon  # type: ignore[misc]
    from mesh.cli import main as cli_main

    profile_to = os.environ.get("MM_BENCH_PROFILE")
    if not profile_to:
        return cli_main(argv)
    PROFILER.append(cProfile.Profile())
    PROFILER[0].enable()
    try:
        return cli_main(argv)
    finally:
        last = PROFILER.pop()
        last.disable()
        last.dump_stats(profile_to)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
