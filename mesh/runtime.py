"""The asyncio driver of the sans-IO Node: timers, transport, discovery and the store.

Every input goes through `submit`, which calls `Node.handle` and queues the effects (an
import too: `ImportRequested`). One executor task carries
them out strictly in order; a `Persist` is committed before any
later effect runs, so nothing is acknowledged before it is durable. The one exception:
urgent (CRITICAL/EMERGENCY) Sends of a change with no new HLC ceiling go out while its
commit starts (`_send_urgent_during_commit` says why that loses nothing acknowledged).
While a failed commit waits for its retry, frames that carry replica data are held and
sent once it succeeds (`_send`); membership, hub and lease traffic flows meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crdt.events import MemoryEvent
from mesh.committer import GroupCommitter
from mesh.effects import (
    Connect,
    Disconnect,
    Effect,
    Emit,
    LeaseAnswered,
    Log,
    Persist,
    QueryAnswered,
    Send,
    WriteAcked,
    WriteFailed,
)
from mesh.frames import Priority, carries_replica_data
from mesh.gc_pause import cyclic_gc_paused
from mesh.inputs import (
    FrameReceived,
    ImportRequested,
    Input,
    Leaving,
    LinkDown,
    LinkUp,
    PeerFound,
    PeerLost,
    Tick,
    WriteRequested,
)
from mesh.node import Node
from mesh.ports import Transport

log = logging.getLogger("memmesh.runtime")
LEAVE_GRACE_S = 0.1  # time the transport gets to send the goodbyes before it closes
TICK_RETRY_S = 0.5  # after Node.handle(Tick) raised, the next Tick waits this long
HELD_MAX_BYTES = 64 << 20  # frames held while a commit fails; beyond, anti-entropy repairs


class WriteError(Exception):
    """A write failed; `applied=True` means it took effect here anyway: do not write it again.

    Applied: reads on this node see it and it replicates. It is committed locally, or, if
    its commit failed ("commit failed"), held in memory and in the committer's backlog,
    which is retried before the next commit, when idle and at close; it is lost locally
    only if the process ends before a retry succeeds. Not applied: nothing was written.
    """

    def __init__(self, reason: str, *, applied: bool) -> None:
        """Carry the node's reason and whether the write took effect on this node."""
        super().__init__(reason)
        self.applied = applied


@dataclass(slots=True)
class PeerAddress:
    """Where a peer's signaling endpoint is, as discovery last saw it."""

    address: str
    port: int
    tiers: tuple[str, ...] = ()


@dataclass(slots=True)
class RuntimeStats:
    """What the runtime saw happen (for `memmesh peers` and logs)."""

    effects_run: int = 0
    persist_failures: int = 0
    connect_failures: int = 0
    frames_not_sent: int = 0
    frames_held: int = 0  # replica data held back while a failed commit awaited its retry
    held_dropped: int = 0  # of those, dropped over HELD_MAX_BYTES (anti-entropy repairs)
    tick_failures: int = 0  # Node.handle(Tick) raised (a bug; logged with its traceback)
    effect_failures: int = 0  # running a list of effects raised (likewise)
    last_sync: dict[tuple[str, str], float] = field(default_factory=dict)


class ForwardClock:
    """Unix time that never goes back: a backward step of the wall clock is absorbed.

    The Node's timers are deadlines on this clock: after an NTP step, a VM resume or
    `date -s` an hour back, `time.time` left every deadline an hour away, and the node sent
    no SWIM ping, flush or heartbeat meanwhile. This clock then runs on with the monotonic
    clock until the wall clock catches up; it follows forward steps (the HLC needs them).
    """

    def __init__(self) -> None:
        """Start at the current wall time."""
        self._last = time.time()
        self._mono = time.monotonic()

    def __call__(self) -> float:
        """Return max(wall time, the last reading plus the monotonic time since)."""
        wall, mono = time.time(), time.monotonic()
        now = max(wall, self._last + (mono - self._mono))
        self._last, self._mono = now, mono
        return now


