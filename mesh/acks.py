"""Durability acknowledgements: which writes wait for which peers' commits, until when."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from crdt.item import MemoryItem
from mesh.effects import Effect, WriteAcked, WriteFailed
from mesh.inputs import AckLevel


@dataclass(slots=True)
class PendingWrite:
    """A write committed here that waits for other nodes to commit it too."""

    request_id: int
    level: AckLevel
    batch_ids: set[bytes]
    required: frozenset[str]  # peers whose ack counts (ALL); empty means any one (PEER/HUB)
    deadline: float
    items: tuple[MemoryItem, ...]
    acked_by: dict[bytes, set[str]] = field(default_factory=dict)

    def peers_with_everything(self) -> set[str]:
        """Return the peers that acknowledged every batch of this write."""
        sets = [self.acked_by.get(batch, set()) for batch in self.batch_ids]
        return set.intersection(*sets) if sets else set()


class AckTracker:
    """Matches SyncAck frames to writes waiting for `peer`, `hub` or `all` durability."""

    def __init__(self) -> None:
        """Start with no pending writes."""
        self._pending: dict[int, PendingWrite] = {}
        self._by_batch: dict[bytes, set[int]] = {}

    def __len__(self) -> int:
        """Return the number of writes still waiting."""
        return len(self._pending)

    def wait(
        self,
        *,
        request_id: int,
        level: AckLevel,
        batch_ids: Iterable[bytes],
        required: Iterable[str],
        deadline: float,
        items: tuple[MemoryItem, ...],
    ) -> list[Effect]:
        """Register a write; return WriteAcked at once if nobody else needs to commit it."""
        needed = frozenset(required)
        batches = set(batch_ids)
        if level is AckLevel.ALL and not needed:
            return [WriteAcked(request_id, items)]
        if not batches:
            return [WriteAcked(request_id, items)]
        self._pending[request_id] = PendingWrite(
            request_id, level, batches, needed, deadline, items
        )
        for batch in batches:
            self._by_batch.setdefault(batch, set()).add(request_id)
        return []

    def on_ack(self, batch_id: bytes, peer_id: str, hub_id: str | None) -> list[Effect]:
        """Record that `peer_id` committed `batch_id`; return acks for writes now durable."""
        effects: list[Effect] = []
        for request_id in list(self._by_batch.get(batch_id, ())):
            pending = self._pending[request_id]
            pending.acked_by.setdefault(batch_id, set()).add(peer_id)
            done = pending.peers_with_everything()
            if pending.level is AckLevel.PEER:
                ok = bool(done)
            elif pending.level is AckLevel.HUB:
                ok = hub_id is not None and hub_id in done
            else:
                ok = pending.required <= done
            if ok:
                effects.append(WriteAcked(request_id, pending.items, tuple(sorted(done))))
                self._forget(request_id)
        return effects

    def on_hub(self, hub_id: str, self_id: str) -> list[Effect]:
        """A (new) hub was adopted: `hub` writes it already committed, or ours, are acked."""
        effects: list[Effect] = []
        for request_id, pending in list(self._pending.items()):
            if pending.level is not AckLevel.HUB:
                continue
            done = pending.peers_with_everything()
            if hub_id == self_id or hub_id in done:
                effects.append(WriteAcked(request_id, pending.items, tuple(sorted(done))))
                self._forget(request_id)
        return effects

    def forget_peer(self, peer_id: str) -> list[Effect]:
        """A member left or died: `all` writes stop waiting for it (it is no longer live)."""
        effects: list[Effect] = []
        for request_id, pending in list(self._pending.items()):
            if pending.level is AckLevel.ALL and peer_id in pending.required:
                pending.required = pending.required - {peer_id}
                if pending.required <= pending.peers_with_everything():
                    done = tuple(sorted(pending.peers_with_everything()))
                    effects.append(WriteAcked(request_id, pending.items, done))
                    self._forget(request_id)
        return effects

    def expire(self, now: float) -> list[Effect]:
        """Fail writes whose deadline passed (they stay committed here and still replicate)."""
        effects: list[Effect] = []
        for request_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                have = len(pending.peers_with_everything())
                effects.append(
                    WriteFailed(
                        request_id,
                        f"timed out waiting for {pending.level.value} durability "
                        f"({have} peer(s) confirmed)",
                        applied=True,
                    )
                )
                self._forget(request_id)
        return effects

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of a waiting write."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def _forget(self, request_id: int) -> None:
        pending = self._pending.pop(request_id)
        for batch in pending.batch_ids:
            waiting = self._by_batch.get(batch)
            if waiting is not None:
                waiting.discard(request_id)
                if not waiting:
                    del self._by_batch[batch]
