"""SWIM membership as a pure, sans-IO state machine: time comes in as `now`, messages go out.

Precedence (a total order, so merging gossip is a join-semilattice): an update is ranked
by (state is LEFT, incarnation, state) with ALIVE < SUSPECT < DEAD, and an update replaces
the known record only if its rank is higher. So at one incarnation DEAD beats SUSPECT beats
ALIVE; any higher incarnation beats any lower one (a refuted node is ALIVE again, as in
memberlist, and a suspicion at a newer incarnation also supersedes an older death); LEFT
beats everything and is final. Gossip that says this node is SUSPECT or DEAD at its current
incarnation (or above) is refuted: the incarnation is bumped and ALIVE gossiped first.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass

from mesh.messages import MemberState, MemberUpdate, Ping, PingAck, PingReq
from mesh.swim_config import SwimConfig

__all__ = ["MemberInfo", "Membership", "MembershipChange", "Outgoing", "SwimConfig", "rank"]

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
DEAD, LEFT = MemberState.DEAD, MemberState.LEFT
LIVE = (ALIVE, SUSPECT)
MAX_INCARNATION = 2**64 - 1  # the wire's u64: an accusation there cannot be outbid


def rank(state: MemberState, incarnation: int) -> tuple[bool, int, int]:
    """Precedence key: an update replaces a record iff its rank is strictly higher."""
    return (state == LEFT, incarnation, int(state))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message this node wants sent to `peer_id`."""

    peer_id: str
    message: Ping | PingReq | PingAck


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What this node believes about one member; `since` is when that state began."""

    state: MemberState
    incarnation: int
    address: str
    since: float


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A member moved from `old` (None: newly learnt) to `new` at time `at`."""

    node_id: str
    old: MemberState | None
    new: MemberState
    at: float


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    acked: bool = False
    indirect_sent: bool = False


@dataclass(slots=True)
class _Pending:
    update: MemberUpdate
    transmits: int
    priority: int
    order: int


