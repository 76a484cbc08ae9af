"""Outgoing update batching: local updates wait up to the sync interval, urgent ones don't."""

from __future__ import annotations

from dataclasses import dataclass, field

from pycrdt import merge_updates

from crdt.item import MemoryItem
from mesh.frames import Priority
from mesh.inputs import AckLevel


@dataclass(slots=True)
class WaitingWrite:
    """A write whose updates sit in the outbox; it may wait for remote acks after flush."""

    request_id: int
    level: AckLevel
    tiers: set[str]
    timeout_s: float
    items: tuple[MemoryItem, ...]


@dataclass(slots=True)
class Batch:
    """One flushed tier batch: merged update body, priority, how many updates it merges."""

    tier: str
    body: bytes
    priority: Priority
    updates: int


@dataclass(slots=True)
class Outbox:
    """Per-tier queues of local updates awaiting broadcast, plus the writes behind them."""

    interval_s: float
    _updates: dict[str, list[bytes]] = field(default_factory=dict)
    _priority: Priority = Priority.LOW
    _due: float | None = None
    _writes: list[WaitingWrite] = field(default_factory=list)

    def add(
        self,
        updates: tuple[tuple[str, bytes], ...],
        priority: Priority,
        now: float,
        write: WaitingWrite | None = None,
    ) -> bool:
        """Queue updates; return True if they must be flushed now (urgent priority)."""
        for tier, update in updates:
            self._updates.setdefault(tier, []).append(update)
        if updates:
            self._priority = max(self._priority, priority)
            if self._due is None:
                self._due = now + self.interval_s
        if write is not None:
            self._writes.append(write)
        return priority.urgent

    @property
    def due(self) -> float | None:
        """Return when the queued updates must be flushed (None when empty)."""
        return self._due if self._updates or self._writes else None

    def __len__(self) -> int:
        """Return the number of queued updates."""
        return sum(len(v) for v in self._updates.values())

    def by_tier(self) -> dict[str, int]:
        """Return the number of queued updates per tier."""
        return {tier: len(v) for tier, v in self._updates.items() if v}

    def flush(self) -> tuple[list[Batch], list[WaitingWrite]]:
        """Return one merged batch per tier and the writes they carry; empty the outbox."""
        batches = [
            Batch(
                tier,
                updates[0] if len(updates) == 1 else bytes(merge_updates(*updates)),
                self._priority,
                len(updates),
            )
            for tier, updates in sorted(self._updates.items())
            if updates
        ]
        writes = self._writes
        self._updates = {}
        self._writes = []
        self._priority = Priority.LOW
        self._due = None
        return batches, writes
