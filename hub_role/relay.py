"""The hub's relay queue: pure. HIGH first, then NORMAL, LOW batched; per-origin rate limit.

Nothing is dropped for being over an origin's rate: the envelope waits (deferred) until the
origin's token bucket allows it, so a flooding node slows only itself, up to
`origin_deferred_max` of its envelopes waiting at once: past that its pushes are refused
(`Push.OVER_SHARE`; the Node leaves them unacked, so the origin floods them peer to peer
itself). Past `queue_max` envelopes or `queue_max_bytes` bytes the queue is full
(`Push.FULL`); the Node then fans the envelope out at once.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum
from typing import Final

from hub_role.config import HubConfig
from mesh.frames import Priority

_DOMAIN: Final = b"memmesh/hub-relay/v1\x00"


def relay_bytes(frame: bytes) -> bytes:
    """Return the bytes an origin signs for a relayed MEMORY_SYNC frame."""
    return _DOMAIN + frame


_MIN_BUCKETS_BEFORE_PRUNE = 1_024  # per-origin rate-limit buckets kept before a prune


@dataclass(frozen=True, slots=True)
class Envelope:
    """One relayed frame waiting at the hub: whose, how urgent, the bytes to fan out."""

    origin: str
    priority: Priority
    data: bytes  # the encoded HUB_RELAY frame, forwarded byte for byte
    queued_at: float
    tier: str | None = None  # the tier its update is for: fanned out only to its replicas


class Push(Enum):
    """What `RelayQueue.push` did with an envelope."""

    QUEUED = "queued"  # queued, or deferred under its origin's rate
    FULL = "full"  # the queue holds `queue_max` envelopes or `queue_max_bytes` bytes
    OVER_SHARE = "over_share"  # its origin already has `origin_deferred_max` deferred


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RelayQueue:
    """Per-priority FIFO queues with a drain budget of `relay_burst` per `relay_interval_s`."""

    def __init__(self, config: HubConfig) -> None:
        """Start empty."""
        self.config = config
        self._queues: dict[Priority, deque[Envelope]] = {
            p: deque() for p in (Priority.HIGH, Priority.NORMAL, Priority.LOW)
        }
        self._deferred: list[tuple[float, int, Envelope]] = []
        self._buckets: dict[str, _Bucket] = {}
        self._prune_at = _MIN_BUCKETS_BEFORE_PRUNE
        self._seq = 0
        self._next_drain = 0.0
        self._low_open = False
        self._bytes = 0  # of the envelopes held
        self._deferred_by_origin: Counter[str] = Counter()
        self.deferred_total = 0  # envelopes held back by an origin's rate limit
        self.refused_total = 0  # pushes refused because the queue was full
        self.over_share_total = 0  # pushes refused: the origin had too many deferred

    def __len__(self) -> int:
        """Return the envelopes held (queued and deferred)."""
        return sum(len(q) for q in self._queues.values()) + len(self._deferred)

    def backlog(self) -> dict[str, int]:
        """Return the envelopes queued per priority name, plus "deferred"."""
        out = {p.name: len(q) for p, q in self._queues.items()}
        out["deferred"] = len(self._deferred)
        return out

    def push(self, envelope: Envelope, now: float, *, beyond_share: bool = False) -> Push:
        """Queue an envelope (urgent priorities count as HIGH), or say why not.

        With `beyond_share` it is deferred under its origin's rate even past the origin's
        share (`origin_deferred_max`): for one that must go out anyway (already acked).
        """
        config = self.config
        held_bytes = self._bytes + len(envelope.data)
        if len(self) >= config.queue_max or held_bytes > config.queue_max_bytes:
            self.refused_total += 1
            return Push.FULL
        bucket = self._buckets.get(envelope.origin)
        rate, burst = self.config.origin_rate_per_s, float(self.config.origin_burst)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune_buckets(now)
            bucket = self._buckets[envelope.origin] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if (
            not beyond_share
            and bucket.tokens < 1.0
            and self._deferred_by_origin[envelope.origin] >= config.origin_deferred_max
        ):
            self.over_share_total += 1
            return Push.OVER_SHARE
        bucket.tokens -= 1.0
        self._bytes += len(envelope.data)
        if bucket.tokens >= 0:
            self._enqueue(envelope)
        else:
            self.deferred_total += 1
            self._deferred_by_origin[envelope.origin] += 1
            self._seq += 1
            ready = now + (-bucket.tokens) / rate
            heapq.heappush(self._deferred, (ready, self._seq, envelope))
        return Push.QUEUED

    def _prune_buckets(self, now: float) -> None:
        """Forget origins whose bucket has refilled: a full bucket is the same as none.

        Origins are whoever signs an envelope, so in an open mesh they are unbounded; the
        next prune waits until the table doubles, which keeps pushes O(1) amortised.
        """
        rate, burst = self.config.origin_rate_per_s, float(self.config.origin_burst)
        self._buckets = {
            origin: b
            for origin, b in self._buckets.items()
            if b.tokens + (now - b.at) * rate < burst
        }
        self._prune_at = max(_MIN_BUCKETS_BEFORE_PRUNE, 2 * len(self._buckets))

    def pop_ready(self, now: float, *, everything: bool = False) -> list[Envelope]:
        """Return the envelopes to fan out now, best priority first (all of them if asked)."""
        while self._deferred and (everything or self._deferred[0][0] <= now):
            envelope = heapq.heappop(self._deferred)[2]
            left = self._deferred_by_origin[envelope.origin] - 1
            if left:
                self._deferred_by_origin[envelope.origin] = left
            else:
                del self._deferred_by_origin[envelope.origin]
            self._enqueue(envelope)
        if not everything and now < self._next_drain:
            return []
        low = self._queues[Priority.LOW]
        if low and (
            everything
            or now - low[0].queued_at >= self.config.low_batch_s
            or len(low) >= self.config.low_batch_max
        ):
            self._low_open = True
        budget = len(self) if everything else self.config.relay_burst
        out: list[Envelope] = []
        for priority in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
            if priority is Priority.LOW and not self._low_open:
                break
            queue = self._queues[priority]
            while queue and len(out) < budget:
                out.append(queue.popleft())
        if not low:
            self._low_open = False
        if out:
            self._next_drain = now + self.config.relay_interval_s
            self._bytes -= sum(len(envelope.data) for envelope in out)
        return out

    def next_deadline(self) -> float | None:
        """Return when `pop_ready` next has something to return."""
        times: list[float] = []
        if self._queues[Priority.HIGH] or self._queues[Priority.NORMAL]:
            times.append(self._next_drain)
        low = self._queues[Priority.LOW]
        if low:
            full = self._low_open or len(low) >= self.config.low_batch_max
            opens = self._next_drain if full else low[0].queued_at + self.config.low_batch_s
            times.append(max(self._next_drain, opens))
        if self._deferred:
            times.append(self._deferred[0][0])
        return min(times, default=None)

    def _enqueue(self, envelope: Envelope) -> None:
        priority = min(envelope.priority, Priority.HIGH)
        self._queues[Priority(priority)].append(envelope)
