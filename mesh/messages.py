"""Payloads of every message type, as frozen dataclasses. The wire codec is `mesh.codec`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class MemberState(IntEnum):
    """SWIM member states (ordered: a higher state wins at equal incarnation)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A piggybacked membership fact: `node_id` is in `state` at `incarnation`."""

    node_id: str
    state: MemberState
    incarnation: int
    address: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    """First message on a new link: who I am and what I replicate."""

    node_id: str
    incarnation: int
    tiers: tuple[str, ...]
    profile: str = "standard"
    hub_eligible: bool = True
    software: str = "memmesh/0.1"


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM direct probe, carrying gossip."""

    seq: int
    gossip: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM indirect probe: please ping `target` for me and relay the ack."""

    seq: int
    target: str
    gossip: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class PingAck:
    """SWIM ack of a probe of `target` (the sender itself, or the node it probed for us)."""

    seq: int
    target: str
    gossip: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Digest:
    """Anti-entropy: the Merkle roots of the sender's tiers; `reply` marks the answer."""

    roots: tuple[tuple[str, bytes], ...]
    reply: bool = False


class SyncKind(IntEnum):
    """y-sync message kinds carried by MEMORY_SYNC."""

    STEP1 = 0  # body: my state vector; answer with STEP2
    STEP2 = 1  # body: the update you are missing
    UPDATE = 2  # body: an incremental update


@dataclass(frozen=True, slots=True)
class Chunk:
    """Position of one piece of a body too large for one frame."""

    transfer_id: bytes  # 16 bytes, the same for every piece of one body
    index: int
    total: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class MemorySync:
    """MEMORY_SYNC: a y-sync message for one tier, with its SHA-256 checksum."""

    batch_id: bytes  # 16 bytes, unique per batch; dedup key when flooded
    source: str
    target: str  # a node id, or "*" for broadcast
    tier: str
    kind: SyncKind
    body: bytes
    items: int = 0  # how many items the body carries, when known (progress)
    chunk: Chunk | None = None


@dataclass(frozen=True, slots=True)
class SyncAck:
    """The sender committed the batch durably."""

    batch_id: bytes
    node_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Ask the sender of a chunked transfer to continue from `next_index`."""

    transfer_id: bytes
    next_index: int


@dataclass(frozen=True, slots=True)
class MemoryQuery:
    """MEMORY_QUERY: search (vector, k) and/or fetch (ids) a tier on the receiver."""

    query_id: int
    tier: str
    vector: bytes = b""  # little-endian float32, empty for fetch-only
    k: int = 10
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MemoryResponse:
    """MEMORY_RESPONSE: records (the tier-document JSON) and search hits, or an error.

    An ok response with an `error` is partial: it left out entries to fit one frame, and
    `error` says how many.
    """

    query_id: int
    ok: bool
    records: tuple[tuple[str, str], ...] = ()  # (item_id, record json)
    hits: tuple[tuple[str, float], ...] = ()  # (item_id, score), best first
    error: str = ""

    @property
    def partial(self) -> bool:
        """Return True if the answerer left out records or hits to stay within one frame."""
        return self.ok and bool(self.error)


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """Tells a peer why its frame was refused."""

    code: int
    message: str
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HubClaim:
    """HUB_CLAIM: `node_id` claims (or, with a new `seq`, re-asserts) the hub role in `term`.

    `signature` is `node_id`'s Ed25519 signature of `hub_role.election.claim_bytes(...)`.
    """

    node_id: str
    term: int
    seq: int
    score: int
    public_key: bytes  # 32 bytes
    signature: bytes  # 64 bytes


@dataclass(frozen=True, slots=True)
class HubRelay:
    """HUB_RELAY: one MEMORY_SYNC frame (`frame`, whole and as encoded by its origin), signed.

    `signature` is `origin`'s Ed25519 signature of `hub_role.relay.relay_bytes(frame)`, so
    the hub that forwards it cannot alter a bit undetected.
    """

    origin: str
    public_key: bytes  # 32 bytes
    signature: bytes  # 64 bytes
    frame: bytes


@dataclass(frozen=True, slots=True)
class TierStats:
    """One node's figures for one tier over its last report interval."""

    tier: str
    syncs_per_min: float = 0.0  # update batches sent and applied, per minute
    items_per_batch: float = 0.0  # mean items per batch
    latency_ms: float = 0.0  # mean write-to-ack round trip
    p2p: int = 0  # batches sent or received peer to peer (cumulative)
    relayed: int = 0  # batches sent or received through the hub (cumulative)
    backlog: int = 0  # updates waiting to be sent now
    conflicts: tuple[tuple[str, int], ...] = ()  # (resolution, count), cumulative


@dataclass(frozen=True, slots=True)
class StatsReport:
    """STATS_REPORT: a node's per-tier figures, sent to the hub."""

    node_id: str
    tiers: tuple[TierStats, ...] = ()


@dataclass(frozen=True, slots=True)
class StatsPublish:
    """STATS_PUBLISH: the hub's aggregate of the latest report of every node."""

    hub_id: str
    term: int
    reports: tuple[StatsReport, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """LEASE_REQUEST: `node_id` asks the hub for the advisory lease `name` for `ttl_ms`."""

    request_id: int
    node_id: str
    name: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """LEASE_GRANT: the hub's answer; `token` is the fencing token when `granted`."""

    request_id: int
    name: str
    holder: str  # the node holding the lease now (the requester when granted)
    granted: bool
    token: int
    term: int
    ttl_ms: int  # time left on the lease, from the hub's point of view


@dataclass(frozen=True, slots=True)
class LeaseRelease:
    """LEASE_RELEASE: the holder gives the lease up (`token` names the grant)."""

    name: str
    node_id: str
    token: int


Message = (
    Hello
    | Ping
    | PingReq
    | PingAck
    | Digest
    | MemorySync
    | SyncAck
    | Resume
    | MemoryQuery
    | MemoryResponse
    | ErrorReport
    | HubClaim
    | HubRelay
    | StatsReport
    | StatsPublish
    | LeaseRequest
    | LeaseGrant
    | LeaseRelease
)
