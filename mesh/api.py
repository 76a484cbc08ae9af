"""`Mesh`: the public asyncio API over one node's durable tiered memory.

This is an adapter: it owns the clock, the randomness for ids, and the SQLite store
(through the group committer's thread); all memory logic lives in `crdt.memory`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from crdt.config import MemoryConfig
from crdt.events import EventKind, EventLog, MemoryEvent, Subscription
from crdt.hlc import HybridLogicalClock
from crdt.item import MemoryItem
from crdt.memory import Change, NewItem, TieredMemory
from crdt.search import SearchHit
from mesh.committer import GroupCommitter
from mesh.effects import WriteAcked
from mesh.frames import Priority
from mesh.gc_pause import cyclic_gc_paused
from mesh.identity import NodeIdentity
from mesh.inputs import AckLevel, ImportRequested, WriteRequested
from mesh.leases import LeaseRequest
from mesh.leases import release as release_lease
from mesh.store import (
    SqliteStore,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    TierStoreStats,
)

if TYPE_CHECKING:
    from mesh.runtime import NodeRuntime

COMPACT_AFTER_ROWS = 2_000
# Rows x dimensions from which a search is scored on its thread: about 0.3 ms of matmul.
SEARCH_OFF_LOOP_ELEMENTS = 1 << 21
log = logging.getLogger("memmesh.mesh")
_USED_CLIENT_IDS = "yjs_client_ids_used"
# Yjs client ids of the latest opens, oldest first. An id whose updates were committed
# needs no entry: it is in the tier's state vector, and yrs continues its clock. The list
# covers an id whose updates left the process (an urgent send) before a crash lost them,
# until peers return them; 1,000 opens is ample for that and keeps every open cheap.
_USED_CLIENT_IDS_KEPT = 3_000


def wall_ms() -> int:
    """Return the physical time in milliseconds (the only clock read of the node)."""
    return time.time_ns() // 1_000_000


def _has_many_rows(stats: TierStoreStats) -> bool:
    """Return True when a tier's update log is worth folding at close."""
    return stats.rows > COMPACT_AFTER_ROWS


def _log_outgrew_snapshot(stats: TierStoreStats) -> bool:
    """Return True when a tier's log is long and at least half its snapshot's size."""
    return _has_many_rows(stats) and 2 * stats.update_bytes >= stats.snapshot_bytes


def new_item_id() -> str:
    """Return a fresh random item id."""
    return uuid.uuid4().hex


