"""A deterministic discrete-event network that drives real `Node`s.

One thread, one heap of timestamped happenings, every random choice from one seed: the
same seed gives byte-identical results. Links have latency, jitter (reordering), loss,
duplication and bandwidth; the world partitions, heals, crashes and restarts nodes, and
skews their clocks. A node's "disk" is what its `Persist` effects committed, so a restart
rebuilds it exactly as the daemon would from SQLite.

Discovery is either pairwise (every node gets one `PeerFound` per peer, in a random order
spread over `DISCOVERY_SPREAD_S`, as mDNS would deliver them) or a burst (every node learns
the whole membership at once, then picks its links once: cheap for meshes of 1,000 nodes).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

from crdt.hlc import HybridLogicalClock
from crdt.memory import NewItem, TieredMemory
from hub_role.signing import Ed25519Signer, Ed25519Verifier
from mesh.config import NodeConfig
from mesh.effects import (
    Connect,
    Disconnect,
    Effect,
    Emit,
    LeaseAnswered,
    Persist,
    Send,
    WriteAcked,
    WriteFailed,
)
from mesh.frames import MsgType, Priority
from mesh.inputs import (
    AckLevel,
    FrameReceived,
    Input,
    LeaseReleased,
    LeaseRequested,
    Leaving,
    LinkDown,
    LinkUp,
    PeerFound,
    Tick,
    WriteRequested,
)
from mesh.node import Node

CONNECT_TIMEOUT_S = 1.0
# How long a live node's transport keeps a link to a crashed peer (ICE consent expiry).
LINK_LOSS_DETECT_S = 30.0
DISCOVERY_SPREAD_S = 0.05  # pairwise discovery: each PeerFound arrives within this window
TIMER_EPSILON_S = 1e-9  # timers fire this late so a skewed node always sees them as due
CLOCK_ORIGIN_S = 3600.0  # a node's clock reads world time + origin + skew: never negative

Discovery = Literal["pairwise", "burst"]


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How the simulated network treats every frame."""

    latency_s: float = 0.001
    jitter_s: float = 0.0005
    loss: float = 0.0
    duplicate: float = 0.0
    bandwidth_bps: float = 100e6


@dataclass(slots=True)
class SimDisk:
    """What a node committed: every update blob per tier, and its clock ceiling."""

    updates: list[tuple[str, bytes]] = field(default_factory=list)
    ceiling_ms: int = 0
    event_seq: int = 0


@dataclass(slots=True)
class SimNode:
    """A node in the world: its protocol state, disk, clock skew and liveness."""

    node_id: str
    node: Node
    disk: SimDisk
    rng: random.Random
    skew_s: float = 0.0
    alive: bool = True
    left: bool = False  # stopped by `leave`: frames it sent before still arrive
    incarnation: int = 0
    group: int = 0
    timer_at: float | None = None
    frames_sent: int = 0  # every frame handed to the network, across restarts
    bytes_sent: int = 0


@dataclass(slots=True)
class WriteRecord:
    """A write the scenario asked for, and what became of it."""

    request_id: int
    node_id: str
    item_ids: tuple[str, ...]
    issued_at: float
    acked_at: float | None = None
    failed: str | None = None


