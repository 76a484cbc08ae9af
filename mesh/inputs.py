"""Inputs to the sans-IO Node: past-tense facts the driver observed. Frozen, no behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from crdt.memory import NewItem
from mesh.frames import Priority


class AckLevel(StrEnum):
    """How durable a write must be before it is acknowledged."""

    LOCAL = "local"  # committed here
    PEER = "peer"  # committed here and by at least one other node
    HUB = "hub"  # committed here and by the hub (a later issue elects one)
    ALL = "all"  # committed by every live member


@dataclass(frozen=True, slots=True)
class PeerFound:
    """Discovery (mDNS, a static list, or the simulator) learnt of a peer."""

    peer_id: str
    address: str = ""
    tiers: tuple[str, ...] = ("L1", "L2", "L3")


@dataclass(frozen=True, slots=True)
class PeerLost:
    """Discovery no longer sees a peer (it may still be reachable)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """A link (data channel) to a peer is open."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The link to a peer closed or failed."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """Bytes of one frame arrived from a peer (not yet validated)."""

    peer_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteRequested:
    """The local user asked for a write; `request_id` names it in the acknowledgement."""

    request_id: int
    puts: Sequence[NewItem] = ()
    delete_ids: Sequence[str] = ()
    moves: Sequence[tuple[str, str]] = ()
    ack: AckLevel = AckLevel.LOCAL
    priority: Priority = Priority.NORMAL
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ImportRequested:
    """The local user asked to merge a Yjs v1 `update` (an export) into `tier`.

    Handled like a write of `priority`: persisted, then what it added here replicates at
    the next flush (at once when urgent); acked with `WriteAcked.changed_ids`, or refused
    with `WriteFailed(applied=False)` when it is not a valid update (nothing changed).
    """

    request_id: int
    tier: str
    update: bytes
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class QueryRequested:
    """The local user asked a peer to search or fetch from a tier (MEMORY_QUERY)."""

    request_id: int
    peer_id: str
    tier: str
    vector: tuple[float, ...] | None = None
    k: int = 10
    ids: tuple[str, ...] = field(default_factory=tuple)
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LeaseRequested:
    """The local user asked the hub for the advisory lease `name` for `ttl_s` seconds.

    Answered by a `LeaseAnswered` effect with the same `request_id` (granted with a
    fencing token, refused with the current holder, or an error: no hub, timeout).
    """

    request_id: int
    name: str
    ttl_s: float
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LeaseReleased:
    """The local user gives up the lease `name` it holds under fencing `token` (no answer)."""

    name: str
    token: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the node runs whatever timers are due at `now`."""


@dataclass(frozen=True, slots=True)
class Leaving:
    """The node shuts down gracefully: it tells every live member it LEFT (once)."""


Input = (
    PeerFound
    | PeerLost
    | LinkUp
    | LinkDown
    | FrameReceived
    | WriteRequested
    | ImportRequested
    | QueryRequested
    | LeaseRequested
    | LeaseReleased
    | Leaving
    | Tick
)
