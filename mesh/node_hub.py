"""The Node's hub role: claims, relayed frames, stats and leases (mixed into `mesh.node.Node`).

The decisions live in `hub_role/` (pure); this mixin turns them into effects. It relies
on the Node's attributes and helpers declared below.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from hub_role.election import MAX_TERM, HubInfo
from hub_role.leases import LeaseLimitReached, LeaseTable
from hub_role.relay import Envelope, Push
from hub_role.router import RELAY_OVERHEAD, HubCounters, HubRouter, PendingRelay
from hub_role.stats import MeshStats
from mesh.acks import AckTracker
from mesh.chunking import FRAME_OVERHEAD
from mesh.codec import U64, encode_message
from mesh.config import NodeConfig
from mesh.effects import Effect, Emit, LeaseAnswered, Log, Send, WriteAcked, WriteFailed
from mesh.frames import DEFAULT_LIMITS, Flags, Frame, Priority
from mesh.inputs import LeaseReleased, LeaseRequested
from mesh.membership import Membership
from mesh.messages import (
    HubClaim,
    HubRelay,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    MemorySync,
    Message,
    StatsPublish,
    StatsReport,
    SyncAck,
)
from mesh.outbox import Outbox

MAX_LEASE_NAME = 128
ALWAYS_SENT_HEARTBEATS = 4  # claim seqs a hub sends to every link before skipping any
MAX_LEASE_TTL_S = 86_400.0  # a day; the wire allows up to 2**32 - 1 ms
# A refused LEASE_GRANT naming this holder (no node id is "*") means the hub refused a new
# name because its lease table, or the requester, holds as many leases as allowed
# (`hub_role.leases.MAX_LEASES`, `MAX_LEASES_PER_HOLDER`): the wire has no error field.
LEASE_LIMIT_HOLDER = "*"
LEASE_LIMIT_ERROR = "too many leases held at the hub (by this node or in all): release some"
# Likewise: the hub's term is MAX_TERM (a member's forged claim), so no token is safe to give.
LAST_TERM_HOLDER = "!"
LAST_TERM_ERROR = "no lease: the hub's term is at its maximum (a forged claim?)"


class HubRole:
    """Hub-role behaviour of the Node; see docs/ARCHITECTURE.md, "Hub role"."""

    # Provided by Node.
    node_id: str
    config: NodeConfig
    membership: Membership
    acks: AckTracker
    _links: set[str]
    _now: float
    _last_sent: dict[str, float]
    _peer_tiers: dict[str, tuple[str, ...]]
    _seen: OrderedDict[bytes, bool]
    _outbox: Outbox
    _router: HubRouter | None
    _write_started: dict[int, tuple[float, frozenset[str]]]
    _resolver_names: dict[str, str]

    if TYPE_CHECKING:

        def _send(
            self,
            peer_id: str,
            message: Message,
            priority: Priority = Priority.NORMAL,
            flags: int = Flags.NONE,
        ) -> Send: ...

        def _count(self, send: Send) -> Send: ...

        def _send_sync(
            self, peer_ids: list[str], message: MemorySync, priority: Priority, flags: int
        ) -> list[Effect]: ...

        def _forward(
            self, sender: str, message: MemorySync, raw: bytes, priority: Priority
        ) -> list[Effect]: ...

        def _on_sync(
            self,
            peer_id: str,
            frame: Frame,
            message: MemorySync,
            raw: bytes,
            *,
            forward: bool = True,
        ) -> list[Effect]: ...

        def _bad_frame(self, peer_id: str, reason: str) -> list[Effect]: ...

        def _maintain_links(self) -> list[Effect]: ...

        def _shared_tiers(self, peer_id: str) -> list[str]: ...

    # ----------------------------------------------------------------- reading

    @property
    def hub(self) -> HubInfo | None:
        """Return the hub this node follows, or None: `.id`, `.term`, `.score`, `.since`.

        `since` is this node's `now` (the driver's clock) when it adopted that hub id; it
        is the hub itself when `hub.id == node.node_id`.
        """
        return None if self._router is None else self._router.hub

    @property
    def is_hub(self) -> bool:
        """Return True if this node holds the hub role."""
        return self._router is not None and self._router.is_hub

    @property
    def hub_counters(self) -> HubCounters:
        """Return the hub-role counters (relayed vs P2P batches, refusals, fallbacks)."""
        return self._router.counters if self._router is not None else HubCounters()

    @property
    def claims_rejected(self) -> dict[str, int]:
        """Return hub claims ignored, by reason: bad_signature, key_mismatch, stale_term."""
        return dict(self._router.election.rejected) if self._router is not None else {}

    def mesh_stats(self) -> MeshStats | None:
        """Return the hub's latest mesh-wide statistics as this node knows them, or None.

        Every node reports per-tier figures to the hub every `config.hub.stats_interval_s`;
        the hub publishes every fresh report to every node at the same interval. At the
        hub this is its own latest publish. `.reports` holds one `StatsReport` per node,
        `.totals()` the mesh-wide P2P share, conflicts by resolution and backlog.
        """
        return None if self._router is None else self._router.view

    def relay_backlog(self) -> dict[str, int]:
        """Return the envelopes this node holds as the hub, per priority (and deferred)."""
        return self._router.queue.backlog() if self._router is not None else {}

    # ----------------------------------------------------------------- hub role

    def _hub_router(self) -> HubRouter:
        assert self._router is not None, "handle() creates the router"
        return self._router

    def _route_update(self, message: MemorySync, priority: Priority, flags: int) -> list[Effect]:
        """Send a local update batch: through the hub (signed) or flooded peer to peer.

        HIGH/NORMAL/LOW go to the hub when one is linked and this node can sign; CRITICAL
        and EMERGENCY, bodies too large for one envelope, and everything while no hub is
        reachable are flooded over direct links (the hub, linked to every node, gets a copy).
        """
        router = self._hub_router()
        hub_id = router.route(self._links)
        relayable = router.can_sign() and (hub_id is not None or router.is_hub)
        if not priority.urgent and relayable:
            inner = self._relay_frame(message, priority, flags)
            if inner is not None:
                envelope = router.seal(inner)
                router.counters.relayed_sent += 1
                router.stats.on_batch(message.tier, message.items, relayed=True)
                if hub_id is None:  # we are the hub: fan our own update out by priority
                    return self._queue_relay(envelope, priority, message.tier) or []
                router.track(hub_id, message, priority, flags, self._now)
                return [self._send(hub_id, envelope, priority)]
        peers = [p for p in sorted(self._links) if message.tier in self._shared_tiers(p)]
        router.counters.p2p_sent += 1
        router.stats.on_batch(message.tier, message.items, relayed=False)
        hub = router.hub
        if priority.urgent and hub is not None and hub.id in peers:
            router.counters.hub_notified += 1
        return self._send_sync(peers, message, priority, flags)

    def _one_frame_cap(self) -> int:
        """Return the largest frame both `_send` (default limits) and receivers accept."""
        return min(self.config.limits.max_frame_bytes, DEFAULT_LIMITS.max_frame_bytes)

    def _relay_frame(self, message: MemorySync, priority: Priority, flags: int) -> bytes | None:
        """Return `message` encoded to travel in one HUB_RELAY, or None if it cannot fit one.

        An envelope carries one whole frame (no chunks), so a batch whose frame would be
        over the cap goes the direct way instead: `_send_sync` floods it chunked, as every
        batch is sent without a hub. The size is checked here, never left to raise: before,
        `encode_message` raised MessageError out of `handle(Tick)` for such a batch after
        it had left the outbox, so it was never sent (and the daemon's timer task died).
        """
        limits = self.config.limits
        cap = self._one_frame_cap() - RELAY_OVERHEAD
        if len(message.body) + FRAME_OVERHEAD > limits.max_decompressed_bytes:
            return None  # no receiver would unpack it whole, however well it compresses
        # Encode without the frame cap (only the checks a receiver makes on the content),
        # then measure: a large body may still compress to fit one envelope.
        ceiling = max(limits.max_frame_bytes, limits.max_decompressed_bytes) + FRAME_OVERHEAD
        unbounded = replace(limits, max_frame_bytes=ceiling)
        inner = encode_message(
            message,
            priority=priority,
            timestamp_ns=int(self._now * 1e9),
            flags=flags,
            limits=unbounded,
        )
        return inner if len(inner) <= cap else None

    def _queue_relay(
        self, envelope: HubRelay, priority: Priority, tier: str, *, acked: bool = True
    ) -> list[Effect] | None:
        """As the hub: queue an envelope for fan-out (RELAYED), then send what is due.

        None when its origin (not this node) already has too many envelopes waiting on its
        rate (`Push.OVER_SHARE`) and it is not `acked` yet: left unacked, the origin floods
        it peer to peer itself. An acked one (or our own) waits on the rate all the same.
        """
        router = self._hub_router()
        outer = encode_message(
            envelope, priority=priority, timestamp_ns=int(self._now * 1e9), flags=Flags.RELAYED
        )
        queued = Envelope(envelope.origin, priority, outer, self._now, tier)
        must_go = acked or envelope.origin == self.node_id
        pushed = router.queue.push(queued, self._now, beyond_share=must_go)
        if pushed is Push.OVER_SHARE:
            return None
        if pushed is Push.FULL:  # fan out at once rather than lose it
            return self._fan_out([queued])
        return self._drain_relay()

    def _drain_relay(self, *, everything: bool = False) -> list[Effect]:
        router = self._hub_router()
        if not len(router.queue):
            return []
        return self._fan_out(router.queue.pop_ready(self._now, everything=everything))

    def _fan_out(self, envelopes: list[Envelope]) -> list[Effect]:
        router = self._hub_router()
        effects: list[Effect] = []
        for envelope in envelopes:
            router.counters.fanned_out += 1
            effects.extend(
                self._count(Send(peer, envelope.data, envelope.priority))
                for peer in sorted(self._links)
                if peer != envelope.origin and self._replicates(peer, envelope.tier)
            )
        return effects

    def _replicates(self, peer_id: str, tier: str | None) -> bool:
        """True unless `peer_id` told us (HELLO) it does not replicate `tier`."""
        theirs = self._peer_tiers.get(peer_id)
        return tier is None or theirs is None or tier in theirs

    def _on_relay(self, peer_id: str, envelope: HubRelay) -> list[Effect]:
        """Verify a relayed frame against its origin's key, apply it, and fan out if hub."""
        router = self._hub_router()
        opened = router.open(envelope, self.config.limits)
        if isinstance(opened, str):
            return self._bad_frame(peer_id, f"relayed frame refused: {opened}")
        inner_frame, inner = opened
        fresh = inner.batch_id not in self._seen
        effects = self._on_sync(peer_id, inner_frame, inner, envelope.frame, forward=False)
        if peer_id != envelope.origin:
            return effects  # fanned out by the hub: apply only
        # Handed to us by its origin, as its hub: ack the commit (the origin stops tracking
        # it), then fan it out; if we are not the hub after all, flood it on instead. An
        # origin over its share of the queue gets no ack: it floods the batch itself.
        onward: list[Effect] = []
        if fresh and router.is_hub:
            acked = bool(inner_frame.flags & Flags.REQUIRES_ACK)  # _on_sync acked it already
            queued = self._queue_relay(envelope, inner_frame.priority, inner.tier, acked=acked)
            if queued is None:
                return effects
            onward = queued
        elif fresh:
            onward = self._forward(peer_id, inner, envelope.frame, inner_frame.priority)
        if self._seen.get(inner.batch_id) and not inner_frame.flags & Flags.REQUIRES_ACK:
            effects.append(self._send(envelope.origin, SyncAck(inner.batch_id, self.node_id)))
        effects.extend(onward)
        return effects

    def _on_claim(self, peer_id: str, claim: HubClaim, raw: bytes) -> list[Effect]:
        outcome = self._hub_router().election.on_claim(claim, self._now)
        effects: list[Effect] = []
        if outcome.forward:
            effects.extend(
                self._count(Send(p, raw, Priority.CRITICAL))
                for p in sorted(self._links)
                if p not in (peer_id, claim.node_id)
            )
        effects.extend(self._flood_claims(outcome.claims))
        return effects

    def _flood_claims(self, claims: list[HubClaim]) -> list[Effect]:
        # Claims ride the urgent channel, like SWIM: a late heartbeat looks like a dead hub.
        effects: list[Effect] = []
        for claim in claims:
            peers = sorted(self._links)
            if claim.node_id == self.node_id and claim.seq > ALWAYS_SENT_HEARTBEATS:
                # A heartbeat of our established term: any frame proves we are alive (see
                # `_heard_from`), so a link we sent something to within the last interval
                # skips it. Gaps stay under 2 heartbeat intervals, below the timeout. The
                # first heartbeats of a term go to every link, so every follower holds an
                # established claim (seq > 2) to introduce us with: passed on to a newcomer,
                # a fresh one (seq <= 2) would look like an election it could still win.
                recent = self._now - self.config.hub.heartbeat_s
                peers = [p for p in peers if self._last_sent.get(p, -math.inf) <= recent]
            effects.extend(self._send(p, claim, Priority.CRITICAL) for p in peers)
        return effects

    def _introduce_hub(self, peer_id: str) -> list[Effect]:
        """Pass the current hub's newest signed claim to a new link.

        Heartbeats travel only over links to the hub and are not forwarded, so without this
        a newcomer linked first to other nodes would not learn of the hub before its boot
        wait ends, and would campaign against a healthy hub.
        """
        claim = None if self._router is None else self._router.election.hub_claim
        return [] if claim is None else [self._send(peer_id, claim, Priority.CRITICAL)]

    def _heard_from(self, peer_id: str) -> None:
        """A well-formed frame came over the link from `peer_id`: if it is the hub, it lives."""
        router = self._router
        if router is not None:
            hub = router.hub
            if hub is not None and hub.id == peer_id:
                router.election.vouch(self._now)

    def _reflood(self, pending: PendingRelay) -> list[Effect]:
        message = pending.message
        peers = [p for p in sorted(self._links) if message.tier in self._shared_tiers(p)]
        flags = pending.flags
        if flags & Flags.REQUIRES_ACK:
            # Every receiver acks: a `hub` write waits for the next hub, which may be
            # any node, not only one linked to us.
            flags |= Flags.ACK_ALL
        return self._send_sync(peers, message, pending.priority, flags)

    def _hub_tick(self) -> list[Effect]:
        router = self._hub_router()
        alive = [p for p in self.membership.alive() if p != self.node_id]
        hub = router.hub
        if hub is not None and hub.id not in self._links and self.membership.is_live(hub.id):
            # Heartbeats travel only over links to the hub; until we have one, SWIM's view
            # of the hub (gossiped by the others) stands in for them.
            router.election.vouch(self._now)
        effects = self._flood_claims(router.election.tick(self._now, alive))
        for pending in router.take_unacked(self._now):
            effects.extend(self._reflood(pending))
        effects.extend(self._drain_relay())
        if router.is_hub:
            router.leases.prune(self._now)  # expired leases go even if nobody asks again
        for lease_id, (request_id, name, due) in list(router.lease_pending.items()):
            if self._now >= due:
                del router.lease_pending[lease_id]
                effects.append(
                    LeaseAnswered(request_id, name, False, error="lease request timed out")
                )
        if self._now >= router.next_report:
            router.next_report = self._now + self.config.hub.stats_interval_s
            effects.extend(self._report_stats())
        return effects

    def _report_stats(self) -> list[Effect]:
        """Report our figures to the hub; as the hub, publish every fresh report to all."""
        router = self._hub_router()
        backlog = self._outbox.by_tier()
        for tier, count in router.pending_by_tier().items():
            backlog[tier] = backlog.get(tier, 0) + count
        report = router.stats.report(self._now, backlog)
        hub = router.hub
        if hub is None:
            return []
        if not router.is_hub:
            if hub.id not in self._links:
                return []
            return [self._send(hub.id, report, Priority.LOW)]
        router.board.put(report, self._now)
        # The board leaves out the stalest reports that would go over (see StatsBoard).
        cap = self._one_frame_cap()
        publish = router.board.publish(self.node_id, hub.term, self._now, max_bytes=cap)
        router.view = MeshStats(self.node_id, hub.term, publish.reports, self._now)
        return [self._send(p, publish, Priority.LOW) for p in sorted(self._links)]

    def _observe(self, effects: list[Effect]) -> None:
        """Feed the stats collector: ack latencies and conflicts among `effects`."""
        stats = self._hub_router().stats
        for effect in effects:
            if isinstance(effect, WriteAcked | WriteFailed):
                started = self._write_started.pop(effect.request_id, None)
                if started is not None and isinstance(effect, WriteAcked):
                    for tier in started[1]:
                        stats.on_latency(tier, (self._now - started[0]) * 1000.0)
            elif isinstance(effect, Emit):
                for event in effect.events:
                    if event.kind == "conflict":
                        stats.on_conflict(event.tier, self._resolver_names.get(event.tier, "?"))

    # ----------------------------------------------------------------- leases

    def _on_lease_request(self, request: LeaseRequested) -> list[Effect]:
        router = self._hub_router()
        name, rid = request.name, request.request_id
        if not _lease_name_ok(name) or not 0 < request.ttl_s <= MAX_LEASE_TTL_S:
            return [LeaseAnswered(rid, name, False, error="bad lease name or ttl")]
        hub = router.hub
        if hub is None:
            return [LeaseAnswered(rid, name, False, error="no hub")]
        if router.is_hub:
            effects, grant = self._grant_lease(rid, name, self.node_id, request.ttl_s)
            return [*effects, self._lease_answer(rid, grant)]
        lease_id = router.new_lease_id()
        router.lease_pending[lease_id] = (rid, name, self._now + request.timeout_s)
        ttl_ms = max(1, int(request.ttl_s * 1000))
        message = LeaseRequest(lease_id, self.node_id, name, ttl_ms)
        return [self._send(hub.id, message, Priority.HIGH)]

    def _grant_lease(
        self, request_id: int, name: str, node_id: str, ttl_s: float
    ) -> tuple[list[Effect], LeaseGrant]:
        """As the hub, answer a lease request; also return the claims of a new term, if any."""
        router = self._hub_router()
        hub = router.hub
        assert hub is not None and router.is_hub
        if hub.term >= MAX_TERM:
            # No higher term to move to: a new hub restarting its counter in this term
            # could hand out tokens granted before (only a member's forged claim gets here).
            return [], LeaseGrant(request_id, name, LAST_TERM_HOLDER, False, 0, hub.term, 0)
        router.leases.set_term(hub.term)
        effects: list[Effect] = []
        if router.leases.exhausted or router.election.term_contested:
            # Every token of this term is granted, or another hub may have granted some in
            # it: the next term's tokens are all larger, so fencing holds, and the table
            # (its holders) carries over.
            effects = self._flood_claims([router.election.next_term(self._now)])
            hub = router.hub
            assert hub is not None
            router.leases.set_term(hub.term)
        try:
            granted, lease = router.leases.request(name, node_id, ttl_s, self._now)
        except LeaseLimitReached:
            return effects, LeaseGrant(request_id, name, LEASE_LIMIT_HOLDER, False, 0, hub.term, 0)
        left = max(0, int((lease.expires_at - self._now) * 1000))
        token = lease.token if granted else 0
        return effects, LeaseGrant(request_id, name, lease.holder, granted, token, lease.term, left)

    def _lease_answer(self, request_id: int, grant: LeaseGrant) -> LeaseAnswered:
        if not grant.granted and grant.term == 0:
            return LeaseAnswered(request_id, grant.name, False, error="not the hub")
        if not grant.granted and grant.holder == LEASE_LIMIT_HOLDER:
            return LeaseAnswered(request_id, grant.name, False, error=LEASE_LIMIT_ERROR)
        if not grant.granted and grant.holder == LAST_TERM_HOLDER:
            return LeaseAnswered(request_id, grant.name, False, error=LAST_TERM_ERROR)
        return LeaseAnswered(
            request_id,
            grant.name,
            grant.granted,
            grant.token,
            grant.term,
            grant.holder,
            grant.ttl_ms / 1000.0,
        )

    def _on_lease_request_frame(self, peer_id: str, request: LeaseRequest) -> list[Effect]:
        router = self._hub_router()
        if request.node_id != peer_id:
            return []  # a lease is asked for by its holder, over its own link
        if not router.is_hub:
            refusal = LeaseGrant(request.request_id, request.name, self.node_id, False, 0, 0, 0)
            return [self._send(peer_id, refusal, Priority.HIGH)]
        ttl_s = min(request.ttl_ms / 1000.0, MAX_LEASE_TTL_S)
        effects, grant = self._grant_lease(request.request_id, request.name, peer_id, ttl_s)
        return [*effects, self._send(peer_id, grant, Priority.HIGH)]

    def _on_lease_grant(self, peer_id: str, grant: LeaseGrant) -> list[Effect]:
        router = self._hub_router()
        hub = router.hub
        if hub is None or peer_id != hub.id:
            # Requests go to the hub, and a change of hub answers those pending: only the
            # hub's answer counts (any member could otherwise forge a grant).
            return [Log("warning", "lease answer not from the hub ignored", {"peer": peer_id})]
        pending = router.lease_pending.pop(grant.request_id, None)
        if pending is None or pending[1] != grant.name:
            return []
        return [self._lease_answer(pending[0], grant)]

    def _on_lease_release(self, release: LeaseReleased) -> list[Effect]:
        router = self._hub_router()
        hub = router.hub
        if hub is None or not _lease_name_ok(release.name) or not 0 <= release.token <= U64:
            return []  # no lease could have that name or token
        if router.is_hub:
            router.leases.release(release.name, self.node_id, release.token)
            return []
        message = LeaseRelease(release.name, self.node_id, release.token)
        return [self._send(hub.id, message, Priority.HIGH)]

    def _after_hub_change(self, before: HubInfo | None) -> list[Effect]:
        router = self._hub_router()
        after = router.hub
        key_before = None if before is None else (before.id, before.term)
        key_after = None if after is None else (after.id, after.term)
        if key_before == key_after:
            return []
        effects: list[Effect] = [
            Log(
                "info",
                "hub changed",
                {
                    "from": key_before[0] if key_before else None,
                    "to": key_after[0] if key_after else None,
                    "term": key_after[1] if key_after else None,
                },
            )
        ]
        for pending in router.take_unacked(self._now):
            effects.extend(self._reflood(pending))
        if after is not None:
            effects.extend(self.acks.on_hub(after.id, self.node_id))
        if not router.is_hub:
            router.leases = LeaseTable()  # only a serving hub keeps a table
        if key_before is None or key_after is None or key_before[0] != key_after[0]:
            # The same hub in a higher term keeps its table and still answers what is pending.
            for request_id, name, _due in router.lease_pending.values():
                effects.append(LeaseAnswered(request_id, name, False, error="the hub changed"))
            router.lease_pending.clear()
        if not router.is_hub:
            effects.extend(self._drain_relay(everything=True))  # we stepped down: hand it all
        effects.extend(self._maintain_links())
        return effects

    def _on_hub_message(
        self,
        peer_id: str,
        message: StatsReport | StatsPublish | LeaseRequest | LeaseGrant | LeaseRelease,
    ) -> list[Effect]:
        """Handle a stats or lease message from `peer_id`."""
        router = self._hub_router()
        if isinstance(message, StatsReport):
            if router.is_hub and message.node_id == peer_id:
                router.board.put(message, self._now)
            return []
        if isinstance(message, StatsPublish):
            hub = router.hub
            if hub is not None and message.hub_id == hub.id == peer_id:
                router.view = MeshStats(message.hub_id, message.term, message.reports, self._now)
            return []
        if isinstance(message, LeaseRequest):
            return self._on_lease_request_frame(peer_id, message)
        if isinstance(message, LeaseGrant):
            return self._on_lease_grant(peer_id, message)
        if router.is_hub and message.node_id == peer_id:
            router.leases.release(message.name, message.node_id, message.token)
        return []


def _lease_name_ok(name: str) -> bool:
    """True for a lease name the wire takes: 1..MAX_LEASE_NAME characters, valid UTF-8."""
    if not 1 <= len(name) <= MAX_LEASE_NAME:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True
