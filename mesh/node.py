"""The sans-IO Node: `handle(event, now) -> effects`. The daemon and the simulator both
drive this same class; it never reads a clock, touches a socket or draws global randomness.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from crdt.errors import MemmeshError
from crdt.item import MemoryItem, to_record
from crdt.memory import Change, TieredMemory
from crdt.resolvers import BUILTIN_RESOLVERS
from crdt.tier import MAX_HELD_UPDATES, CorruptUpdateError
from crdt.yslice import SlicePlan, plan_slices
from crdt.ywire import decode_state_vector
from hub_role.router import HubRouter
from hub_role.signing import Ed25519Verifier, Signer, Verifier
from mesh.acks import AckTracker
from mesh.chunking import Reassembler, max_chunk_for, split_body
from mesh.codec import (
    MAX_LABEL,
    MessageError,
    decode_message,
    encode_message,
    response_entry_bytes,
    response_overhead,
)
from mesh.config import NodeConfig
from mesh.effects import (
    Connect,
    Disconnect,
    Effect,
    Emit,
    Log,
    Persist,
    QueryAnswered,
    Send,
    WriteAcked,
    WriteFailed,
)
from mesh.frames import DEFAULT_LIMITS, Flags, Frame, FrameError, Priority
from mesh.inputs import (
    AckLevel,
    FrameReceived,
    ImportRequested,
    Input,
    LeaseReleased,
    LeaseRequested,
    Leaving,
    LinkDown,
    LinkUp,
    PeerFound,
    PeerLost,
    QueryRequested,
    Tick,
    WriteRequested,
)
from mesh.membership import Membership, Outgoing
from mesh.messages import (
    Digest,
    Hello,
    HubClaim,
    HubRelay,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    MemberState,
    MemoryQuery,
    MemoryResponse,
    MemorySync,
    Message,
    Ping,
    PingAck,
    PingReq,
    Resume,
    StatsPublish,
    StatsReport,
    SyncAck,
    SyncKind,
)
from mesh.node_hub import HubRole
from mesh.outbox import Outbox, WaitingWrite

BROADCAST = "*"
MAX_QUERY_K = 100
_STATE_NAMES = {state: state.name for state in MemberState}  # Enum.name is slow (hot path)


@dataclass(slots=True)
class NodeCounters:
    """Traffic and error counters (the simulator and `memmesh peers` report them)."""

    frames_out: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    bad_frames: int = 0
    syncs_applied: int = 0
    duplicates_dropped: int = 0
    digests_sent: int = 0
    bad_frames_by_peer: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class TransferProgress:
    """How far an incoming chunked body (an initial sync) has come."""

    peer_id: str
    tier: str
    bytes_done: int
    bytes_total: int  # estimated from the items so far for a sliced initial sync
    items_total: int
    items_done: int = 0


@dataclass(slots=True)
class _SlicedSync:
    """An initial sync going out as slices, a few ahead of the receiver's acks."""

    plan: SlicePlan
    items: int
    last: float  # when it started or last got an ack
    next: int = 0
    in_flight: set[bytes] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _HeldBatch:
    """A received batch its tier held back for a missing predecessor: acked once integrated."""

    seen_key: bytes | None  # its dedup key in `_seen` (None for a chunked body)
    flags: int
    message: MemorySync


@dataclass(slots=True)
class _SlicedIn:
    """An initial sync arriving as slices: what has been applied so far."""

    started_items: int
    bytes_done: int = 0
    partial_bytes: int = 0
    items_total: int = 0
    last: float = 0.0
    tenths_logged: int = 0  # progress is logged at each further tenth of the items