class World:
    """The simulated network and its nodes; advance it with `run_until`."""

    def __init__(
        self,
        seed: int,
        *,
        config: NodeConfig | None = None,
        link: LinkModel | None = None,
        discovery: Discovery = "pairwise",
        timer_quantum_s: float = 0.0,
        links_required: bool = False,
        hub_role: bool = False,
    ) -> None:
        """Create an empty world whose every random choice derives from `seed`.

        `timer_quantum_s` > 0 re-arms a node's timer at most once per quantum (timers then
        fire up to one quantum late), which saves work in large meshes. `links_required`
        drops a frame unless its sender has an open link to the receiver, as the WebRTC
        transport does; by default any two reachable nodes can exchange frames.
        `hub_role` gives every node a deterministic Ed25519 key (from the seed and its id)
        and a shared keyring, so nodes elect a hub and relay through it.
        """
        if discovery not in ("pairwise", "burst"):
            raise ValueError(f"unknown discovery {discovery!r}: pairwise or burst")
        if timer_quantum_s < 0:
            raise ValueError("timer_quantum_s must be >= 0")
        self.seed = seed
        self.config = config or NodeConfig.sim()
        self.link = link or LinkModel()
        self.discovery: Discovery = discovery
        self.timer_quantum_s = timer_quantum_s
        self.links_required = links_required
        self.hub_role = hub_role
        self.keyring: dict[str, bytes] = {}
        self.keyless: set[str] = set()  # with hub_role: nodes booted without a key
        self.tiers_of: dict[str, tuple[str, ...]] = {}  # nodes replicating fewer tiers
        self._verifier = Ed25519Verifier(self.keyring)
        self.now = 0.0
        self.rng = random.Random(f"world-{seed}")
        self.nodes: dict[str, SimNode] = {}
        self.writes: dict[int, WriteRecord] = {}
        self.conflict_events = 0
        self.lease_answers: dict[int, LeaseAnswered] = {}
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._busy_until: dict[tuple[str, str], float] = {}
        self._next_request = 1
        self.frames_delivered = 0
        self.frames_dropped = 0
        self.frames_unlinked = 0  # dropped because `links_required` and no open link
        self.events_processed = 0
        self._traffic: dict[int, list[int]] = {}  # msg_type -> [frames, bytes]
        self._unintroduced: list[str] = []
        self._dirty: dict[str, SimNode] = {}
        self._sweep_pending = False

    # ----------------------------------------------------------------- building

    def add_node(self, node_id: str, *, skew_s: float = 0.0) -> SimNode:
        """Create a node with an empty disk and tell it about every existing node."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id!r} already exists")
        if abs(skew_s) >= CLOCK_ORIGIN_S:
            raise ValueError(f"clock skew must stay under {CLOCK_ORIGIN_S} s either way")
        rng = random.Random(f"node-{self.seed}-{node_id}")
        sim = SimNode(node_id, self._boot(node_id, SimDisk(), rng, 0), SimDisk(), rng, skew_s)
        self.nodes[node_id] = sim
        if self.discovery == "burst":
            if not self._unintroduced:
                self._schedule(0.0, self._introduce_pending)
            self._unintroduced.append(node_id)
            return sim
        # A random arrival order per pair: with a fixed order every node would open its
        # first `full_mesh_max` links to the same lowest ids and make them hubs.
        for other in sorted(self.nodes):
            if other != node_id:
                for a, b in ((node_id, other), (other, node_id)):
                    delay = self.rng.uniform(0.0, DISCOVERY_SPREAD_S)
                    self._schedule(delay, partial(self._discover, a, b))
        self._schedule(0.0, lambda: self._input(node_id, Tick()))
        return sim

    def _boot(self, node_id: str, disk: SimDisk, rng: random.Random, incarnation: int) -> Node:
        client_ids = {t: rng.getrandbits(32) for t in self.config.memory.tiers}
        memory = TieredMemory(
            node_id=node_id,
            client_ids=client_ids,
            config=self.config.memory,
            clock=HybridLogicalClock(
                max_drift_ms=self.config.memory.max_clock_drift_ms,
                restored_ceiling_ms=disk.ceiling_ms,
            ),
        )
        for tier in memory.tiers:
            memory.load(tier, [u for t, u in disk.updates if t == tier])
        signer = None
        if self.hub_role and node_id not in self.keyless:
            seed = hashlib.sha256(f"sim-key-{self.seed}-{node_id}".encode()).digest()
            signer = Ed25519Signer(seed)
            self.keyring[node_id] = signer.public_key
        config = self.config
        if node_id in self.tiers_of:
            config = replace(config, tiers=self.tiers_of[node_id])
        return Node(
            memory,
            config,
            rng,
            incarnation=incarnation,
            signer=signer,
            verifier=self._verifier,
        )

    def _discover(self, node_id: str, peer_id: str) -> None:
        self._input(node_id, PeerFound(peer_id))

    def _introduce_pending(self) -> None:
        """Burst discovery: new nodes learn every node, old nodes learn the new ones."""
        fresh, self._unintroduced = self._unintroduced, []
        everyone = sorted(self.nodes)
        fresh_set = set(fresh)
        for node_id in everyone:
            sim = self.nodes[node_id]
            if not sim.alive:
                continue
            peers = everyone if node_id in fresh_set else fresh
            self._learn(sim, [p for p in peers if p != node_id])

    def _learn(self, sim: SimNode, peers: Sequence[str]) -> None:
        """Add peers to a node's membership at once, then let one Tick pick its links."""
        sim.node.membership.add_many(peers, self.clock_of(sim))
        self._input(sim.node_id, Tick())

    # ----------------------------------------------------------------- faults

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Split the network: frames cross only within a group (others form group 0)."""
        for sim in self.nodes.values():
            sim.group = 0
        for index, members in enumerate(groups, start=1):
            for node_id in members:
                self.nodes[node_id].group = index

    def heal(self) -> None:
        """Join every group again."""
        for sim in self.nodes.values():
            sim.group = 0

    def crash(self, node_id: str) -> None:
        """Stop a node at once: no more frames, timers or writes; its disk survives.

        With links required, a peer's transport notices the dead link only when ICE
        consent expires (LINK_LOSS_DETECT_S), unless the node has come back and linked
        again by then (that replaces the link, as the real transport does).
        """
        sim = self.nodes[node_id]
        sim.alive = False
        if not self.links_required:
            return
        boot = sim.incarnation
        for peer in sorted(self.nodes):
            if peer != node_id and node_id in self.nodes[peer].node.links:
                self._schedule(LINK_LOSS_DETECT_S, partial(self._link_lost, peer, node_id, boot))

    def _link_lost(self, peer: str, crashed: str, boot: int) -> None:
        """`peer`'s transport gives up its link to `crashed` (if that is still the old one)."""
        node = self.nodes[crashed]
        # Replaced only if the node came back and linked to this peer again; a restarted
        # node of a large mesh links to a few peers, and the others' old links must go.
        replaced = node.alive and node.incarnation != boot and peer in node.node.links
        if not replaced and crashed in self.nodes[peer].node.links:
            self._input(peer, LinkDown(crashed))

    def leave(self, node_id: str) -> None:
        """Stop a node gracefully: it tells its live members it LEFT, then stops as `crash`.

        Unlike a crash, the frames it sent before stopping (the goodbyes) still arrive.
        """
        self._input(node_id, Leaving())
        self.crash(node_id)
        self.nodes[node_id].left = True

    def restart(self, node_id: str) -> None:
        """Boot a crashed node again from its disk, with fresh Yjs client ids."""
        sim = self.nodes[node_id]
        sim.incarnation += 1
        sim.node = self._boot(node_id, sim.disk, sim.rng, sim.incarnation)
        sim.alive, sim.left = True, False
        sim.timer_at = None
        others = [other for other in sorted(self.nodes) if other != node_id]
        if self.discovery == "burst":
            self._learn(sim, others)
            return
        for other in others:
            self._input(node_id, PeerFound(other))

    # ----------------------------------------------------------------- writes

    def write(
        self,
        node_id: str,
        items: Sequence[NewItem],
        *,
        ack: AckLevel = AckLevel.LOCAL,
        priority: Priority = Priority.NORMAL,
    ) -> WriteRecord:
        """Ask a node to store items now; the record tells when (or whether) it was acked."""
        request_id = self._next_request
        self._next_request += 1
        record = WriteRecord(request_id, node_id, tuple(i.id for i in items), self.now)
        self.writes[request_id] = record
        if not self.nodes[node_id].alive:
            record.failed = "node is down"
            return record
        self._input(
            node_id,
            WriteRequested(request_id, puts=tuple(items), ack=ack, priority=priority),
        )
        return record

    def lease(self, node_id: str, name: str, ttl_s: float) -> int:
        """Ask a node for the advisory lease `name`; the answer lands in `lease_answers`."""
        request_id = self._next_request
        self._next_request += 1
        self._input(node_id, LeaseRequested(request_id, name, ttl_s))
        return request_id

    def release(self, node_id: str, name: str, token: int) -> None:
        """Have a node release the lease `name` it holds under `token`."""
        self._input(node_id, LeaseReleased(name, token))

    # ----------------------------------------------------------------- running

    def run_until(self, t: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Process happenings up to time `t`; return True if `stop()` became true first."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _seq, action = heapq.heappop(heap)
            self.now = when
            self.events_processed += 1
            action()
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False

    def discard_pending(self) -> None:
        """Forget every scheduled happening (the run is over); the world stays readable."""
        self._heap.clear()
        self._dirty.clear()
        self._sweep_pending = False

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, action))

    def _input(self, node_id: str, event: Input) -> None:
        sim = self.nodes[node_id]
        if not sim.alive:
            return
        node = sim.node
        effects = node.handle(event, self.clock_of(sim))
        self._run_effects(sim, node, effects)
        if self.timer_quantum_s <= 0:
            self._arm_timer(sim, node)
            return
        self._dirty[sim.node_id] = sim
        if not self._sweep_pending:
            self._sweep_pending = True
            self._schedule(self.timer_quantum_s, self._sweep)

    def _sweep(self) -> None:
        """Re-arm the timers of every node that handled an input since the last sweep."""
        dirty, self._dirty = self._dirty, {}
        self._sweep_pending = False
        for sim in dirty.values():
            if sim.alive:
                self._arm_timer(sim, sim.node)

    def _arm_timer(self, sim: SimNode, node: Node) -> None:
        deadline = node.next_deadline()
        if deadline is None:
            return
        # Without the epsilon, `deadline - skew` can round to `now` while `now + skew`
        # rounds below `deadline`: the node sees nothing due and the timer re-fires forever.
        at = max(self.now, deadline - CLOCK_ORIGIN_S - sim.skew_s + TIMER_EPSILON_S)
        if sim.timer_at is not None and sim.timer_at <= at and sim.timer_at >= self.now:
            return
        sim.timer_at = at

        def fire(s: SimNode = sim, n: Node = node, when: float = at) -> None:
            if s.node is not n or s.timer_at != when:
                return
            s.timer_at = None
            self._input(s.node_id, Tick())

        self._schedule(at - self.now, fire)

    def _run_effects(self, sim: SimNode, node: Node, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._transmit(sim.node_id, effect.peer_id, effect.frame)
            elif isinstance(effect, Persist):
                change = effect.change
                sim.disk.updates.extend(change.updates)
                if change.ceiling_ms is not None:
                    sim.disk.ceiling_ms = max(sim.disk.ceiling_ms, change.ceiling_ms)
            elif isinstance(effect, Emit):
                self.conflict_events += sum(1 for e in effect.events if e.kind == "conflict")
            elif isinstance(effect, WriteAcked):
                record = self.writes.get(effect.request_id)
                if record is not None and record.acked_at is None:
                    record.acked_at = self.now
            elif isinstance(effect, WriteFailed):
                record = self.writes.get(effect.request_id)
                if record is not None:
                    record.failed = effect.reason
            elif isinstance(effect, LeaseAnswered):
                self.lease_answers[effect.request_id] = effect
            elif isinstance(effect, Connect):
                self._connect(sim.node_id, effect.peer_id)
            elif isinstance(effect, Disconnect):
                peer = effect.peer_id
                down = LinkDown(sim.node_id)
                self._schedule(self.link.latency_s, partial(self._input, peer, down))

    def clock_of(self, sim: SimNode) -> float:
        """Return what a node's clock reads now (world time + origin + its skew)."""
        return self.now + CLOCK_ORIGIN_S + sim.skew_s

    def reachable(self, a: str, b: str) -> bool:
        """Return True if frames can flow between two live nodes now."""
        na, nb = self.nodes.get(a), self.nodes.get(b)
        return na is not None and nb is not None and na.alive and nb.alive and na.group == nb.group

    def _connect(self, a: str, b: str) -> None:
        if self.reachable(a, b):
            rtt = 2 * self.link.latency_s
            if self.links_required and a in self.nodes[b].node.links:
                # b still holds a link from before a restart of a: the new connection
                # replaces it, and b's transport reports the old one down first.
                self._schedule(rtt, lambda: self._input(b, LinkDown(a)))
            self._schedule(rtt, lambda: self._input(a, LinkUp(b)))
            self._schedule(rtt, lambda: self._input(b, LinkUp(a)))
        else:
            self._schedule(CONNECT_TIMEOUT_S, lambda: self._input(a, LinkDown(b)))

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        size = len(frame)
        sender = self.nodes[src]
        sender.frames_sent += 1
        sender.bytes_sent += size
        kind = int.from_bytes(frame[8:10], "big")
        tally = self._traffic.get(kind)
        if tally is None:
            self._traffic[kind] = [1, size]
        else:
            tally[0] += 1
            tally[1] += size
        if self.links_required and dst not in sender.node.links:
            self.frames_unlinked += 1
            self.frames_dropped += 1
            return
        link = self.link
        if not self.reachable(src, dst) or self.rng.random() < link.loss:
            self.frames_dropped += 1
            return
        key = (src, dst)
        serialise = size * 8 / link.bandwidth_bps
        start = max(self.now, self._busy_until.get(key, 0.0))
        self._busy_until[key] = start + serialise
        copies = 2 if self.rng.random() < link.duplicate else 1
        for _ in range(copies):
            delay = (start - self.now) + serialise + link.latency_s
            delay += self.rng.uniform(0, link.jitter_s)
            self._schedule(delay, lambda: self._deliver(src, dst, frame))

    def _deliver(self, src: str, dst: str, frame: bytes) -> None:
        if not self.reachable(src, dst) and not self._sent_before_leaving(src, dst):
            self.frames_dropped += 1
            return
        if self.links_required and src not in self.nodes[dst].node.links:
            # One-sided: the sender still holds a link the receiver (restarted) never
            # opened; a real transport has no channel to deliver it on.
            self.frames_unlinked += 1
            self.frames_dropped += 1
            return
        self.frames_delivered += 1
        self._input(dst, FrameReceived(src, frame))

    def _sent_before_leaving(self, src: str, dst: str) -> bool:
        sender, receiver = self.nodes[src], self.nodes.get(dst)
        return (
            sender.left
            and receiver is not None
            and receiver.alive
            and receiver.group == sender.group
        )

    # ----------------------------------------------------------------- observing

    def traffic_by_type(self) -> dict[str, tuple[int, int]]:
        """Return (frames, bytes) handed to the network so far, by message type name."""
        out: dict[str, tuple[int, int]] = {}
        for kind, (frames, size) in sorted(self._traffic.items()):
            try:
                name = MsgType(kind).name
            except ValueError:
                name = f"0x{kind:04x}"
            out[name] = (frames, size)
        return out

    def hubs(self) -> dict[str, str | None]:
        """Return the hub each live node follows (None: no hub), by node id."""
        out: dict[str, str | None] = {}
        for sim in self.live():
            hub = sim.node.hub
            out[sim.node_id] = hub.id if hub is not None else None
        return out

    def live(self) -> list[SimNode]:
        """Return the live nodes in id order."""
        return [s for _id, s in sorted(self.nodes.items()) if s.alive]

    def holds_everything(self, item_ids: Iterable[str]) -> bool:
        """Return True if every live node holds every given item live."""
        wanted = list(item_ids)
        return all(all(i in s.node.memory for i in wanted) for s in self.live())

    def digests_equal(self) -> bool:
        """Return True if every live node has the same Merkle root for every tier."""
        live = self.live()
        if not live:
            return True
        tiers = self.config.tiers
        first = [live[0].node.memory.digest(t).root() for t in tiers]
        return all([s.node.memory.digest(t).root() for t in tiers] == first for s in live[1:])