class Mesh:
    """One node's tiered memory, durable in `data_dir`; use as `async with Mesh.open(d)`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        config: MemoryConfig | None = None,
    ) -> None:
        """Prepare a node on `data_dir`; nothing is read until `start()` (or `async with`)."""
        self.data_dir = Path(data_dir)
        self.config = config or MemoryConfig.default()
        self._memory: TieredMemory | None = None
        self._committer: GroupCommitter | None = None
        self._identity: NodeIdentity | None = None
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()
        self._durable_events = 0  # the highest event seq known committed (kept after close)
        self._runtime: NodeRuntime | None = None
        self._blocking_streams: set[Subscription] = set()
        self._search_turn = asyncio.Lock()  # one search planned and scored at a time
        self._searcher: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, data_dir: Path | str, *, config: MemoryConfig | None = None) -> Mesh:
        """Return a node for `data_dir`, to be entered with `async with`."""
        return cls(Path(data_dir), config=config)

    async def __aenter__(self) -> Self:
        """Open the store, load every tier and return the started node."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flush pending commits and close the store."""
        await self.close()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open (or create) the data directory and load the persisted state."""
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(None, SqliteStore.open, self.data_dir)
        try:
            self._identity = await loop.run_in_executor(
                None, NodeIdentity.load_or_create, self.data_dir
            )
            self._committer = GroupCommitter(store, on_events=self._events_committed)
            memory, open_meta = await self._committer.run(self._load)
            self._memory = memory
            # Restored events are on disk; the committer reports later ones as they commit.
            self._durable_events = self._committer.events_committed = memory.events.last_seq
            try:
                await self._committer.run(lambda s: s.commit(meta=open_meta))
            except StoreFullError as exc:
                # Reads need nothing written: open anyway. The new client ids and clock
                # ceiling go first into the next commit, and nothing that depends on them
                # (a write, an urgent send, replica data) leaves before it succeeds.
                log.warning("%s; opened with writes waiting for space", exc)
                self._committer.carry_meta(open_meta)
        except BaseException:
            if self._committer is not None:
                await self._committer.close()
            store.close()
            raise
        if not self._committer.failing:  # else they wait: a read must leave no write behind
            collected = memory.collect_tombstones(wall_ms())
            # On a full disk it waits in the backlog, retried with the next write; if
            # nothing else is written, close drops it (the next open collects again).
            with contextlib.suppress(StoreFullError):
                await self._running().commit(collected, droppable=True)

    def _load(self, store: SqliteStore) -> tuple[TieredMemory, dict[str, str]]:
        """Build the memory core from the store (runs on the store thread); write nothing.

        Returns it with the meta rows to persist before any write: the new Yjs client ids,
        the clock ceiling and the node id. Raises StoreCorruptError naming the file if what
        the database holds cannot be read (metadata, events, update rows).
        """
        try:
            return self._load_from(store)
        except StoreError:
            raise
        except (ValueError, TypeError) as exc:  # includes CorruptUpdateError, JSON errors
            raise StoreCorruptError(
                f"{store.path}: cannot load the node's state, left as is: {exc}"
            ) from exc

    def _load_from(self, store: SqliteStore) -> tuple[TieredMemory, dict[str, str]]:
        assert self._identity is not None
        recent: list[int] = json.loads(store.get_meta(_USED_CLIENT_IDS) or "[]")
        if type(recent) is not list or not all(type(c) is int for c in recent):
            raise ValueError(f"meta {_USED_CLIENT_IDS!r} is not a list of Yjs client ids")
        used = set(recent)
        client_ids: dict[str, int] = {}
        for tier in self.config.tiers:
            client_id = secrets.randbits(32)
            while client_id in used or client_id in client_ids.values():
                client_id = secrets.randbits(32)
            client_ids[tier] = client_id
        recent = [*recent, *client_ids.values()][-_USED_CLIENT_IDS_KEPT:]
        ceiling = int(store.get_meta("hlc_ceiling_ms") or "0")
        clock = HybridLogicalClock(
            max_drift_ms=self.config.max_clock_drift_ms,
            ceiling_window_ms=self.config.hlc_ceiling_window_ms,
            restored_ceiling_ms=ceiling,
        )
        events = EventLog(
            capacity=self.config.event_capacity,
            retention_ms=self.config.event_retention_ms,
            next_seq=int(store.get_meta("event_seq") or "0") + 1,
        )
        persisted = store.events_since(
            max(0, int(store.get_meta("event_seq") or "0") - self.config.event_capacity)
        )
        # Retention counts from now (plus the allowed drift), not from a far-future stamp.
        with events.wall_capped(wall_ms() + self.config.max_clock_drift_ms):
            events.restore(MemoryEvent.from_json(json.loads(body)) for _seq, body in persisted)
        memory = TieredMemory(
            node_id=self._identity.node_id,
            client_ids=client_ids,
            config=self.config,
            clock=clock,
            events=events,
        )
        for tier in self.config.tiers:
            state = store.load_tier(tier)
            blobs = [state.snapshot] if state.snapshot is not None else []
            memory.load(tier, [*blobs, *state.updates])
        # To persist before any write can use the new client ids or the clock ceiling.
        return memory, {
            _USED_CLIENT_IDS: json.dumps(recent),
            "hlc_ceiling_ms": str(max(ceiling, clock.ceiling)),
            "node_id": self._identity.node_id,
        }

    async def close(self) -> None:
        """Flush, compact tiers with many update rows, and close the store."""
        committer = self._committer
        if committer is None:
            return
        self._committer = None
        if self._searcher is not None:
            searcher, self._searcher = self._searcher, None
            await asyncio.to_thread(searcher.shutdown)  # a search still scoring ends first
        try:
            await self._compact_if_needed(committer, _has_many_rows)
        finally:
            try:
                await committer.close()
            finally:
                committer.store.close()  # also releases the data directory's lock
                self._changed.set()
                self._drained.set()

    @property
    def memory(self) -> TieredMemory:
        """Return the memory core (raises RuntimeError before start)."""
        if self._memory is None:
            raise RuntimeError("Mesh is not open: use `async with Mesh.open(data_dir)`")
        return self._memory

    @property
    def node_id(self) -> str:
        """Return this node's id (derived from its Ed25519 key)."""
        if self._identity is None:
            raise RuntimeError("Mesh is not open")
        return self._identity.node_id

    def _running(self) -> GroupCommitter:
        if self._committer is None:
            raise RuntimeError("Mesh is closed")
        return self._committer

    async def _commit(self, change: Change) -> None:
        await self._running().commit(change)  # its events wake subscribers once committed

    # ----------------------------------------------------------------- writes

    async def put(
        self,
        tier: str,
        content: str,
        *,
        id: str | None = None,
        embedding: Any = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        citations: Sequence[str] = (),
        confidence: float = 1.0,
        priority: Priority = Priority.NORMAL,
        ack: AckLevel = AckLevel.LOCAL,
        timeout_s: float = 10.0,
    ) -> MemoryItem:
        """Store an item durably and return it; raises InvalidItemError and writes nothing.

        On a networked node `ack` can ask for more than local durability (`peer`, `hub`,
        `all`); a write that misses it in `timeout_s` raises WriteError with
        `applied=True`: it is committed here and still replicates. A failed commit (a full
        disk) raises WriteError with `applied=True` too (StoreError without a daemon): the
        write is in memory and the committer retries it, so do not write it again.
        """
        return await self.start_put(
            tier,
            content,
            id=id,
            embedding=embedding,
            metadata=metadata,
            tags=tags,
            citations=citations,
            confidence=confidence,
            priority=priority,
            ack=ack,
            timeout_s=timeout_s,
        )

    def start_put(
        self,
        tier: str,
        content: str,
        *,
        id: str | None = None,
        embedding: Any = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        citations: Sequence[str] = (),
        confidence: float = 1.0,
        priority: Priority = Priority.NORMAL,
        ack: AckLevel = AckLevel.LOCAL,
        timeout_s: float = 10.0,
    ) -> Awaitable[MemoryItem]:
        """Do `put`, handing the write to the node before returning (`start_put_many`)."""
        request = NewItem(
            tier=tier,
            content=content,
            id=new_item_id() if id is None else id,
            embedding=embedding,
            metadata=metadata,
            tags=tags,
            citations=citations,
            confidence=confidence,
        )
        return _only_item(
            self.start_put_many([request], priority=priority, ack=ack, timeout_s=timeout_s)
        )

    async def put_many(
        self,
        requests: Sequence[NewItem],
        *,
        priority: Priority = Priority.NORMAL,
        ack: AckLevel = AckLevel.LOCAL,
        timeout_s: float = 10.0,
    ) -> list[MemoryItem]:
        """Store many items in one transaction (all validated first); return them."""
        await self._respect_backpressure()
        if self._runtime is not None:  # not held back now: it goes to the node at once
            return await _items_of(
                self._submit_write(
                    puts=tuple(requests), priority=priority, ack=ack, timeout_s=timeout_s
                )
            )
        with cyclic_gc_paused():
            change = self.memory.put_many(requests, wall_ms())
        await self._commit(change)
        return list(change.items)

    def start_put_many(
        self,
        requests: Sequence[NewItem],
        *,
        priority: Priority = Priority.NORMAL,
        ack: AckLevel = AckLevel.LOCAL,
        timeout_s: float = 10.0,
    ) -> Awaitable[list[MemoryItem]]:
        """Do `put_many`, handing the write to the node before returning; await the items.

        For a caller with no task of its own to spend (the daemon's control socket): no
        event-loop iteration comes between the call and the node's `handle`, which after
        a quiet spell is about 0.1 ms of a CRITICAL write's latency. Without a node, or
        while a subscriber holds writes back, it is `put_many` itself.
        """
        if self._runtime is None or self._backpressured():
            return self.put_many(requests, priority=priority, ack=ack, timeout_s=timeout_s)
        acked = self._submit_write(
            puts=tuple(requests), priority=priority, ack=ack, timeout_s=timeout_s
        )
        return _items_of(acked)

    async def put_batches(
        self,
        batches: Iterable[Sequence[NewItem]],
        *,
        in_flight: int = 2,
        on_committed: Callable[[int], None] | None = None,
    ) -> int:
        """Store each batch as `put_many` does, up to `in_flight` at once; return items stored.

        Batches commit in order. While one batch's commit runs on the store thread the next
        batch is built here, so a bulk load costs about max(build, commit) per batch instead
        of their sum. `on_committed(items_so_far)` runs after each batch is durable. If a
        batch fails, the batches after it still finish, then the first error is raised:
        every batch acknowledged through `on_committed` is durable.
        """
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        pending: collections.deque[asyncio.Task[list[MemoryItem]]] = collections.deque()
        stored = 0
        failure: BaseException | None = None

        async def settle_oldest() -> None:
            nonlocal stored, failure
            try:
                items = await pending.popleft()
            except Exception as exc:  # the others still run to completion
                failure = failure or exc
                return
            if failure is None:
                stored += len(items)
                if on_committed is not None:
                    on_committed(stored)

        try:
            for batch in batches:
                if failure is not None:
                    break
                pending.append(asyncio.create_task(self.put_many(batch)))
                if len(pending) >= in_flight:
                    await settle_oldest()
            while pending:
                await settle_oldest()
        finally:
            for task in pending:  # only on cancellation: do not leave writers orphaned
                task.cancel()
        if failure is not None:
            raise failure
        return stored

    async def delete(
        self, item_id: str, *, priority: Priority = Priority.NORMAL, ack: AckLevel = AckLevel.LOCAL
    ) -> None:
        """Delete a live item durably; raises ItemNotFoundError if there is none."""
        if self._runtime is not None:
            self.memory.get(item_id)  # the clear error, before anything is queued
            await self._submit_write(delete_ids=(item_id,), priority=priority, ack=ack)
            return
        await self._commit(self.memory.delete(item_id, wall_ms()))

    async def move(self, item_id: str, tier: str) -> MemoryItem:
        """Move a live item to another tier durably and return it there."""
        if self._runtime is not None:
            self.memory.get(item_id)
            await self._submit_write(moves=((item_id, tier),))
            return self.memory.get(item_id)
        change = self.memory.move(item_id, tier, wall_ms())
        await self._commit(change)
        return change.items[0] if change.items else self.memory.get(item_id)

    def notify(self, events: Sequence[MemoryEvent]) -> None:
        """Wake subscribers: events were committed by the Node's runtime."""
        if events:
            self._changed.set()

    def _events_committed(self, seq: int) -> None:
        """The committer made events up to `seq` durable: subscribers may have them."""
        self._durable_events = max(self._durable_events, seq)
        self._changed.set()

    def durable_event_bound(self) -> int:
        """Return the first event seq not known durable: readers get only events below it.

        An event is in the ring as soon as its change is made, before its commit; a crash
        then would hand its seq to another event after the restart.
        """
        return self._durable_events + 1

    def attach(self, runtime: NodeRuntime | None) -> None:
        """Route writes through a running Node (the daemon), or back to local-only."""
        self._runtime = runtime

    def _open_runtime(self) -> NodeRuntime | None:
        """Return the attached runtime (None without one); raise WriteError if it is closed."""
        runtime = self._runtime
        if runtime is not None and runtime.closed:  # a write through it would wait forever
            from mesh.runtime import WriteError

            raise WriteError("the node's runtime is closed; nothing was written", applied=False)
        return runtime

    def _submit_write(self, **fields: Any) -> asyncio.Future[WriteAcked]:
        """Hand the node a WriteRequested with `fields` now; return the future of its ack."""
        runtime = self._open_runtime()
        assert runtime is not None
        return _submit(runtime, lambda request_id: WriteRequested(request_id, **fields))

    def lease(self, name: str, ttl_s: float, *, timeout_s: float = 5.0) -> LeaseRequest:
        """Ask the hub for the advisory lease `name` (await it, or `async with` it).

        Returns a `Lease` (token, term, holder, expires_at); raises `LeaseError` when
        another node holds it, there is no hub, or no answer comes within `timeout_s`.
        Advisory: see `mesh.leases` for what the fencing token does and does not guarantee.
        """
        return LeaseRequest(self._runtime, name, ttl_s, timeout_s)

    def release(self, name: str, token: int) -> None:
        """Give up the lease `name` held under `token` (no-op without a daemon)."""
        if self._runtime is not None:
            release_lease(self._runtime, name, token)

    async def apply_update(
        self, tier: str, update: bytes, *, priority: Priority = Priority.NORMAL
    ) -> int:
        """Merge a Yjs v1 update (an export) durably; return items changed.

        Raises ValueError, changing nothing, if it is not a valid update. On a networked
        node it goes through the Node like a write of `priority`: what it added here
        reaches peers at the next flush (at once when urgent), and a failed commit raises
        WriteError with `applied=True`.
        """
        runtime = self._open_runtime()
        if runtime is None:
            change = self.memory.apply_remote(tier, update, wall_ms())
            await self._commit(change)
            return len({e.item_id for e in change.events})
        from mesh.runtime import WriteError

        try:
            acked = await _submit(
                runtime, lambda request_id: ImportRequested(request_id, tier, update, priority)
            )
        except WriteError as exc:
            if exc.applied:
                raise
            raise ValueError(str(exc)) from None  # refused by the Node: nothing changed
        return len(acked.changed_ids)

    # ----------------------------------------------------------------- reads

    async def get(self, item_id: str) -> MemoryItem:
        """Return the resolved item; raises ItemNotFoundError if absent or deleted."""
        return self.memory.get(item_id)

    async def search(
        self, query: Any, k: int = 10, tiers: Collection[str] | None = None
    ) -> list[SearchHit]:
        """Return the k nearest live items by cosine similarity, best first.

        A large index is scored on a search thread (numpy releases the GIL there), so the
        event loop goes on serving frames and timers meanwhile. Searches take turns: the
        others wait, unplanned (a cancelled search may still be scoring on the thread while
        the next is planned). Items added while a search is scored are not in its hits;
        items deleted meanwhile are left out, and replaced vectors are scored anew.
        """
        self._running()  # a closed node has no search thread
        async with self._search_turn:
            self._running()  # closed while this search waited for its turn
            prepared = self.memory.prepare_search(query, k=k, tiers=tiers)
            plan = prepared.plan
            if plan is None or plan.vectors.size < SEARCH_OFF_LOOP_ELEMENTS:
                return prepared.run_here()  # small: the hop to the thread would cost more
            try:
                scoring = asyncio.get_running_loop().run_in_executor(
                    self._search_thread(), plan.score
                )
            except BaseException:
                plan.release()
                raise
            try:
                scored = await asyncio.shield(scoring)
            except asyncio.CancelledError:
                # The thread still reads the snapshot: unfreeze only once it is done.
                scoring.add_done_callback(lambda _done: plan.release())
                raise
            except BaseException:
                plan.release()
                raise
            try:
                return prepared.finish(scored)
            finally:
                plan.release()

    def _search_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._searcher is None:
            self._searcher = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="memmesh-search"
            )
        return self._searcher

    def conflicts(self, item_id: str) -> tuple[MemoryItem, ...]:
        """Return the concurrent versions of an item in conflict (empty when none)."""
        return self.memory.conflicts(item_id)

    def events(
        self,
        pattern: str | None = None,
        *,
        since_seq: int | None = None,
        kinds: Collection[EventKind] | None = None,
        limit: int | None = None,
    ) -> list[MemoryEvent]:
        """Return retained events matching the criteria, oldest first."""
        return self.memory.events.query(
            pattern=pattern,
            since_seq=since_seq,
            kinds=kinds,
            limit=limit,
            before_seq=self.durable_event_bound(),
        )

    def subscribe(
        self, pattern: str = "*", *, from_seq: int | None = None, backpressure: bool = False
    ) -> EventStream:
        """Return an async iterator of events whose `TIER/ITEM_ID` matches `pattern`.

        The subscription starts now (or at `from_seq`), not at the first iteration. A
        subscriber that falls behind the event ring gets `EventsMissed` (never silent
        loss); with `backpressure=True`, writers wait for it instead.
        """
        return EventStream(self, pattern, from_seq=from_seq, backpressure=backpressure)

    def _backpressured(self) -> bool:
        """Return True while a blocking subscriber lags too far behind for another write."""
        limit = self.memory.events.capacity * 3 // 4
        return any(s.lag > limit for s in self._blocking_streams) and self._committer is not None

    async def _respect_backpressure(self) -> None:
        while self._backpressured():
            self._drained.clear()
            await self._drained.wait()

    def status(self) -> dict[str, Any]:
        """Return a JSON-friendly summary: node, tiers with counts and digests, counters."""
        memory = self.memory
        committer = self._running()
        counts = memory.counts()
        return {
            "node_id": self.node_id,
            "data_dir": str(self.data_dir),
            "tiers": {
                tier: {
                    "items": counts[tier],
                    "digest": memory.digest(tier).root().hex(),
                    "held_updates": memory.tier_doc(tier).held_updates,
                }
                for tier in memory.tiers
            },
            "conflicts": len(memory.conflicted_ids()),
            "commit_backlog": committer.backlog,
            "events_last_seq": memory.events.last_seq,
        }

    # ----------------------------------------------------------------- maintenance

    async def export_tier(self, tier: str) -> bytes:
        """Return the whole tier document as a standard Yjs v1 update."""
        await self._running().flush()
        return self.memory.tier_doc(tier).snapshot()

    async def compact(self) -> dict[str, int]:
        """Replace every tier's update log by one snapshot; return rows removed per tier."""
        return await self._compact_if_needed(self._running(), lambda stats: stats.rows > 0)

    async def compact_due(self) -> dict[str, int]:
        """Compact only tiers whose log is long and at least half its snapshot's size.

        A running daemon calls this periodically: the log stays bounded, and rewriting a
        big snapshot costs at most about twice the bytes logged since the last one.
        """
        return await self._compact_if_needed(self._running(), _log_outgrew_snapshot)

    async def _compact_if_needed(
        self, committer: GroupCommitter, due: Callable[[TierStoreStats], bool]
    ) -> dict[str, int]:
        if self._memory is None:
            return {}
        memory = self._memory
        await committer.flush()
        stats = await committer.run(lambda s: s.tier_stats())
        removed: dict[str, int] = {}
        for tier in memory.tiers:
            tier_stats = stats.get(tier)
            if tier_stats is None or not due(tier_stats):
                continue
            # Bound first, snapshot second: every row up to the bound was applied to memory
            # before it was committed, so the snapshot holds it; later rows stay as rows.
            upto = await committer.run(functools.partial(SqliteStore.last_update_id, tier=tier))
            # Never while a commit fails (one may have failed during those awaits): the
            # snapshot, taken from memory, would put the failed change (and its clock
            # ceiling, or the open's carried rows) on disk ahead of its own commit. After
            # this flush nothing is awaited until the compaction is on the store thread.
            await self._settled(committer)
            if committer.failing:
                break
            snapshot = memory.tier_doc(tier).snapshot()
            removed[tier] = await committer.run(
                functools.partial(SqliteStore.compact, tier=tier, snapshot=snapshot, upto_id=upto)
            )
        if removed:  # with the update log, the event log on disk shrinks to the ring's size
            keep = self.config.event_capacity
            await committer.run(lambda s: s.trim_events(keep_last=keep))
        return removed

    async def _settled(self, committer: GroupCommitter) -> None:
        """Return once every change made in memory was handed to the committer and written.

        Under a daemon a Node input changes memory at once while its Persist waits in the
        runtime's queue: a snapshot taken then would put that change on disk ahead of its
        own commit (its events and clock ceiling not with it). Nothing is awaited between
        this returning and the caller's snapshot.
        """
        await committer.flush()
        runtime = self._runtime
        while runtime is not None and not runtime.idle:
            await runtime.wait_idle()
            await committer.flush()

    async def integrity_check(self) -> str:
        """Return SQLite's integrity check of the store ("ok" when sound)."""
        return await self._running().run(lambda s: s.integrity_check())


