"""The Node's hub-role state: election, relay queue, origin-side pending relays, counters.

Pure (no I/O, no clock). The Node turns what this returns into `Send` effects; routing
decisions (relay or flood) live here so both drivers share them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from hub_role.config import HubConfig
from hub_role.election import Election, HubInfo
from hub_role.leases import LeaseTable
from hub_role.relay import RelayQueue, relay_bytes
from hub_role.signing import Signer, Verifier
from hub_role.stats import MeshStats, StatsBoard, StatsCollector
from mesh.codec import decode_message
from mesh.frames import Frame, FrameError, Limits, Priority
from mesh.messages import HubRelay, MemorySync, SyncKind

BROADCAST = "*"
RELAY_OVERHEAD = 256  # bytes an envelope adds around the inner frame (at most)


@dataclass(slots=True)
class HubCounters:
    """What the hub role did on this node (cumulative)."""

    relayed_sent: int = 0  # update batches this node sent through the hub
    p2p_sent: int = 0  # update batches this node flooded peer to peer
    relayed_received: int = 0  # update batches applied from a HUB_RELAY
    p2p_received: int = 0  # update batches applied from a peer-to-peer flood
    hub_notified: int = 0  # urgent batches flooded while a hub was linked (it got a copy)
    relay_rejected: int = 0  # HUB_RELAY refused: bad signature, key or inner frame
    relay_fallbacks: int = 0  # relayed batches re-flooded because the hub did not ack
    fanned_out: int = 0  # envelopes this node fanned out as the hub
    relay_rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PendingRelay:
    """An update batch handed to the hub, kept until the hub acks it (else re-flooded)."""

    hub_id: str
    message: MemorySync
    priority: Priority
    flags: int
    deadline: float


class HubRouter:
    """Hub-role state of one node; `election` decides the hub, `queue` holds what it relays."""

    def __init__(
        self,
        node_id: str,
        score: int,
        config: HubConfig,
        verifier: Verifier,
        signer: Signer | None,
        now: float,
        tiers: tuple[str, ...] = ("L1", "L2", "L3"),
    ) -> None:
        """Start with no hub; an eligible node campaigns after `config.boot_wait_s`."""
        self.node_id = node_id
        self.config = config
        self.election = Election(node_id, score, config, verifier, signer, now=now)
        self.queue = RelayQueue(config)
        self.counters = HubCounters()
        self._signer = signer
        self._verifier = verifier
        self._pending: OrderedDict[bytes, PendingRelay] = OrderedDict()
        self.stats = StatsCollector(node_id, tiers, now)
        self.board = StatsBoard(config.stats_max_age_s)
        self.view: MeshStats | None = None  # the latest STATS_PUBLISH of our hub
        self.next_report = now + config.stats_interval_s
        self.leases = LeaseTable()  # used while we are the hub
        self.lease_pending: dict[int, tuple[int, str, float]] = {}  # id -> (request, name, due)
        self._next_lease_id = 1

    def new_lease_id(self) -> int:
        """Return a fresh id for a LEASE_REQUEST sent to the hub."""
        self._next_lease_id += 1
        return self._next_lease_id - 1

    def pending_by_tier(self) -> dict[str, int]:
        """Return the updates of relayed batches not yet acked by the hub, per tier.

        Updates, not batches: the outbox's backlog, which stats add to this, counts those.
        """
        out: dict[str, int] = {}
        for p in self._pending.values():
            out[p.message.tier] = out.get(p.message.tier, 0) + p.message.items
        return out

    # ----------------------------------------------------------------- reading

    @property
    def hub(self) -> HubInfo | None:
        """Return the hub this node follows (possibly itself), or None."""
        return self.election.hub

    @property
    def is_hub(self) -> bool:
        """Return True if this node holds the hub role."""
        return self.election.is_hub

    def route(self, links: frozenset[str] | set[str]) -> str | None:
        """Return the hub to relay through: known, not us, linked, and we can sign; else None."""
        hub = self.election.hub
        if self._signer is None or hub is None or hub.id == self.node_id or hub.id not in links:
            return None
        return hub.id

    def next_deadline(self) -> float | None:
        """Return the earliest time the router has timer work."""
        times = [self.election.next_deadline(), self.queue.next_deadline()]
        times.append(min((p.deadline for p in self._pending.values()), default=None))
        times.append(min((d for _r, _n, d in self.lease_pending.values()), default=None))
        times.append(self.next_report)
        return min((t for t in times if t is not None), default=None)

    # ----------------------------------------------------------------- origin side

    def can_sign(self) -> bool:
        """Return True if this node can sign relayed frames."""
        return self._signer is not None

    def seal(self, inner: bytes) -> HubRelay:
        """Wrap an encoded MEMORY_SYNC frame in an envelope signed by this node."""
        assert self._signer is not None
        signature = self._signer.sign(relay_bytes(inner))
        return HubRelay(self.node_id, self._signer.public_key, signature, inner)

    def track(
        self, hub_id: str, message: MemorySync, priority: Priority, flags: int, now: float
    ) -> None:
        """Remember a batch handed to `hub_id` until it acks it."""
        deadline = now + self.config.relay_ack_timeout_s
        self._pending[message.batch_id] = PendingRelay(hub_id, message, priority, flags, deadline)

    def on_ack(self, batch_id: bytes, peer_id: str) -> None:
        """The hub (or anyone it was handed to) committed `batch_id`: stop tracking it."""
        pending = self._pending.get(batch_id)
        if pending is not None and pending.hub_id == peer_id:
            del self._pending[batch_id]

    def take_unacked(self, now: float, *, hub_gone: bool = False) -> list[PendingRelay]:
        """Return (and forget) batches to re-flood: overdue, or handed to a hub we left."""
        hub = self.election.hub
        out = [
            p
            for p in self._pending.values()
            if hub_gone or now >= p.deadline or hub is None or p.hub_id != hub.id
        ]
        for p in out:
            del self._pending[p.message.batch_id]
        self.counters.relay_fallbacks += len(out)
        return out

    # ----------------------------------------------------------------- receiving side

    def open(self, envelope: HubRelay, limits: Limits) -> tuple[Frame, MemorySync] | str:
        """Verify an envelope and decode its inner frame; return the reason when refused."""
        reason = self._verifier.check(
            envelope.origin, envelope.public_key, relay_bytes(envelope.frame), envelope.signature
        )
        if reason is None:
            try:
                frame, inner = decode_message(envelope.frame, limits)
            except FrameError as exc:
                reason = f"inner frame: {exc}"
            else:
                if (
                    isinstance(inner, MemorySync)
                    and inner.kind is SyncKind.UPDATE
                    and inner.target == BROADCAST
                    and inner.source == envelope.origin
                    and inner.chunk is None
                ):
                    return frame, inner
                reason = "inner frame is not an update broadcast by its origin"
        self.counters.relay_rejected += 1
        key = reason.split(":")[0]
        by_reason = self.counters.relay_rejected_by_reason
        by_reason[key] = by_reason.get(key, 0) + 1
        return reason