class Membership:
    """SWIM failure detector and gossip for one node; every call returns what to send."""

    def __init__(
        self, self_id: str, config: SwimConfig, rng: random.Random, *, incarnation: int = 0
    ) -> None:
        """Start as the only (ALIVE) member; nothing is scheduled until a call gives `now`."""
        self.self_id, self.config, self.rng = self_id, config, rng
        self.incarnation = incarnation
        self._members: dict[str, MemberInfo] = {self_id: MemberInfo(ALIVE, incarnation, "", 0.0)}
        self._pending: dict[str, _Pending] = {}
        # Every pending update has one valid entry here: (-priority, transmits, -order, id).
        # Entries whose (transmits, order) no longer match `_pending` are stale and skipped.
        self._gossip_heap: list[tuple[int, int, int, str]] = []
        self._order = 0
        self._seq = 0
        self._changes: list[MembershipChange] = []
        self._suspect_deadline: dict[str, float] = {}
        self._suspect_heap: list[tuple[float, str]] = []  # lazily pruned (deadline, id)
        self._gone_heap: list[tuple[float, str]] = []  # lazily pruned (since, id): DEAD/LEFT
        # my relay seq -> (requester, its seq, target, expiry)
        self._relays: dict[int, tuple[str, int, str, float]] = {}
        self._probe: _Probe | None = None
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._probe_rest: set[str] = set()  # the ids in _probe_list[_probe_index:]
        self._next_probe: float | None = None
        self._next_gossip = 0.0
        self._next_reconnect = 0.0
        self._left = False
        # Sorted views kept up to date member by member (every query here is hot at 1,000
        # nodes, so nothing scans or sorts the whole membership per input).
        self._live: list[str] = []  # ALIVE and SUSPECT, self excluded
        self._dead: list[str] = []  # DEAD (not LEFT)
        self.probes_sent = self.indirect_probes_sent = self.suspicions = self.deaths = 0
        self.refutations = self.false_suspicions = 0
        self._enqueue(MemberUpdate(self_id, ALIVE, incarnation), priority=1)

    # --- queries -------------------------------------------------------------------------

    def members(self) -> dict[str, MemberInfo]:
        """Every known member, self included, with its state, incarnation, address, since."""
        return dict(self._members)

    def alive(self) -> list[str]:
        """ALIVE and SUSPECT members, sorted, excluding self (a fresh list each call)."""
        return list(self._live)

    def alive_count(self) -> int:
        """How many members are ALIVE or SUSPECT (self excluded)."""
        return len(self._live)

    def is_live(self, node_id: str) -> bool:
        """True if `node_id` is another member believed ALIVE or SUSPECT."""
        info = self._members.get(node_id)
        return info is not None and info.state in LIVE and node_id != self.self_id

    def dead(self) -> list[str]:
        """DEAD members (not LEFT), sorted (a fresh list each call)."""
        return list(self._dead)

    def dead_count(self) -> int:
        """How many members are DEAD (not LEFT)."""
        return len(self._dead)

    def sample(self, rng: random.Random, k: int, *, exclude: Iterable[str] = ()) -> list[str]:
        """Up to `k` distinct random live members not in `exclude`, in O(k + |exclude|)."""
        skip = set(exclude)
        live = self._live
        picked = rng.sample(live, min(k + len(skip), len(live)))
        return [p for p in picked if p not in skip][:k]

    def random_member(self, rng: random.Random) -> str | None:
        """One random member that has not LEFT, live or DEAD (self excluded), or None."""
        live, dead = self._live, self._dead
        total = len(live) + len(dead)
        if not total:
            return None
        index = rng.randrange(total)
        return live[index] if index < len(live) else dead[index - len(live)]

    def state_of(self, node_id: str) -> MemberState | None:
        """The believed state of `node_id`, or None if unknown."""
        info = self._members.get(node_id)
        return info.state if info else None

    def counters(self) -> dict[str, int]:
        """Cumulative protocol counters, for stats."""
        names = ("probes_sent", "indirect_probes_sent", "suspicions", "deaths", "refutations")
        return {n: getattr(self, n) for n in (*names, "false_suspicions")}

    def changes(self) -> list[MembershipChange]:
        """Drain the queue of state transitions of other members since the last call."""
        out, self._changes = self._changes, []
        return out

    def next_deadline(self) -> float | None:
        """The earliest `now` at which `tick` has work to do, or None if nothing is scheduled."""
        if self._next_probe is None:
            return None
        earliest = self._next_probe
        suspect = self._first_suspect()
        if suspect is not None and suspect[0] < earliest:
            earliest = suspect[0]
        probe = self._probe
        if probe and not probe.acked and not probe.indirect_sent:
            earliest = min(earliest, probe.started + self.config.ack_timeout)
        if self._pending and self.config.gossip_fanout and self._live:
            earliest = min(earliest, self._next_gossip)
        if not self._left and self._dead:
            earliest = min(earliest, self._next_reconnect)
        gone = self._first_gone()
        if gone is not None:
            earliest = min(earliest, gone[0] + self.config.dead_reap_after)
        return earliest

    # --- inputs --------------------------------------------------------------------------

    def add(self, peer_id: str, now: float, address: str = "") -> None:
        """Learn of a peer from discovery: ALIVE at incarnation 0 if unknown, else keep."""
        self._start(now)
        info = self._members.get(peer_id)
        if info is None:
            self._set(peer_id, ALIVE, 0, address, now)
        elif address and address != info.address:
            self._members[peer_id] = MemberInfo(info.state, info.incarnation, address, info.since)

    def add_many(self, peer_ids: Iterable[str], now: float) -> None:
        """`add` for many peers at once (a burst of discovery): O(N log N), not O(N) each."""
        self._start(now)
        fresh = [p for p in dict.fromkeys(peer_ids) if p not in self._members and p != self.self_id]
        if not fresh:
            return
        for node_id in fresh:
            self._members[node_id] = MemberInfo(ALIVE, 0, "", now)
            self._changes.append(MembershipChange(node_id, None, ALIVE, now))
        self._live = sorted((*self._live, *fresh))
        # Each newcomer goes to a random place among the members still to probe, as `add`.
        rest = [*self._probe_list[self._probe_index :], *fresh]
        self.rng.shuffle(rest)
        self._probe_list, self._probe_index = rest, 0
        self._probe_rest.update(fresh)

    def apply_gossip(self, updates: Iterable[MemberUpdate], now: float) -> None:
        """Merge updates by precedence; refute any that says this node is SUSPECT or DEAD."""
        self._start(now)
        for up in updates:
            if up.node_id == self.self_id:
                self._about_self(up)
                continue
            info = self._members.get(up.node_id)
            if info is None or rank(up.state, up.incarnation) > rank(info.state, info.incarnation):
                self._set(up.node_id, up.state, up.incarnation, up.address, now)
                self._enqueue(up)

    def on_ping(self, from_id: str, msg: Ping, now: float) -> list[Outgoing]:
        """Apply the ping's gossip and ack it to the sender."""
        self.add(from_id, now)
        self.apply_gossip(msg.gossip, now)
        return [Outgoing(from_id, PingAck(msg.seq, self.self_id, self.gossip_for(from_id)))]

    def on_ping_req(self, from_id: str, msg: PingReq, now: float) -> list[Outgoing]:
        """Apply gossip and ping `msg.target` for the requester, relaying its ack later."""
        self.add(from_id, now)
        self.apply_gossip(msg.gossip, now)
        if msg.target == self.self_id:
            return [Outgoing(from_id, PingAck(msg.seq, self.self_id, self.gossip_for(from_id)))]
        seq = self._next_seq()
        self._relays[seq] = (from_id, msg.seq, msg.target, now + self.config.protocol_period)
        return [Outgoing(msg.target, Ping(seq, self.gossip_for(msg.target)))]

    def on_ping_ack(self, from_id: str, msg: PingAck, now: float) -> list[Outgoing]:
        """Apply gossip; resolve the matching probe, or relay the ack of an indirect probe."""
        self.add(from_id, now)
        self.apply_gossip(msg.gossip, now)
        relay = self._relays.get(msg.seq)
        if relay is not None and relay[2] == msg.target:
            requester, seq, target, _ = self._relays.pop(msg.seq)
            return [Outgoing(requester, PingAck(seq, target, self.gossip_for(requester)))]
        probe = self._probe
        if probe and probe.seq == msg.seq and probe.target == msg.target:
            probe.acked = True
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Run every timer due by `now`: probes, indirect probes, suspicions, gossip, reaping."""
        self._start(now)
        cfg, out = self.config, []
        while (first := self._first_suspect()) is not None and first[0] <= now:
            # Still SUSPECT: _set drops the timer on any other state.
            node_id = first[1]
            heapq.heappop(self._suspect_heap)
            del self._suspect_deadline[node_id]
            self._declare(node_id, DEAD, self._members[node_id].incarnation, now)
        probe = self._probe
        due = probe is not None and now >= probe.started + cfg.ack_timeout
        if probe and due and not probe.acked and not probe.indirect_sent:
            probe.indirect_sent = True
            out += self._indirect(probe)
        assert self._next_probe is not None
        if now >= self._next_probe:
            self._end_probe(now)
            self._next_probe += cfg.protocol_period
            if self._next_probe <= now:
                self._next_probe = now + cfg.protocol_period
            out += self._start_probe(now)
        if self._pending and now >= self._next_gossip:
            self._next_gossip = now + cfg.gossip_interval
            live = self._live
            for peer in self.rng.sample(live, min(cfg.gossip_fanout, len(live))):
                out.append(Outgoing(peer, Ping(self._next_seq(), self.gossip_for(peer))))
        if now >= self._next_reconnect:
            out += self.probe_dead(now)
        self._reap(now)
        return out

    def probe_dead(self, now: float) -> list[Outgoing]:
        """Ping one random DEAD member (it refutes its death if it is back); tick calls this."""
        self._start(now)
        self._next_reconnect = now + self.config.reconnect_interval
        dead = self._dead
        if self._left or not dead:
            return []
        peer = self.rng.choice(dead)
        return [Outgoing(peer, Ping(self._next_seq(), self.gossip_for(peer)))]

    @property
    def left(self) -> bool:
        """Return True once this node has announced that it LEFT."""
        return self._left

    def leave(self, now: float, *, everyone: bool = False) -> list[Outgoing]:
        """Stop probing and gossip LEFT(self) to a few live members (tick keeps gossiping it).

        With `everyone`, tell every live member at once: a process about to exit has no
        later tick to spread it.
        """
        self._start(now)
        self._left = True
        self._members[self.self_id] = MemberInfo(LEFT, self.incarnation, "", now)
        self._enqueue(MemberUpdate(self.self_id, LEFT, self.incarnation), priority=1)
        self._next_gossip = now + self.config.gossip_interval
        live = self._live
        count = len(live) if everyone else min(max(self.config.gossip_fanout, 1) * 2, len(live))
        peers = self.rng.sample(live, count)
        return [Outgoing(p, Ping(self._next_seq(), self.gossip_for(p))) for p in peers]

    def gossip_for(self, peer_id: str) -> tuple[MemberUpdate, ...]:
        """Gossip for a message to `peer_id`: its own bad news, then the least-sent updates."""
        out: list[MemberUpdate] = []
        info = self._members.get(peer_id)
        if info and info.state in (SUSPECT, DEAD):
            out.append(MemberUpdate(peer_id, info.state, info.incarnation, info.address))
        # The max_gossip most urgent updates: highest priority, fewest sends, newest first.
        heap, pending, most = self._gossip_heap, self._pending, self.config.max_gossip
        queue: list[_Pending] = []
        while heap and len(queue) < most:
            _prio, transmits, neg_order, node_id = heapq.heappop(heap)
            p = pending.get(node_id)
            if p is not None and p.transmits == transmits and p.order == -neg_order:
                queue.append(p)
        limit = self.config.retransmit_limit(len(self._live) + 1)
        for p in queue:
            if len(out) < most and not (out and p.update.node_id == peer_id == out[0].node_id):
                out.append(p.update)
                p.transmits += 1
                if p.transmits >= limit:
                    del pending[p.update.node_id]
                    continue
            self._push_gossip(p)
        return tuple(out)

    # --- internals -----------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if self._next_probe is None:
            self._next_probe = now + self.rng.uniform(0, self.config.protocol_period)
            self._next_gossip = now
            self._next_reconnect = now + self.config.reconnect_interval

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _about_self(self, up: MemberUpdate) -> None:
        if self._left:
            return
        if up.state == ALIVE and up.incarnation <= self.incarnation:
            return
        if up.state != ALIVE and up.incarnation < self.incarnation:
            # A stale accusation: the sender missed our refutation, so gossip it again.
            self._enqueue(MemberUpdate(self.self_id, ALIVE, self.incarnation), priority=1)
            return
        # Adopt a newer ALIVE (we restarted), outbid anything worse: both are max(), so
        # the outcome does not depend on the order the updates arrive in.
        # Saturated, never past the wire's u64: a peer gossiping an accusation at the
        # maximum would otherwise make every later PING/PING_ACK of ours unencodable.
        self.incarnation = min(up.incarnation + (up.state != ALIVE), MAX_INCARNATION)
        self.refutations += up.state != ALIVE
        self._members[self.self_id] = MemberInfo(
            ALIVE, self.incarnation, "", self._members[self.self_id].since
        )
        self._enqueue(MemberUpdate(self.self_id, ALIVE, self.incarnation), priority=1)

    def _enqueue(self, update: MemberUpdate, priority: int = 0) -> None:
        self._order += 1
        pending = _Pending(update, 0, priority, self._order)
        self._pending[update.node_id] = pending
        self._push_gossip(pending)
        if len(self._gossip_heap) > 2 * len(self._pending) + 64:
            # Drop the stale entries of replaced and reaped updates.
            self._gossip_heap = [
                (-p.priority, p.transmits, -p.order, k) for k, p in self._pending.items()
            ]
            heapq.heapify(self._gossip_heap)

    def _push_gossip(self, p: _Pending) -> None:
        heapq.heappush(self._gossip_heap, (-p.priority, p.transmits, -p.order, p.update.node_id))

    def _first_suspect(self) -> tuple[float, str] | None:
        """The earliest live suspicion timer, dropping stale heap entries on the way."""
        heap, deadlines = self._suspect_heap, self._suspect_deadline
        while heap and deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _first_gone(self) -> tuple[float, str] | None:
        """The DEAD or LEFT member gone longest, dropping stale heap entries on the way."""
        heap, members = self._gone_heap, self._members
        while heap:
            since, node_id = heap[0]
            info = members.get(node_id)
            if info is not None and info.state in (DEAD, LEFT) and info.since == since:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _index(self, node_id: str, old: MemberState | None, new: MemberState | None) -> None:
        """Move `node_id` between the sorted live and dead views after a state change."""
        was_live, is_live = old in LIVE, new in LIVE
        if was_live != is_live:
            if is_live:
                insort(self._live, node_id)
            else:
                del self._live[bisect_left(self._live, node_id)]
        if (old == DEAD) != (new == DEAD):
            if new == DEAD:
                insort(self._dead, node_id)
            else:
                del self._dead[bisect_left(self._dead, node_id)]

    def _set(self, node_id: str, state: MemberState, inc: int, address: str, now: float) -> None:
        """Record a new state for another member; keep timers, probe list and counters in step."""
        old = self._members.get(node_id)
        old_state = old.state if old else None
        addr = address or (old.address if old else "")
        since = now if old_state != state or old is None else old.since
        self._members[node_id] = MemberInfo(state, inc, addr, since)
        if old_state != state:
            self._index(node_id, old_state, state)
            if state in (DEAD, LEFT):
                heapq.heappush(self._gone_heap, (since, node_id))
        if state == SUSPECT:
            if old_state != SUSPECT or node_id not in self._suspect_deadline:
                n = len(self._live) + 1
                deadline = now + self.config.suspicion_timeout(n)
                self._suspect_deadline[node_id] = deadline
                heapq.heappush(self._suspect_heap, (deadline, node_id))
        else:
            self._suspect_deadline.pop(node_id, None)
        if state in LIVE and node_id not in self._probe_rest:
            pos = self.rng.randint(self._probe_index, len(self._probe_list))
            self._probe_list.insert(pos, node_id)
            self._probe_rest.add(node_id)
        if old_state == state:
            return
        self.suspicions += state == SUSPECT
        self.deaths += state == DEAD
        self.false_suspicions += old_state == SUSPECT and state == ALIVE
        self._changes.append(MembershipChange(node_id, old_state, state, now))

    def _declare(self, node_id: str, state: MemberState, inc: int, now: float) -> None:
        info = self._members[node_id]
        self._set(node_id, state, inc, info.address, now)
        self._enqueue(MemberUpdate(node_id, state, inc, info.address))

    def _start_probe(self, now: float) -> list[Outgoing]:
        self._probe = None
        if self._left:
            return []
        for _ in range(2):
            while self._probe_index < len(self._probe_list):
                target = self._probe_list[self._probe_index]
                self._probe_index += 1
                self._probe_rest.discard(target)
                info = self._members.get(target)
                if info and info.state in LIVE and target != self.self_id:
                    self._probe = _Probe(target, self._next_seq(), now)
                    self.probes_sent += 1
                    ping = Ping(self._probe.seq, self.gossip_for(target))
                    return [Outgoing(target, ping)]
            self._probe_list = list(self._live)
            self.rng.shuffle(self._probe_list)
            self._probe_index = 0
            self._probe_rest = set(self._probe_list)
        return []

    def _indirect(self, probe: _Probe) -> list[Outgoing]:
        chosen = self.sample(self.rng, self.config.indirect_probes, exclude=(probe.target,))
        self.indirect_probes_sent += len(chosen)
        return [Outgoing(h, PingReq(probe.seq, probe.target, self.gossip_for(h))) for h in chosen]

    def _end_probe(self, now: float) -> None:
        probe, self._probe = self._probe, None
        if probe is None or probe.acked:
            return
        info = self._members.get(probe.target)
        if info is not None and info.state == ALIVE:
            self._declare(probe.target, SUSPECT, info.incarnation, now)

    def _reap(self, now: float) -> None:
        for relay_seq, relay in list(self._relays.items()):
            if relay[3] <= now:
                del self._relays[relay_seq]
        horizon = now - self.config.dead_reap_after
        while (first := self._first_gone()) is not None and first[0] <= horizon:
            node_id = first[1]
            heapq.heappop(self._gone_heap)
            self._index(node_id, self._members.pop(node_id).state, None)
            self._pending.pop(node_id, None)