class Node(HubRole):
    """One mesh node's protocol state: membership, links, sync sessions, acks, queries.

    The hub role (election, relay, stats, leases) is in `mesh.node_hub.HubRole`.
    """

    def __init__(
        self,
        memory: TieredMemory,
        config: NodeConfig,
        rng: random.Random,
        *,
        incarnation: int = 0,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        """Wrap a loaded memory; `rng` is the node's only source of randomness.

        `signer` signs this node's hub claims and relayed frames (the daemon passes its
        `NodeIdentity`'s key). Without one the node never claims the hub role and floods its
        updates peer to peer (it still follows and uses a hub for acks). `verifier` checks
        other nodes' signatures; by default a key must derive the claimed node id.
        """
        self.node_id = memory.node_id
        self.memory = memory
        self.config = config
        self._rng = rng
        self.membership = Membership(self.node_id, config.swim, rng, incarnation=incarnation)
        self.acks = AckTracker()
        self.counters = NodeCounters()
        self._reassembler = Reassembler(max_bytes=config.max_transfer_bytes)
        self._max_chunk = max_chunk_for(config.limits)
        self._outbox = Outbox(config.sync_interval_s)
        self._links: set[str] = set()
        self._connecting: dict[str, float] = {}
        self._retry_at: dict[str, tuple[int, float]] = {}
        self._peer_tiers: dict[str, tuple[str, ...]] = {}
        self._seen: OrderedDict[bytes, bool] = OrderedDict()  # flooded key -> committed
        # (tier, update) -> a batch held back by its tier, to ack when it is integrated
        self._held_batches: OrderedDict[tuple[str, bytes], _HeldBatch] = OrderedDict()
        self._step1_sent: dict[tuple[str, str], float] = {}
        self._transfers: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._incoming: dict[tuple[str, bytes], TransferProgress] = {}
        self._resumed: set[tuple[str, bytes]] = set()  # incoming transfers we sent RESUME for
        self._sliced_out: dict[tuple[str, str], _SlicedSync] = {}
        self._sliced_in: dict[tuple[str, str], _SlicedIn] = {}
        self._queries: dict[int, tuple[int, float]] = {}
        self._next_query_id = 1
        self._next_ae: float | None = None
        self._last_sent: dict[str, float] = {}  # peer -> when we last sent it a frame
        self._now = 0.0
        self._signer = signer
        self._verifier: Verifier = verifier if verifier is not None else Ed25519Verifier()
        self._router: HubRouter | None = None  # created at the first input (it needs `now`)
        self._write_started: dict[int, tuple[float, frozenset[str]]] = {}
        self._resolver_names = {  # cut to what a stats message carries (MAX_LABEL)
            tier: next(
                (n for n, f in BUILTIN_RESOLVERS.items() if f is policy.resolver),
                str(getattr(policy.resolver, "__name__", "")),
            )[:MAX_LABEL]
            or "custom"
            for tier, policy in memory.config.tiers.items()
        }

    # ----------------------------------------------------------------- driving

    def handle(self, event: Input, now: float) -> list[Effect]:
        """Apply one input at time `now` and return the effects, to be run in order."""
        self._now = now
        if self._router is None:
            score = self.config.hub.score if self.config.hub_eligible else 0
            self._router = HubRouter(
                self.node_id,
                score,
                self.config.hub,
                self._verifier,
                self._signer,
                now,
                self.config.tiers,
            )
        hub_before = self._router.hub
        if self._next_ae is None:
            self._next_ae = now + self._rng.uniform(0, self.config.anti_entropy_interval_s)
        effects: list[Effect]
        if isinstance(event, FrameReceived):
            effects = self._on_frame(event.peer_id, event.data)
        elif isinstance(event, Tick):
            effects = self._on_tick()
        elif isinstance(event, WriteRequested):
            effects = self._on_write(event)
        elif isinstance(event, ImportRequested):
            effects = self._on_import(event)
        elif isinstance(event, LinkUp):
            effects = self._on_link_up(event.peer_id)
        elif isinstance(event, LinkDown):
            effects = self._on_link_down(event.peer_id)
        elif isinstance(event, PeerFound):
            self.membership.add(event.peer_id, now, event.address)
            self._peer_tiers.setdefault(event.peer_id, event.tiers)
            effects = self._maintain_links()
        elif isinstance(event, PeerLost):
            effects = []
        elif isinstance(event, LeaseRequested):
            effects = self._on_lease_request(event)
        elif isinstance(event, LeaseReleased):
            effects = self._on_lease_release(event)
        elif isinstance(event, Leaving):
            # Peers then stop probing us and, if we are the hub, elect the next one at once
            # instead of after the hub timeout. A hub first hands out every relayed batch it
            # still queues: it acked them to their origins, which no longer track them.
            effects = []
            if not self.membership.left:
                effects = self._drain_relay(everything=True)
                effects.extend(self._outgoing(self.membership.leave(now, everyone=True)))
        else:
            effects = self._on_query_request(event)
        effects.extend(self._membership_changes())
        effects.extend(self._after_hub_change(hub_before))
        self._observe(effects)
        return effects

    def next_deadline(self) -> float | None:
        """Return the earliest time at which a Tick has work to do."""
        candidates = [
            self.membership.next_deadline(),
            self._next_ae,
            self._outbox.due,
            self.acks.next_deadline(),
            min((d for _r, d in self._queries.values()), default=None),
            min((at for _n, at in self._retry_at.values()), default=None),
            None if self._router is None else self._router.next_deadline(),
        ]
        earliest = min((c for c in candidates if c is not None), default=None)
        # An overdue timer (e.g. gossip queued by a frame after its slot passed) is due now.
        return None if earliest is None else max(earliest, self._now)

    @property
    def links(self) -> frozenset[str]:
        """Return the peers with an open link."""
        return frozenset(self._links)

    def transfers(self) -> list[TransferProgress]:
        """Return the initial syncs still arriving: sliced ones, then single chunked bodies."""
        sliced = []
        for (peer, tier), state in self._sliced_in.items():
            if not self._slices_flowing(state):
                continue  # broken off: a new exchange starts its own progress
            items_done = max(0, len(self.memory.tier_doc(tier)) - state.started_items)
            done = state.bytes_done + state.partial_bytes
            per_item = state.bytes_done / items_done if items_done else 0.0
            estimate = max(done, int(per_item * state.items_total))
            sliced.append(
                TransferProgress(peer, tier, done, estimate, state.items_total, items_done)
            )
        return sliced + list(self._incoming.values())

    # ----------------------------------------------------------------- sending

    def _send(
        self,
        peer_id: str,
        message: Message,
        priority: Priority = Priority.NORMAL,
        flags: int = Flags.NONE,
    ) -> Send:
        frame = encode_message(
            message, priority=priority, timestamp_ns=int(self._now * 1e9), flags=flags
        )
        return self._count(Send(peer_id, frame, priority))

    def _count(self, send: Send) -> Send:
        self._last_sent[send.peer_id] = self._now
        self.counters.frames_out += 1
        self.counters.bytes_out += len(send.frame)
        return send

    def _send_sync(
        self, peer_ids: Iterable[str], message: MemorySync, priority: Priority, flags: int
    ) -> list[Effect]:
        """Send a MEMORY_SYNC, chunked when its body is over one frame; cache chunks."""
        targets = list(peer_ids)
        if not targets:
            return []
        if len(message.body) <= self._max_chunk:
            frame = encode_message(
                message, priority=priority, timestamp_ns=int(self._now * 1e9), flags=flags
            )
            return [self._count(Send(p, frame, priority)) for p in targets]
        frames = [
            encode_message(
                MemorySync(
                    message.batch_id,
                    message.source,
                    message.target,
                    message.tier,
                    message.kind,
                    piece,
                    message.items,
                    chunk,
                ),
                priority=priority,
                timestamp_ns=int(self._now * 1e9),
                flags=flags,
            )
            for chunk, piece in split_body(
                message.body, max_chunk=self._max_chunk, transfer_id=message.batch_id
            )
        ]
        self._transfers[message.batch_id] = frames
        while len(self._transfers) > self.config.transfer_cache:
            self._transfers.popitem(last=False)
        return [self._count(Send(p, f, priority)) for p in targets for f in frames]

    def _new_batch_id(self) -> bytes:
        return self._rng.randbytes(16)

    # ----------------------------------------------------------------- links

    def _wanted_links(self) -> set[str]:
        membership = self.membership
        if membership.alive_count() <= self.config.full_mesh_max:
            # Small mesh: dead members too, retried every few seconds. On a real network
            # SWIM only speaks over links, so this is how a healed partition is found.
            return set(membership.alive()) | set(membership.dead())
        # Large mesh: O(links) per call, never O(members): this runs on every Tick.
        keep = {p for p in (*self._links, *self._connecting) if membership.is_live(p)}
        # Every node links to the hub, plus `random_links` random peers: links grow
        # linearly with the mesh (the hub holds one per member).
        hub = self.hub
        hub_id = hub.id if hub is not None and membership.is_live(hub.id) else None
        wanted = keep | ({hub_id} if hub_id is not None else set())
        missing = self.config.random_links - len(keep - {hub_id})
        if missing <= 0:
            return wanted
        return wanted | set(membership.sample(self._rng, missing, exclude=wanted))

    def _maintain_links(self) -> list[Effect]:
        effects: list[Effect] = []
        for peer in sorted(self._wanted_links() - self._links - set(self._connecting)):
            attempts, at = self._retry_at.get(peer, (0, 0.0))
            if self._now < at:
                continue
            self._connecting[peer] = self._now
            delay = self._backoff(attempts)
            if self.membership.state_of(peer) is MemberState.DEAD:
                delay = min(delay, self.config.dead_retry_max_s)
            self._retry_at[peer] = (attempts, self._now + delay)
            effects.append(Connect(peer))
        return effects

    def _dial_dead(self, peers: Iterable[str]) -> list[Effect]:
        """Dial a DEAD member that SWIM pings (`probe_dead`) when there is no link to it.

        A transport speaks only over links, so without this a ping to a member declared
        dead in a partition never arrives, and above `full_mesh_max` (where dead members
        are not in the wanted links) the healed sides would not find each other.
        """
        effects: list[Effect] = []
        for peer in peers:
            if (
                self.membership.state_of(peer) is MemberState.DEAD
                and peer not in self._links
                and peer not in self._connecting
                and self._now >= self._retry_at.get(peer, (0, 0.0))[1]
            ):
                attempts = self._retry_at.get(peer, (0, 0.0))[0]
                self._connecting[peer] = self._now
                delay = min(self._backoff(attempts), self.config.dead_retry_max_s)
                self._retry_at[peer] = (attempts, self._now + delay)
                effects.append(Connect(peer))
        return effects

    def _backoff(self, attempts: int) -> float:
        base = min(self.config.reconnect_max_s, self.config.reconnect_base_s * 2.0**attempts)
        return float(base * self._rng.uniform(0.5, 1.0))

    def _on_link_up(self, peer_id: str) -> list[Effect]:
        self._links.add(peer_id)
        self._connecting.pop(peer_id, None)
        self._retry_at.pop(peer_id, None)
        self.membership.add(peer_id, self._now)
        effects: list[Effect] = [
            self._send(
                peer_id,
                Hello(
                    self.node_id,
                    self.membership.incarnation,
                    self.config.tiers,
                    self.config.profile,
                    self.config.hub_eligible,
                ),
            )
        ]
        effects.extend(self._introduce_hub(peer_id))
        self._resumed &= self._incoming.keys()
        resuming: dict[str, bytes] = {}
        for (peer, transfer_id), progress in list(self._incoming.items()):
            if peer != peer_id:
                continue
            if (peer, transfer_id) in self._resumed:
                # Resumed once already and still incomplete: the sender could not resume
                # it (it restarted, say). Pull afresh instead of asking again forever.
                self._resumed.discard((peer, transfer_id))
                del self._incoming[(peer, transfer_id)]
                self._reassembler.drop(peer, transfer_id)
                continue
            resuming[progress.tier] = transfer_id
        for tier in self._shared_tiers(peer_id):
            if tier in resuming:
                transfer_id = resuming[tier]
                # Resuming is our sync request for this tier: without this, their STEP1
                # would make us ask for the whole body again beside the resumed pieces.
                self._step1_sent[(peer_id, tier)] = self._now
                self._resumed.add((peer_id, transfer_id))
                effects.append(
                    self._send(
                        peer_id,
                        Resume(transfer_id, self._reassembler.next_missing(peer_id, transfer_id)),
                    )
                )
            else:
                effects.append(self._step1(peer_id, tier))
        return effects

    def _on_link_down(self, peer_id: str) -> list[Effect]:
        self._links.discard(peer_id)
        for key in [k for k in self._sliced_out if k[0] == peer_id]:
            del self._sliced_out[key]
        if peer_id in self._connecting:
            del self._connecting[peer_id]
            attempts, _at = self._retry_at.get(peer_id, (0, 0.0))
            self._retry_at[peer_id] = (attempts + 1, self._now + self._backoff(attempts + 1))
        return []

    def _shared_tiers(self, peer_id: str) -> list[str]:
        theirs = self._peer_tiers.get(peer_id, self.config.tiers)
        return [t for t in self.config.tiers if t in theirs]

    def _step1(self, peer_id: str, tier: str) -> Send:
        self._step1_sent[(peer_id, tier)] = self._now
        sv = self.memory.tier_doc(tier).state_vector()
        message = MemorySync(self._new_batch_id(), self.node_id, peer_id, tier, SyncKind.STEP1, sv)
        return self._send(peer_id, message)

    # ----------------------------------------------------------------- frames

    def _on_frame(self, peer_id: str, data: bytes) -> list[Effect]:
        self.counters.frames_in += 1
        self.counters.bytes_in += len(data)
        try:
            frame, message = decode_message(data, self.config.limits)
            self._heard_from(peer_id)
            return self._dispatch(peer_id, frame, message, data)
        except (FrameError, CorruptUpdateError, MemmeshError) as exc:
            return self._bad_frame(peer_id, str(exc))
        except Exception as exc:  # a peer's frame must never take the node down
            return self._bad_frame(peer_id, f"frame not handled: {type(exc).__name__}: {exc}")

    def _bad_frame(self, peer_id: str, reason: str) -> list[Effect]:
        self.counters.bad_frames += 1
        count = self.counters.bad_frames_by_peer.get(peer_id, 0) + 1
        self.counters.bad_frames_by_peer[peer_id] = count
        effects: list[Effect] = [
            Log("warning", "bad frame refused", {"peer": peer_id, "reason": reason})
        ]
        if count % self.config.bad_frames_before_disconnect == 0 and peer_id in self._links:
            self._links.discard(peer_id)
            self._retry_at[peer_id] = (count, self._now + self.config.reconnect_max_s)
            effects.append(Disconnect(peer_id, f"{count} bad frames"))
        return effects

    def _dispatch(self, peer_id: str, frame: Frame, message: Message, raw: bytes) -> list[Effect]:
        if isinstance(message, MemorySync):
            return self._on_sync(peer_id, frame, message, raw)
        if isinstance(message, Ping):
            return self._outgoing(self.membership.on_ping(peer_id, message, self._now))
        if isinstance(message, PingAck):
            return self._outgoing(self.membership.on_ping_ack(peer_id, message, self._now))
        if isinstance(message, PingReq):
            return self._outgoing(self.membership.on_ping_req(peer_id, message, self._now))
        if isinstance(message, Digest):
            return self._on_digest(peer_id, message)
        if isinstance(message, SyncAck):
            if message.node_id != peer_id:  # acks come straight from the node that committed
                return self._bad_frame(peer_id, f"ack in the name of {message.node_id}")
            for (peer, tier), sliced in self._sliced_out.items():
                if peer == peer_id and message.batch_id in sliced.in_flight:
                    sliced.in_flight.discard(message.batch_id)
                    sliced.last = self._now
                    return self._send_slices(peer, tier, sliced)
            router = self._hub_router()
            router.on_ack(message.batch_id, message.node_id)
            hub = router.hub
            hub_id = hub.id if hub is not None else None
            return list(self.acks.on_ack(message.batch_id, message.node_id, hub_id))
        if isinstance(message, HubClaim):
            return self._on_claim(peer_id, message, raw)
        if isinstance(message, HubRelay):
            return self._on_relay(peer_id, message)
        if isinstance(message, Hello):
            self._peer_tiers[peer_id] = message.tiers
            self.membership.add(peer_id, self._now)
            return []
        if isinstance(message, Resume):
            return self._on_resume(peer_id, message)
        if isinstance(message, MemoryQuery):
            return [self._answer_query(peer_id, message)]
        if isinstance(message, MemoryResponse):
            return self._on_query_response(message)
        if isinstance(
            message, StatsReport | StatsPublish | LeaseRequest | LeaseGrant | LeaseRelease
        ):
            return self._on_hub_message(peer_id, message)
        return [Log("info", "peer reported an error", {"peer": peer_id, "error": str(message)})]

    def _outgoing(self, outgoing: list[Outgoing]) -> list[Effect]:
        # Failure-detector traffic rides the urgent channel: behind megabytes of sync data
        # a ping arrives late and a busy peer is wrongly declared dead.
        return [self._send(o.peer_id, o.message, Priority.CRITICAL) for o in outgoing]

    # ----------------------------------------------------------------- sync

    def _on_sync(
        self,
        peer_id: str,
        frame: Frame,
        message: MemorySync,
        raw: bytes,
        *,
        forward: bool = True,
    ) -> list[Effect]:
        """Apply a MEMORY_SYNC; flood a broadcast update on unless `forward` is False (relayed)."""
        effects: list[Effect] = []
        flooded = message.kind is SyncKind.UPDATE and message.target == BROADCAST
        if flooded:
            key = message.batch_id + (
                message.chunk.index.to_bytes(4, "big") if message.chunk else b""
            )
            if key in self._seen:
                self.counters.duplicates_dropped += 1
                # Ack again only a whole batch committed here: not one held back behind a
                # missing update, nor a piece of a chunked body (acked once, when complete).
                if self._seen[key]:
                    return self._ack_if_asked(frame.flags, message)
                return []
            self._remember(key)
        body = message.body
        was_sliced = (peer_id, message.tier) in self._sliced_in
        sliced = self._track_slice(peer_id, frame, message)
        if message.chunk is not None:
            # A flooded body's pieces may come over different links (deduplicated per
            # piece above), so reassemble them under their origin, not the neighbour.
            assembled = self._collect_chunk(
                message.source if flooded else peer_id, message, sliced=sliced is not None
            )
            if flooded and forward:
                effects.extend(self._forward(peer_id, message, raw, frame.priority))
            if assembled is None:
                return effects
            body = assembled
        if message.tier not in self.config.tiers:
            if flooded and forward and message.chunk is None:
                effects.extend(self._forward(peer_id, message, raw, frame.priority))
            return effects
        if message.kind is SyncKind.STEP1:
            return effects + self._answer_step1(peer_id, message.tier, body)
        doc = self.memory.tier_doc(message.tier)
        held, dropped = doc.held_updates, doc.gaps_dropped
        change = self.memory.apply_remote(message.tier, body, int(self._now * 1000))
        self.counters.syncs_applied += 1
        if sliced is not None:
            sliced.bytes_done += len(body)
            sliced.partial_bytes = 0
        effects.extend(self._persist(change))
        if message.kind is SyncKind.STEP2:
            effects.extend(self._log_step2(peer_id, message, change, sliced, was_sliced))
        seen_key = key if flooded and message.chunk is None else None
        if not doc.held_now:
            # Integrated and persisted. An update held back until a missing one arrives is
            # not committed yet: acking it would claim durability it does not have.
            if seen_key is not None:
                self._seen[seen_key] = True
            effects.extend(self._ack_if_asked(frame.flags, message))
        elif message.kind is SyncKind.UPDATE:
            self._held_batches[(message.tier, body)] = _HeldBatch(seen_key, frame.flags, message)
            while len(self._held_batches) > MAX_HELD_UPDATES:
                self._held_batches.popitem(last=False)
        effects.extend(self._acks_for_released(message.tier))
        if flooded and forward and message.chunk is None:
            effects.extend(self._forward(peer_id, message, raw, frame.priority))
        if flooded:
            router = self._hub_router()
            if forward:
                router.counters.p2p_received += 1
            else:
                router.counters.relayed_received += 1
            router.stats.on_batch(message.tier, message.items, relayed=not forward)
        if self.memory.tier_doc(message.tier).needs_sync and peer_id in self._links:
            # A gap this frame opened is repaired at once; an older one at most once per
            # guard interval: an update held for a predecessor nobody has (a forged one)
            # keeps needs_sync true, and a STEP1 per STEP2 would loop between two nodes.
            new_gap = doc.held_updates > held or doc.gaps_dropped != dropped
            sent = self._step1_sent.get((peer_id, message.tier))
            if new_gap or sent is None or self._now - sent > self.config.step1_guard_s:
                effects.append(self._step1(peer_id, message.tier))
        if message.kind is SyncKind.STEP2:
            doc.answer_applied()
        return effects

    def _log_step2(
        self,
        peer_id: str,
        message: MemorySync,
        change: Change,
        sliced: _SlicedIn | None,
        was_sliced: bool,
    ) -> list[Effect]:
        """Log what a sync answer brought: a big initial sync by tenths, else items changed."""
        tier = message.tier
        if sliced is not None:  # more slices follow
            total = max(1, sliced.items_total)
            done = max(0, len(self.memory.tier_doc(tier)) - sliced.started_items)
            tenths = min(10, 10 * done // total)
            if tenths <= sliced.tenths_logged:
                return []
            sliced.tenths_logged = tenths
            detail = {"peer": peer_id, "tier": tier, "items": f"{done}/{sliced.items_total}"}
            detail["bytes"] = str(sliced.bytes_done)
            return [Log("info", "initial sync in progress", detail)]
        changed = len({event.item_id for event in change.events})
        if was_sliced:
            detail = {"peer": peer_id, "tier": tier, "items": str(message.items)}
            return [Log("info", "initial sync done", detail)]
        if changed:
            return [Log("info", "synced", {"peer": peer_id, "tier": tier, "items": str(changed)})]
        return []

    def _track_slice(self, peer_id: str, frame: Frame, message: MemorySync) -> _SlicedIn | None:
        """Note progress of a sliced initial sync; return its state while slices follow."""
        if message.kind is not SyncKind.STEP2 or message.tier not in self.config.tiers:
            return None
        key = (peer_id, message.tier)
        if not frame.flags & Flags.REQUIRES_ACK:  # a single body, or the last slice
            if message.chunk is None or message.chunk.index == message.chunk.total - 1:
                self._sliced_in.pop(key, None)
            return None
        state = self._sliced_in.get(key)
        if state is None or self._now - state.last > self.config.step2_idle_s:
            state = self._sliced_in[key] = _SlicedIn(len(self.memory.tier_doc(message.tier)))
        state.items_total = message.items
        state.last = self._now
        return state

    def _collect_chunk(self, peer_id: str, message: MemorySync, *, sliced: bool) -> bytes | None:
        chunk = message.chunk
        assert chunk is not None
        key = (peer_id, chunk.transfer_id)
        assembled = self._reassembler.add(peer_id, chunk, message.body)
        if sliced:
            # Progress is the sliced sync's; after a break a new STEP1 continues it.
            if assembled is None:
                state = self._sliced_in[(peer_id, message.tier)]
                state.partial_bytes = self._reassembler.progress(peer_id, chunk.transfer_id)[0]
            return assembled
        self._resumed.discard(key)  # it progressed: resumable again at the next link-up
        if assembled is None:
            done, total = self._reassembler.progress(peer_id, chunk.transfer_id)
            self._incoming[key] = TransferProgress(
                peer_id, message.tier, done, total, message.items
            )
        else:
            self._incoming.pop(key, None)
        if len(self._incoming) > len(self._reassembler):  # it evicted a transfer: follow it
            holds = self._reassembler.holds
            self._incoming = {k: v for k, v in self._incoming.items() if holds(*k)}
        return assembled

    def _acks_for_released(self, tier: str) -> list[Effect]:
        """Ack the held batches the last apply of `tier` released (after its Persist)."""
        if not self._held_batches:
            return []
        doc = self.memory.tier_doc(tier)
        for update in doc.dropped:  # the tier gave up holding it: a repair brings it in
            self._held_batches.pop((tier, update), None)
        effects: list[Effect] = []
        for update in doc.released:
            held = self._held_batches.pop((tier, update), None)
            if held is None:
                continue
            if held.seen_key is not None and held.seen_key in self._seen:
                self._seen[held.seen_key] = True  # a repeat of it is acked again
            effects.extend(self._ack_if_asked(held.flags, held.message))
        return effects

    def _ack_if_asked(self, flags: int, message: MemorySync) -> list[Effect]:
        if not flags & Flags.REQUIRES_ACK or message.source == self.node_id:
            return []
        if (
            message.target == BROADCAST
            and not flags & Flags.ACK_ALL
            and message.source not in self._links
            and not self.is_hub
        ):
            # `peer` needs one ack: the origin's own links answer, the rest of the flood
            # stays silent instead of acking from every node of the mesh. The hub always
            # answers: a `hub` write waits for it, linked to the origin yet or not.
            return []
        return [self._send(message.source, SyncAck(message.batch_id, self.node_id))]

    def _forward(
        self, sender: str, message: MemorySync, raw: bytes, priority: Priority
    ) -> list[Effect]:
        """Flood a broadcast update to every other link (dedup by batch id stops loops)."""
        return [
            self._count(Send(peer, raw, priority))
            for peer in sorted(self._links)
            if peer not in (sender, message.source)
        ]

    def _remember(self, key: bytes) -> None:
        self._seen[key] = False
        while len(self._seen) > self.config.dedup_capacity:
            self._seen.popitem(last=False)

    def _answer_step1(self, peer_id: str, tier: str, state_vector: bytes) -> list[Effect]:
        if self._slices_flowing(self._sliced_out.get((peer_id, tier))):
            # Its state vector lags the slices in flight: answering would send them again.
            return []
        doc = self.memory.tier_doc(tier)
        try:
            diff = doc.encode_diff(state_vector)
            plan = None
            if len(diff) > self.config.step2_batch_bytes:
                known = decode_state_vector(state_vector)
                plan = plan_slices(diff, self.config.step2_batch_bytes, known)
        except ValueError as exc:
            return self._bad_frame(peer_id, f"bad state vector: {exc}")
        if plan is not None and len(plan) > 1:
            # Replaces a stalled sliced sync (if any): this STEP1 says what arrived.
            sliced = self._sliced_out[(peer_id, tier)] = _SlicedSync(plan, len(doc), self._now)
            effects = self._send_slices(peer_id, tier, sliced)
        else:
            message = MemorySync(
                self._new_batch_id(), self.node_id, peer_id, tier, SyncKind.STEP2, diff, len(doc)
            )
            effects = self._send_sync([peer_id], message, Priority.NORMAL, Flags.NONE)
        sent = self._step1_sent.get((peer_id, tier))
        if (
            sent is None or self._now - sent > self.config.step1_guard_s
        ) and not self._slices_flowing(self._sliced_in.get((peer_id, tier))):
            effects.append(self._step1(peer_id, tier))  # pull too: push-pull exchange
        return effects

    def _slices_flowing(self, state: _SlicedSync | _SlicedIn | None) -> bool:
        """Return True while a sliced sync (either way) progressed within `step2_idle_s`."""
        return state is not None and self._now - state.last <= self.config.step2_idle_s

    def _send_slices(self, peer_id: str, tier: str, sliced: _SlicedSync) -> list[Effect]:
        """Send slices until `step2_window` await acks; the last one asks for none."""
        effects: list[Effect] = []
        total = len(sliced.plan)
        while sliced.next < total and len(sliced.in_flight) < self.config.step2_window:
            last = sliced.next == total - 1
            batch_id = self._new_batch_id()
            body = sliced.plan.slice(sliced.next)
            sliced.next += 1
            message = MemorySync(
                batch_id, self.node_id, peer_id, tier, SyncKind.STEP2, body, sliced.items
            )
            flags = Flags.NONE if last else Flags.REQUIRES_ACK
            effects.extend(self._send_sync([peer_id], message, Priority.NORMAL, flags))
            if last:
                del self._sliced_out[(peer_id, tier)]
            else:
                sliced.in_flight.add(batch_id)
        return effects

    def _on_resume(self, peer_id: str, message: Resume) -> list[Effect]:
        frames = self._transfers.get(message.transfer_id)
        if frames is None:
            # Too old to resume: start a fresh exchange instead.
            return [self._step1(peer_id, t) for t in self._shared_tiers(peer_id)]
        return [
            self._count(Send(peer_id, f, Priority.NORMAL)) for f in frames[message.next_index :]
        ]

    def _on_digest(self, peer_id: str, message: Digest) -> list[Effect]:
        effects: list[Effect] = []
        for tier, root in message.roots:
            if tier in self.config.tiers and root != self.memory.digest(tier).root():
                if self._slices_flowing(self._sliced_in.get((peer_id, tier))):
                    continue  # the digest differs because slices are still arriving
                effects.append(self._step1(peer_id, tier))
        return effects

    def _cut_off_from_hub(self) -> bool:
        """True if a hub serves but we have no link to it: its fan-out never reaches us."""
        hub = self._hub_router().hub
        return hub is not None and hub.id != self.node_id and hub.id not in self._links

    def _anti_entropy_interval(self) -> float:
        """Digests go out every interval; often while cut off from the hub (they bring its
        relayed updates by another link: receivers do not forward relayed frames)."""
        interval = self.config.anti_entropy_interval_s
        if self._cut_off_from_hub():
            interval = min(interval, 2 * self.config.hub.relay_ack_timeout_s)
        return interval

    def _anti_entropy(self) -> list[Effect]:
        """Send our tier roots to one random member (dead ones too: a healed partition).

        While cut off from the hub, to a random linked peer instead: it has what the hub
        fanned out.
        """
        peer = self.membership.random_member(self._rng)
        if self._cut_off_from_hub() and self._links:
            peer = self._rng.choice(sorted(self._links))
        if peer is None:
            return []
        roots = tuple((t, self.memory.digest(t).root()) for t in self.config.tiers)
        self.counters.digests_sent += 1
        return [self._send(peer, Digest(roots))]

    # ----------------------------------------------------------------- writes

    def _persist(self, change: Change) -> list[Effect]:
        effects: list[Effect] = []
        if not change.empty or change.events:
            effects.append(Persist(change))
        if change.events:
            effects.append(Emit(change.events))
        return effects

    def _on_write(self, request: WriteRequested) -> list[Effect]:
        now_ms = int(self._now * 1000)
        changes: list[Change] = []
        try:
            if request.puts:
                changes.append(self.memory.put_many(request.puts, now_ms))
            changes.extend(self.memory.delete(i, now_ms) for i in request.delete_ids)
            changes.extend(self.memory.move(i, t, now_ms) for i, t in request.moves)
        except (ValueError, KeyError, MemmeshError) as exc:
            # The parts before the bad one are applied: persist and replicate them like any
            # write (no ack is awaited), then say the write failed part way.
            applied: list[Effect] = []
            for change in changes:
                applied.extend(self._persist(change))
            done = tuple(u for change in changes for u in change.updates)
            if self._outbox.add(done, request.priority, self._now):
                applied.extend(self._flush())
            return [*applied, WriteFailed(request.request_id, str(exc), applied=bool(changes))]
        effects: list[Effect] = []
        updates: list[tuple[str, bytes]] = []
        items: list[MemoryItem] = []
        for change in changes:
            effects.extend(self._persist(change))
            updates.extend(change.updates)
            items.extend(change.items)
        waiting = None
        if request.ack is AckLevel.LOCAL:
            effects.append(WriteAcked(request.request_id, tuple(items)))
        else:
            tiers = frozenset(t for t, _u in updates)
            self._write_started[request.request_id] = (self._now, tiers)
            waiting = WaitingWrite(
                request.request_id,
                request.ack,
                {t for t, _u in updates},
                request.timeout_s,
                tuple(items),
            )
        urgent = self._outbox.add(tuple(updates), request.priority, self._now, waiting)
        if urgent or (waiting is not None and not updates):
            effects.extend(self._flush())
        return effects

    def _on_import(self, request: ImportRequested) -> list[Effect]:
        """Merge an imported update like a write: persist, ack, queue what it added here."""
        try:
            doc = self.memory.tier_doc(request.tier)
            before = doc.state_vector()
            change = self.memory.apply_remote(request.tier, request.update, int(self._now * 1000))
        except (ValueError, KeyError, MemmeshError) as exc:  # the tier is unchanged
            return [WriteFailed(request.request_id, str(exc), applied=False)]
        effects = self._persist(change)
        effects.extend(self._acks_for_released(request.tier))
        changed = tuple(sorted({event.item_id for event in change.events}))
        effects.append(WriteAcked(request.request_id, changed_ids=changed))
        if change.updates:
            # Only what is new here, not the whole file: an export mostly holds what the
            # mesh has already. Its structs are this change's, persisted above; its delete
            # set is the document's, committed before or with this change.
            added = ((request.tier, doc.encode_diff(before)),)
            if self._outbox.add(added, request.priority, self._now):
                effects.extend(self._flush())
        return effects

    def _flush(self) -> list[Effect]:
        batches, writes = self._outbox.flush()
        effects: list[Effect] = []
        batch_of: dict[str, bytes] = {}
        ack_wanted = any(w.level is not AckLevel.LOCAL for w in writes)
        # ACK_ALL also when a `hub` write goes out before any hub is known: whichever node
        # is elected later must be among the ackers, or the write waits until it times out.
        ack_all = any(
            w.level is AckLevel.ALL or (w.level is AckLevel.HUB and self.hub is None)
            for w in writes
        )
        for batch in batches:
            batch_id = self._new_batch_id()
            batch_of[batch.tier] = batch_id
            self._remember(batch_id)
            message = MemorySync(
                batch_id,
                self.node_id,
                BROADCAST,
                batch.tier,
                SyncKind.UPDATE,
                batch.body,
                batch.updates,
            )
            flags = Flags.BATCHED | (Flags.REQUIRES_ACK if ack_wanted else Flags.NONE)
            flags |= Flags.ACK_ALL if ack_all else Flags.NONE
            effects.extend(self._route_update(message, batch.priority, flags))
        router = self._hub_router()
        for write in writes:
            if write.level is AckLevel.HUB and router.is_hub:
                # Committed here, and here is the hub.
                effects.append(WriteAcked(write.request_id, write.items, (self.node_id,)))
                continue
            # "all" means every live member that replicates what the write touched: a
            # phone keeping only L1 never acks an L3 write.
            required = (
                [
                    p
                    for p in self.membership.alive()
                    if p != self.node_id and write.tiers <= set(self._shared_tiers(p))
                ]
                if write.level is AckLevel.ALL
                else []
            )
            effects.extend(
                self.acks.wait(
                    request_id=write.request_id,
                    level=write.level,
                    batch_ids=[batch_of[t] for t in write.tiers if t in batch_of],
                    required=required,
                    deadline=self._now + write.timeout_s,
                    items=write.items,
                )
            )
        return effects

    # ----------------------------------------------------------------- queries

    def _on_query_request(self, request: QueryRequested) -> list[Effect]:
        query_id = self._next_query_id
        self._next_query_id += 1
        self._queries[query_id] = (request.request_id, self._now + request.timeout_s)
        vector = b""
        if request.vector is not None:
            vector = np.asarray(request.vector, dtype="<f4").tobytes()
        message = MemoryQuery(query_id, request.tier, vector, request.k, request.ids)
        try:
            return [self._send(request.peer_id, message, Priority.HIGH)]
        except MessageError as exc:  # e.g. more ids than a query may carry: the caller's error
            del self._queries[query_id]
            return [QueryAnswered(request.request_id, False, error=str(exc))]

    def _answer_query(self, peer_id: str, query: MemoryQuery) -> Send:
        if query.tier not in self.config.tiers:
            return self._send(
                peer_id, MemoryResponse(query.query_id, False, error="tier not replicated here")
            )
        hits: list[tuple[str, float]] = []
        try:
            if query.vector:
                vector = np.frombuffer(query.vector, dtype="<f4")
                found = self.memory.search(vector, k=min(query.k, MAX_QUERY_K), tiers=[query.tier])
                hits = [(h.item_id, h.score) for h in found]
        except ValueError as exc:
            return self._send(peer_id, MemoryResponse(query.query_id, False, error=str(exc)))
        # Fit one frame (records can be up to ~1 MiB each): entries that would go over are
        # left out, and the answer says how many. Sizes are counted before compression.
        wanted = dict.fromkeys([*query.ids, *(h for h, _s in hits)])  # each id answered once
        worst = MemoryResponse(query.query_id, True, error=_left_out(len(wanted) + len(hits)))
        room = self._one_frame_cap() - response_overhead(worst)
        slots = min(self.config.limits.max_batch_count, DEFAULT_LIMITS.max_batch_count)
        kept_hits: list[tuple[str, float]] = []
        for hit in hits:  # best first: keep the best that fit
            size = response_entry_bytes(*hit)
            if size > room or not slots:
                break
            kept_hits.append(hit)
            room, slots = room - size, slots - 1
        left_out = len(hits) - len(kept_hits)
        records: list[tuple[str, str]] = []
        for item_id in wanted:
            if item_id not in self.memory:
                continue
            item = self.memory.get(item_id)
            if item.tier != query.tier:
                continue
            if len(item.content) > room:  # the content alone is over: skip building it
                left_out += 1
                continue
            record = to_record(item)
            size = response_entry_bytes(item_id, record)
            if size <= room and slots:
                records.append((item_id, record))
                room, slots = room - size, slots - 1
            else:
                left_out += 1
        response = MemoryResponse(
            query.query_id, True, tuple(records), tuple(kept_hits), _left_out(left_out)
        )
        return self._send(peer_id, response)

    def _on_query_response(self, response: MemoryResponse) -> list[Effect]:
        pending = self._queries.pop(response.query_id, None)
        if pending is None:
            return []
        request_id, _deadline = pending
        if not response.ok:
            return [QueryAnswered(request_id, False, error=response.error)]
        return [QueryAnswered(request_id, True, result=response, error=response.error)]

    # ----------------------------------------------------------------- timers

    def _on_tick(self) -> list[Effect]:
        now = self._now
        outgoing = self.membership.tick(now)
        effects: list[Effect] = self._outgoing(outgoing)
        effects.extend(self._dial_dead(o.peer_id for o in outgoing))
        due = self._outbox.due
        if due is not None and now >= due:
            effects.extend(self._flush())
        if self._next_ae is not None and self._cut_off_from_hub():
            self._next_ae = min(self._next_ae, now + self._anti_entropy_interval())
        if self._next_ae is not None and now >= self._next_ae:
            self._next_ae = now + self._anti_entropy_interval()
            effects.extend(self._anti_entropy())
        effects.extend(self.acks.expire(now))
        effects.extend(self._hub_tick())
        for query_id, (request_id, deadline) in list(self._queries.items()):
            if now >= deadline:
                del self._queries[query_id]
                effects.append(QueryAnswered(request_id, False, error="query timed out"))
        for peer, (attempts, at) in list(self._retry_at.items()):
            if peer in self._connecting and now >= at:
                del self._connecting[peer]  # the attempt never completed: retry later
                self._retry_at[peer] = (attempts + 1, now + self._backoff(attempts + 1))
        effects.extend(self._maintain_links())
        for peer, (_attempts, at) in list(self._retry_at.items()):
            if peer not in self._connecting and now >= at:
                # Backoff over but no new attempt: the peer is no longer wanted (dead, or
                # not picked for a partial mesh). Keeping the entry would pin next_deadline
                # in the past and busy-loop the driver.
                del self._retry_at[peer]
        return effects

    def _membership_changes(self) -> list[Effect]:
        effects: list[Effect] = []
        for change in self.membership.changes():
            effects.append(
                Log(
                    "info",
                    "member state changed",
                    {
                        "peer": change.node_id,
                        "from": _STATE_NAMES[change.old] if change.old else "NEW",
                        "to": _STATE_NAMES[change.new],
                    },
                )
            )
            if change.new in (MemberState.DEAD, MemberState.LEFT):
                alive = [p for p in self.membership.alive() if p != self.node_id]
                self._hub_router().election.on_member_dead(change.node_id, self._now, alive)
                if change.node_id in self._links:
                    self._links.discard(change.node_id)
                    effects.append(Disconnect(change.node_id, change.new.name.lower()))
                effects.extend(self.acks.forget_peer(change.node_id))
        if effects:
            effects.extend(self._maintain_links())
        return effects


def _left_out(count: int) -> str:
    """Return the note of a partial MEMORY_RESPONSE for `count` entries left out ("" for none)."""
    return f"partial: {count} entries left out to fit one frame" if count else ""