async def _items_of(acked: Awaitable[WriteAcked]) -> list[MemoryItem]:
    """Return the items a write stored, once it is acked."""
    return list((await acked).items)


async def _only_item(pending: Awaitable[list[MemoryItem]]) -> MemoryItem:
    """Return the one item a single put stored."""
    (item,) = await pending
    return item


def _submit(
    runtime: NodeRuntime, make: Callable[[int], WriteRequested | ImportRequested]
) -> asyncio.Future[WriteAcked]:
    """Hand the Node the input `make(request_id)` builds now; return the future of its ack."""
    request_id, future = runtime.new_request_id()
    runtime.submit(make(request_id))
    return future


class EventStream:
    """Async iterator over one subscription; use `async for` and `aclose()` when done."""

    def __init__(
        self, mesh: Mesh, pattern: str, *, from_seq: int | None, backpressure: bool
    ) -> None:
        """Subscribe at once, so no event after this call is missed."""
        self._mesh = mesh
        self._sub = mesh.memory.events.subscribe(pattern, from_seq=from_seq)
        self._buffer: list[MemoryEvent] = []
        self._backpressure = backpressure
        if backpressure:
            mesh._blocking_streams.add(self._sub)

    def __aiter__(self) -> EventStream:
        """Return self."""
        return self

    async def __anext__(self) -> MemoryEvent:
        """Return the next matching event; raise EventsMissed if the ring overran us."""
        mesh = self._mesh
        while not self._buffer:
            if self._sub.closed:
                raise StopAsyncIteration
            # Durable events only; at close, those committed are still delivered first.
            self._buffer = self._sub.poll(before_seq=mesh.durable_event_bound())
            mesh._drained.set()
            if self._buffer:
                break
            if mesh._committer is None:
                raise StopAsyncIteration
            mesh._changed.clear()
            await mesh._changed.wait()
        return self._buffer.pop(0)

    async def aclose(self) -> None:
        """Stop the subscription (writers no longer wait for it)."""
        self._mesh._blocking_streams.discard(self._sub)
        self._mesh._drained.set()
        self._sub.close()
