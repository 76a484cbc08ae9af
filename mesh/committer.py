"""Group commit: one worker thread owns the SQLite store; writers await their commit.

Every `Change` the memory core produces is queued here; the worker drains everything
queued so far into ONE transaction, so concurrent writers share an fsync. A change whose
commit fails stays queued and is retried before the next one, so a transient error (a full
disk) never reorders or drops updates: the writer that saw the error was not acknowledged,
and its update is persisted as soon as the disk allows. Until then `failing` is True (the
runtime holds back frames carrying replica data).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from crdt.events import MemoryEvent
from crdt.memory import Change
from mesh.store import SqliteStore

_T = TypeVar("_T")
RETRY_AFTER_S = 1.0  # a failed commit with nothing queued after it is retried this soon


@dataclass(slots=True)
class _Pending:
    change: Change
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    droppable: bool = False  # made again at the next open (a tombstone collection)


class GroupCommitter:
    """Serialises every store call on one thread and batches concurrent commits."""

    def __init__(
        self,
        store: SqliteStore,
        *,
        max_batch: int = 10_000,
        on_events: Callable[[int], None] | None = None,
    ) -> None:
        """Wrap an open store; `on_events(seq)` runs on the loop after each commit that held
        events, with the highest event seq committed so far."""
        self._store = store
        self._on_events = on_events
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="memmesh-store"
        )
        self._queue: list[_Pending] = []
        self._backlog: list[_Pending] = []
        self._carried_meta: dict[str, str] = {}  # written with the next commit that succeeds
        self._flushing: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._durable = asyncio.Event()  # clear from a failed commit until one succeeds
        self._durable.set()
        self._closing = False
        self._max_batch = max_batch
        self.commits = 0
        self.changes_committed = 0
        # The highest event seq committed (the owner sets it to what the store held at open):
        # changes commit in the order they were made, so every lower seq is durable too.
        self.events_committed = 0

    @property
    def store(self) -> SqliteStore:
        """Return the wrapped store (call it only through `run`)."""
        return self._store

    def carry_meta(self, meta: dict[str, str]) -> None:
        """Take meta rows that failed to commit (a full disk at open); write them first.

        They go into every later commit's transaction until one succeeds, and `failing` is
        True meanwhile, so nothing that depends on them leaves before they are on disk.
        With no change to write they are only retried, and dropped at close.
        """
        self._carried_meta.update(meta)
        self._durable.clear()
        self._schedule_retry()

    @property
    def backlog(self) -> int:
        """Return the changes awaiting a commit (failed ones too), plus 1 while meta is carried."""
        return len(self._queue) + len(self._backlog) + bool(self._carried_meta)

    @property
    def failing(self) -> bool:
        """Return True from a failed commit until a later one (which retries it) succeeds.

        Unlike `backlog`, this stays True while the retry itself is on the store thread.
        """
        return not self._durable.is_set()

    async def recovered(self) -> None:
        """Return once no failed change waits for its retry (at once when none does)."""
        await self._durable.wait()

    async def run(self, fn: Callable[[SqliteStore], _T]) -> _T:
        """Run `fn(store)` on the store thread, after every commit queued before it."""
        await self.flush()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._store)

    async def commit(self, change: Change, *, droppable: bool = False) -> None:
        """Persist `change` durably; return once committed, raise StoreError if it failed.

        A `droppable` change is one the next open makes again (a tombstone collection): if
        it is all that still waits when `close` retries and fails, it is dropped.
        """
        if change.empty and not change.events:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._queue.append(_Pending(change, [waiter], droppable))
        self._start_flush()
        await waiter

    async def flush(self) -> None:
        """Wait until everything queued so far has been attempted."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    def _start_write(self) -> tuple[list[_Pending], dict[str, str], asyncio.Future[None]]:
        """Take the backlog, carried meta and next queued changes; start writing them."""
        batch = self._backlog + self._queue[: self._max_batch]
        self._queue = self._queue[self._max_batch :]
        self._backlog = []
        loop = asyncio.get_running_loop()
        carried = dict(self._carried_meta)
        return (
            batch,
            carried,
            loop.run_in_executor(self._executor, _write_batch, self._store, batch, carried),
        )

    async def _flush_loop(
        self, started: tuple[list[_Pending], dict[str, str], asyncio.Future[None]]
    ) -> None:
        batch, carried, writing = started
        while True:
            try:
                await writing
            except Exception as exc:
                # Keep the updates for the next attempt; tell only this batch's writers.
                self._backlog = [_Pending(p.change, droppable=p.droppable) for p in batch]
                self._durable.clear()
                for pending in batch:
                    for waiter in pending.waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
            else:
                self.commits += 1
                self.changes_committed += len(batch)
                for key, value in carried.items():  # rows carried after it began wait for the next
                    if self._carried_meta.get(key) == value:
                        del self._carried_meta[key]
                if not self._carried_meta:
                    self._durable.set()  # every batch starts with the whole backlog
                # Also after a retry, whose writers were already told of the failure: nobody
                # else would wake the subscribers of the events it made durable.
                self._note_events_committed(batch)
                for pending in batch:
                    for waiter in pending.waiters:
                        if not waiter.done():
                            waiter.set_result(None)
            if not self._queue:
                if self._backlog or self._carried_meta:  # nothing else would retry them
                    self._schedule_retry()
                else:
                    self._checkpoint_while_idle()
                return
            batch, carried, writing = self._start_write()

    def _note_events_committed(self, batch: list[_Pending]) -> None:
        """Advance `events_committed` past `batch`'s events; tell `on_events` if it moved."""
        last = max((p.change.events[-1].seq for p in batch if p.change.events), default=0)
        if last > self.events_committed:
            self.events_committed = last
            if self._on_events is not None:
                self._on_events(last)

    def _checkpoint_while_idle(self) -> None:
        """Queue a WAL checkpoint on the store thread now, while nothing waits to commit.

        A writer that builds its next change meanwhile overlaps it; inside a commit it
        would delay that commit (a failure is ignored: SQLite's own checkpoint remains).
        """
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._store.checkpoint_if_due)
        done.add_done_callback(_ignore_failure)

    def _schedule_retry(self) -> None:
        if self._retry is None and not self._closing:
            self._retry = asyncio.get_running_loop().call_later(RETRY_AFTER_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if (self._backlog or self._carried_meta) and not self._closing:
            self._start_flush()

    def _start_flush(self) -> None:
        """Start writing what waits, unless a flush already runs (it takes it next)."""
        if self._flushing is None or self._flushing.done():
            # Hand the first batch to the store thread now, not when the flush task first
            # runs: the caller may build its next change meanwhile (Mesh.put_batches).
            self._flushing = asyncio.create_task(self._flush_loop(self._start_write()))

    async def close(self) -> None:
        """Flush, retry any backlog once, then stop the worker thread (also if that fails).

        A failed retry raises; its changes stay in `backlog`, since nothing wrote them.
        Carried meta with no change to go with it is retried once and dropped if it fails:
        nothing on disk or sent depends on it. So are droppable changes with nothing else
        (a tombstone collection at open): a read leaves no error behind on a full disk.
        """
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        try:
            await self.flush()
            loop = asyncio.get_running_loop()
            if self._backlog:
                try:
                    await loop.run_in_executor(
                        self._executor, _write_batch, self._store, self._backlog, self._carried_meta
                    )
                except Exception:
                    if not all(p.droppable for p in self._backlog):
                        raise
                else:
                    self._note_events_committed(self._backlog)  # a closing Mesh hands them out
                self._backlog = []
                self._carried_meta = {}
                self._durable.set()
            elif self._carried_meta:
                with contextlib.suppress(Exception):  # see the docstring: safe to drop
                    await loop.run_in_executor(
                        self._executor, _write_batch, self._store, [], self._carried_meta
                    )
                self._carried_meta = {}
        finally:
            self._executor.shutdown(wait=True)


def _ignore_failure(done: asyncio.Future[bool]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved, so asyncio does not log it as never retrieved


def _write_batch(
    store: SqliteStore, batch: Sequence[_Pending], carried: dict[str, str] | None = None
) -> None:
    updates: list[tuple[str, bytes]] = []
    events: list[tuple[int, str]] = []
    meta: dict[str, str] = dict(carried or {})
    for pending in batch:
        change = pending.change
        updates.extend(change.updates)
        events.extend(MemoryEvent.json_rows(change.events))
        if change.ceiling_ms is not None:
            ceiling = max(change.ceiling_ms, int(meta.get("hlc_ceiling_ms", "0")))
            meta["hlc_ceiling_ms"] = str(ceiling)
    if events:
        meta["event_seq"] = str(max(seq for seq, _ in events))
    store.commit(updates=updates, events=events, meta=meta)