class NodeRuntime:
    """Runs one Node on the event loop; use `async with` (or start/close)."""

    def __init__(
        self,
        node: Node,
        committer: GroupCommitter,
        transport: Transport,
        *,
        on_events: Any = None,
        clock: Any = None,
    ) -> None:
        """Wire a node to its store (through the committer) and its transport."""
        self.node = node
        self._committer = committer
        self._transport = transport
        self._on_events = on_events
        self._clock = ForwardClock() if clock is None else clock
        # Each entry: one input's effects, and the request id when the input was a write.
        self._queue: asyncio.Queue[tuple[list[Effect], int | None] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while no effects are queued or running
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._connects: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._held: list[Send] = []  # in order; see `_send`
        self._held_bytes = 0
        self._release: asyncio.Task[None] | None = None
        self._next_request = 1
        self.addresses: dict[str, PeerAddress] = {}
        self.stats = RuntimeStats()
        self._closed = False

    async def __aenter__(self) -> NodeRuntime:
        """Start the timer and effect tasks."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the tasks, flushing effects already queued."""
        await self.close()

    async def start(self) -> None:
        """Start the executor and the timer."""
        self._tasks = [
            asyncio.create_task(self._execute(), name="memmesh-effects"),
            asyncio.create_task(self._timer(), name="memmesh-timer"),
        ]

    def tick(self) -> None:
        """Hand the node a Tick now: its timers start with its first input.

        A node that never hears from a peer gets no other input, so the daemon ticks it
        once after a discovery grace period (a lone node then claims the hub role).
        """
        self.submit(Tick())

    async def close(self) -> None:
        """Tell peers we leave, run queued effects, then stop; pending writes fail (WriteError)."""
        if self._closed:
            return
        said_goodbye = False
        if self._tasks:
            try:  # members stop probing us, and a hub's successor is elected at once
                self.submit(Leaving())
            except Exception:  # a goodbye that fails must not keep the node from stopping
                log.exception("could not announce leaving")
            else:
                said_goodbye = bool(self.node.links)
        self._closed = True
        for task in self._connects.values():
            task.cancel()
        await self._queue.put(None)
        executor, timer = self._tasks or (None, None)
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if executor is not None:
            await executor
        if said_goodbye:
            await asyncio.sleep(LEAVE_GRACE_S)  # the transport sends them in tasks of its own
        if self._release is not None:
            self._release.cancel()
        if self._held:  # the store never recovered: what they carry is not durable here
            log.warning("%d held frame(s) not sent: the store kept failing", len(self._held))
            self._held, self._held_bytes = [], 0
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(WriteError("node stopped", applied=True))

    def now(self) -> float:
        """Return the clock the Node is driven with (Unix seconds unless a test injects one)."""
        return float(self._clock())

    def wall_time(self, node_time: float) -> float:
        """Return the Unix time of `node_time`, a reading of the Node's clock."""
        return time.time() - (self.now() - node_time)

    # ----------------------------------------------------------------- inputs

    def submit(self, event: Input) -> None:
        """Hand an input to the node now and queue its effects (never blocks)."""
        if self._closed:
            return
        # One input is bounded work (at most one sync slice, ~1,000 items) that makes tens of
        # thousands of objects; the collector's full passes would walk the whole replica.
        with cyclic_gc_paused():
            effects = self.node.handle(event, self._clock())
        if effects:
            write = (
                event.request_id if isinstance(event, WriteRequested | ImportRequested) else None
            )
            self._queue.put_nowait((effects, write))
            self._idle.clear()
        self._wake.set()

    @property
    def closed(self) -> bool:
        """Return True once `close()` has begun: inputs are ignored from then on."""
        return self._closed

    def new_request_id(self) -> tuple[int, asyncio.Future[Any]]:
        """Return a request id and the future its answer (WriteAcked, LeaseAnswered...) resolves."""
        request_id = self._next_request
        self._next_request += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return request_id, future

    def peer_found(self, peer_id: str, address: str, port: int, tiers: Sequence[str]) -> None:
        """Discovery saw a peer (or its new address)."""
        self.addresses[peer_id] = PeerAddress(address, port, tuple(tiers))
        self.submit(PeerFound(peer_id, f"{address}:{port}", tuple(tiers)))

    def peer_lost(self, peer_id: str) -> None:
        """Discovery no longer sees a peer."""
        self.submit(PeerLost(peer_id))

    def link_up(self, peer_id: str, address: str = "") -> None:
        """The transport opened a link."""
        self.submit(LinkUp(peer_id))

    def link_down(self, peer_id: str) -> None:
        """The transport lost a link."""
        self.submit(LinkDown(peer_id))

    def frame(self, peer_id: str, data: bytes) -> None:
        """The transport delivered a frame."""
        self.submit(FrameReceived(peer_id, data))

    # ----------------------------------------------------------------- loops

    async def _timer(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the wake-up, and this loop would then never end (seen at shutdown).
        while not self._closed:
            deadline = self.node.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, deadline - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, 1.0)):
                    await self._wake.wait()
            deadline = self.node.next_deadline()
            if deadline is not None and self._clock() >= deadline:
                try:
                    self.submit(Tick())
                except Exception:  # a bug must not stop every timer of the node for good
                    self.stats.tick_failures += 1
                    log.exception("Node.handle(Tick) failed; timers go on")
                    # Its deadline is still due: without a pause this loop would spin,
                    # logging the failure tens of thousands of times a second.
                    await asyncio.sleep(TICK_RETRY_S)

    async def _execute(self) -> None:
        while True:
            entry = await self._queue.get()
            if entry is None:
                self._idle.set()
                return
            effects, write = entry
            try:
                await self._run(effects, write)
            except Exception:  # one failing effect must not stop every later one
                self.stats.effect_failures += 1
                log.exception("running %d effect(s) failed; the executor goes on", len(effects))
                if write is not None:  # its WriteAcked may be among the effects not run
                    reason = "internal error while storing or sending it (see the daemon log)"
                    self._reject(write, WriteError(reason, applied=True))
            finally:
                if self._queue.empty():
                    self._idle.set()

    @property
    def idle(self) -> bool:
        """True while no input's effects are queued or running (every Persist handed over)."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once no input's effects are queued or running."""
        await self._idle.wait()

    async def _run(self, effects: list[Effect], write: int | None = None) -> None:
        """Carry out one input's effects in order; `write` is its request id for a write."""
        if self._held:
            self._send_held()
        early: set[int] = set()  # indices of urgent Sends already made during a commit
        for index, effect in enumerate(effects):
            if index in early:
                continue
            self.stats.effects_run += 1
            if isinstance(effect, Persist):
                # Urgent sends first: aiortc flushes a send in a task of its own, which then
                # runs before the commit's task instead of after it. Not while an earlier
                # change is not durable (a failed one, even while its retry runs): the
                # clock ceiling it may carry is not on disk yet.
                committer = self._committer
                if effect.change.ceiling_ms is None and not (
                    committer.failing or committer.backlog
                ):
                    early |= self._send_urgent_during_commit(effects, index)
                commit = asyncio.ensure_future(self._committer.commit(effect.change))
                try:
                    await commit
                except Exception as exc:  # a full disk: nothing after it may run
                    self.stats.persist_failures += 1
                    log.error("commit failed, %d effect(s) withheld: %s", len(effects), exc)
                    reason = f"commit failed (kept in memory, retried): {exc}"
                    self._fail_writes(effects[index + 1 :], reason)
                    if write is not None:  # a `peer`/`hub`/`all` write acks later: fail it now
                        self._reject(write, WriteError(reason, applied=True))
                    return
                if self._held:
                    self._send_held()
            elif isinstance(effect, Send):
                self._send(effect)
            elif isinstance(effect, Emit):
                self._emit(effect.events)
            elif isinstance(effect, WriteAcked):
                self._resolve(effect.request_id, effect)
            elif isinstance(effect, WriteFailed):
                self._reject(effect.request_id, WriteError(effect.reason, applied=effect.applied))
            elif isinstance(effect, QueryAnswered | LeaseAnswered):
                self._resolve(effect.request_id, effect)
            elif isinstance(effect, Connect):
                self._start_connect(effect.peer_id)
            elif isinstance(effect, Disconnect):
                self._transport.disconnect(effect.peer_id)
            elif isinstance(effect, Log):
                level = logging.WARNING if effect.level == "warning" else logging.INFO
                log.log(level, "%s %s", effect.message, effect.fields)

    def _send_urgent_during_commit(self, effects: list[Effect], persist: int) -> set[int]:
        """Make the urgent Sends after `effects[persist]` (up to the next Persist) now, uncommitted.

        Durability holds: WriteAcked and every other effect still wait for the commit. A
        crash after such a send but before the commit loses nothing acknowledged; the peers
        that got the update give it back, and the restarted node writes under a new Yjs
        client id (mesh/api.py), so the lost local copy never collides. Only a change with
        no new HLC ceiling qualifies: its timestamps are below a ceiling already on disk,
        so the restarted clock stays above everything sent.
        """
        made: set[int] = set()
        for index in range(persist + 1, len(effects)):
            effect = effects[index]
            if isinstance(effect, Persist):
                break
            if isinstance(effect, Send) and effect.priority >= Priority.CRITICAL:
                self.stats.effects_run += 1
                self._send(effect)
                made.add(index)
        return made

    def _send(self, effect: Send) -> None:
        """Send a frame; while a failed commit awaits its retry, hold replica data back.

        Such a frame may carry that change (the outbox, answers built from memory) and its
        clock ceiling, which is not on disk: a crash would restart the clock below a
        timestamp sent. Held frames go out in order once a commit succeeds. Membership,
        claims, stats and leases carry no replica data and flow (peers would declare us
        dead).
        """
        if carries_replica_data(effect.frame) and self._committer.failing:
            self._hold(effect)
            return
        if self._held:
            self._send_held()  # kept while still failing: this frame carries no replica data
        self._transmit(effect)

    def _hold(self, effect: Send) -> None:
        if self._held_bytes + len(effect.frame) > HELD_MAX_BYTES:
            self.stats.held_dropped += 1
            if self.stats.held_dropped % 100 == 1:
                log.warning(
                    "store failing: a frame to %s dropped, %d bytes already held (%d so far)",
                    effect.peer_id,
                    self._held_bytes,
                    self.stats.held_dropped,
                )
            return
        self._held.append(effect)
        self._held_bytes += len(effect.frame)
        self.stats.frames_held += 1
        self._watch_recovery()

    def _watch_recovery(self) -> None:
        if self._release is None or self._release.done():
            self._release = asyncio.create_task(self._wake_on_recovery(), name="memmesh-held")

    async def _wake_on_recovery(self) -> None:
        """Wake the executor once the committer recovers (its own retry, with no new input)."""
        await self._committer.recovered()
        if not self._closed:
            self._queue.put_nowait(([], None))  # `_run` sends the held frames first
            self._idle.clear()

    def _send_held(self) -> None:
        """Send the held frames in order if no failed commit waits any more; else keep them."""
        if self._committer.failing:
            self._watch_recovery()  # it may have failed again since the last wake
            return
        held, self._held, self._held_bytes = self._held, [], 0
        for effect in held:
            self._transmit(effect)

    def _transmit(self, effect: Send) -> None:
        sent = self._transport.send(
            effect.peer_id, effect.frame, urgent=effect.priority >= Priority.CRITICAL
        )
        if not sent:
            # No link or a full queue: anti-entropy repairs what this frame carried. Sliced
            # initial syncs keep the queue far below its bound, so say it.
            self.stats.frames_not_sent += 1
            if self.stats.frames_not_sent % 100 == 1:  # pings to a dead peer repeat
                log.warning(
                    "frame of %d bytes to %s not sent (no link or queue full; %d so far)",
                    len(effect.frame),
                    effect.peer_id,
                    self.stats.frames_not_sent,
                )

    def _emit(self, events: tuple[MemoryEvent, ...]) -> None:
        now = self._clock()
        for event in events:
            if event.origin == "remote":
                self.stats.last_sync[(event.author, event.tier)] = now
        if self._on_events is not None:
            self._on_events(events)

    def _fail_writes(self, effects: Sequence[Effect], reason: str) -> None:
        """Fail the writes acked in `effects`: applied, since the committer retries the change."""
        for effect in effects:
            if isinstance(effect, WriteAcked):
                self._reject(effect.request_id, WriteError(reason, applied=True))

    def _resolve(self, request_id: int, value: Any) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(value)

    def _reject(self, request_id: int, exc: Exception) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_exception(exc)

    def _start_connect(self, peer_id: str) -> None:
        where = self.addresses.get(peer_id)
        running = self._connects.get(peer_id)
        if where is None or (running is not None and not running.done()):
            if where is None:
                self.submit(LinkDown(peer_id))
            return

        async def dial() -> None:
            try:
                await self._transport.connect(peer_id, where.address, where.port)
            except Exception as exc:
                self.stats.connect_failures += 1
                log.info(
                    "connect to %s at %s:%d failed: %s", peer_id, where.address, where.port, exc
                )
                self.submit(LinkDown(peer_id))

        self._connects[peer_id] = asyncio.create_task(dial(), name=f"memmesh-dial-{peer_id}")
