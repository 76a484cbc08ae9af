"""A deterministic discrete-event network that drives real `Node`s.

One thread, one heap of timestamped happenings, every random choice from one seed: the
same seed gives byte-identical results. Links have latency, jitter (reordering), loss,
duplication and bandwidth; the world partitions, heals, crashes and restarts nodes, and
skews their clocks. A node's "disk" is what its `Persist` effects committed, so a restart
rebuilds it exactly as the daemon would from SQLite.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from crdt.hlc import HybridLogicalClock
from crdt.memory import NewItem, TieredMemory
from mesh.config import NodeConfig
from mesh.effects import (
    Connect,
    Disconnect,
    Effect,
    Emit,
    Persist,
    Send,
    WriteAcked,
    WriteFailed,
)
from mesh.frames import Priority
from mesh.inputs import (
    AckLevel,
    FrameReceived,
    Input,
    LinkDown,
    LinkUp,
    PeerFound,
    Tick,
    WriteRequested,
)
from mesh.node import Node

CONNECT_TIMEOUT_S = 1.0


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
    incarnation: int = 0
    group: int = 0
    timer_at: float | None = None


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
    ) -> None:
        """Create an empty world whose every random choice derives from `seed`."""
        self.seed = seed
        self.config = config or NodeConfig.sim()
        self.link = link or LinkModel()
        self.now = 0.0
        self.rng = random.Random(f"world-{seed}")
        self.nodes: dict[str, SimNode] = {}
        self.writes: dict[int, WriteRecord] = {}
        self.conflict_events = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._busy_until: dict[tuple[str, str], float] = {}
        self._next_request = 1
        self.frames_delivered = 0
        self.frames_dropped = 0

    # ----------------------------------------------------------------- building

    def add_node(self, node_id: str, *, skew_s: float = 0.0) -> SimNode:
        """Create a node with an empty disk and tell it about every existing node."""
        rng = random.Random(f"node-{self.seed}-{node_id}")
        sim = SimNode(node_id, self._boot(node_id, SimDisk(), rng, 0), SimDisk(), rng, skew_s)
        self.nodes[node_id] = sim
        for other in sorted(self.nodes):
            if other != node_id:
                self._schedule(0.0, lambda a=node_id, b=other: self._discover(a, b))
                self._schedule(0.0, lambda a=other, b=node_id: self._discover(a, b))
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
        return Node(memory, self.config, rng, incarnation=incarnation)

    def _discover(self, node_id: str, peer_id: str) -> None:
        self._input(node_id, PeerFound(peer_id))

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
        """Stop a node at once: no more frames, timers or writes; its disk survives."""
        self.nodes[node_id].alive = False

    def restart(self, node_id: str) -> None:
        """Boot a crashed node again from its disk, with fresh Yjs client ids."""
        sim = self.nodes[node_id]
        sim.incarnation += 1
        sim.node = self._boot(node_id, sim.disk, sim.rng, sim.incarnation)
        sim.alive = True
        sim.timer_at = None
        for other in sorted(self.nodes):
            if other != node_id:
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

    # ----------------------------------------------------------------- running

    def run_until(self, t: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Process happenings up to time `t`; return True if `stop()` became true first."""
        while self._heap and self._heap[0][0] <= t:
            when, _seq, action = heapq.heappop(self._heap)
            self.now = when
            action()
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, action))

    def _input(self, node_id: str, event: Input) -> None:
        sim = self.nodes[node_id]
        if not sim.alive:
            return
        node = sim.node
        effects = node.handle(event, self.now + sim.skew_s)
        self._run_effects(sim, node, effects)
        self._arm_timer(sim, node)

    def _arm_timer(self, sim: SimNode, node: Node) -> None:
        deadline = node.next_deadline()
        if deadline is None:
            return
        at = max(self.now, deadline - sim.skew_s)
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
            elif isinstance(effect, Connect):
                self._connect(sim.node_id, effect.peer_id)
            elif isinstance(effect, Disconnect):
                peer = effect.peer_id
                self._schedule(
                    self.link.latency_s, lambda p=peer, s=sim.node_id: self._input(p, LinkDown(s))
                )

    def reachable(self, a: str, b: str) -> bool:
        """Return True if frames can flow between two live nodes now."""
        na, nb = self.nodes.get(a), self.nodes.get(b)
        return na is not None and nb is not None and na.alive and nb.alive and na.group == nb.group

    def _connect(self, a: str, b: str) -> None:
        if self.reachable(a, b):
            rtt = 2 * self.link.latency_s
            self._schedule(rtt, lambda: self._input(a, LinkUp(b)))
            self._schedule(rtt, lambda: self._input(b, LinkUp(a)))
        else:
            self._schedule(CONNECT_TIMEOUT_S, lambda: self._input(a, LinkDown(b)))

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        link = self.link
        if not self.reachable(src, dst) or self.rng.random() < link.loss:
            self.frames_dropped += 1
            return
        key = (src, dst)
        serialise = len(frame) * 8 / link.bandwidth_bps
        start = max(self.now, self._busy_until.get(key, 0.0))
        self._busy_until[key] = start + serialise
        copies = 2 if self.rng.random() < link.duplicate else 1
        for _ in range(copies):
            delay = (start - self.now) + serialise + link.latency_s
            delay += self.rng.uniform(0, link.jitter_s)
            self._schedule(delay, lambda: self._deliver(src, dst, frame))

    def _deliver(self, src: str, dst: str, frame: bytes) -> None:
        if not self.reachable(src, dst):
            self.frames_dropped += 1
            return
        self.frames_delivered += 1
        self._input(dst, FrameReceived(src, frame))

    # ----------------------------------------------------------------- observing

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
