"""Scenario parameters and plans: what happens to the mesh, and when, in one simulated run.

A scenario has three phases: `boot` (nodes discover each other and sync, `warmup_s`), the
active phase (`duration_s`: a partition, churn, lossy writes, or an idle window) and
`settle` (faults end; the run lasts until every live node holds every write, or until
`max_rounds` anti-entropy rounds have passed). Rounds are counted from the settle point.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.frames import Priority
from mesh.inputs import AckLevel

SCENARIOS: tuple[str, ...] = (
    "partition-heal",
    "churn",
    "lossy-lan",
    "scale",
    "idle",
    "hub-failover",
)
TIERS: tuple[str, ...] = ("L1", "L2", "L3")

DESCRIPTIONS: Mapping[str, str] = {
    "partition-heal": "split the mesh into groups, write on every side, heal, time the repair",
    "churn": "nodes crash and restart from disk while writing; then all restart",
    "lossy-lan": "writes over links that lose, duplicate and reorder frames",
    "scale": "partition-heal at 1,000 nodes with fewer writers",
    "idle": "a small mesh that has synced and then does nothing: idle traffic",
    "hub-failover": "elect a hub, relay through it, kill it mid-stream, time the failover",
}


@dataclass(frozen=True, slots=True)
class Params:
    """Everything one run depends on: with the seed, it determines the result exactly."""

    scenario: str
    nodes: int
    seed: int = 1
    writes: int = 0  # write requests, each of `items_per_write` new items
    items_per_write: int = 3
    peer_ack_fraction: float = 0.25  # share of write requests asking ack="peer"
    conflicting: int = 0  # item ids written concurrently by two or more nodes
    groups: int = 2  # partition groups (partition-heal, scale)
    warmup_s: float = 3.0
    duration_s: float = 15.0  # the active phase
    latency_s: float = 0.001
    jitter_s: float = 0.0005
    loss: float = 0.0
    duplicate: float = 0.0
    bandwidth_bps: float = 100e6
    crash_rate: float = 0.0  # crashes per node per simulated second in the active phase
    down_s: float = 5.0  # mean time a crashed node stays down
    skew_s: float = 0.0  # each node's clock is off by a uniform draw in [-skew_s, skew_s]
    max_rounds: int = 60  # give up this many anti-entropy rounds after the settle point
    check_s: float = 0.05  # convergence check and time-series sampling interval
    discovery: str = "burst"
    timer_quantum_s: float = 0.0
    links_required: bool = False  # frames only over open links, as the WebRTC transport
    hub_role: bool = False  # nodes sign, elect a hub and relay HIGH/NORMAL/LOW through it
    kill_hub_after_s: float = 2.0  # hub-failover: the hub dies this long into the active phase

    def validate(self) -> None:
        """Raise ValueError on a parameter out of range."""
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; one of {', '.join(SCENARIOS)}")
        if self.nodes < 2:
            raise ValueError("--nodes must be at least 2")
        if self.writes < 0 or self.items_per_write < 1 or self.conflicting < 0:
            raise ValueError("--writes and --conflicting must be >= 0, --items-per-write >= 1")
        if not 1 <= self.groups <= self.nodes:
            raise ValueError("--groups must be between 1 and --nodes")
        for name in ("peer_ack_fraction", "loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= (1.0 if name == "peer_ack_fraction" else 0.9):
                raise ValueError(f"{name.replace('_', '-')} out of range: {value}")
        for name in ("latency_s", "jitter_s", "crash_rate", "skew_s", "timer_quantum_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("warmup_s", "duration_s", "down_s", "check_s", "bandwidth_bps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_rounds < 1:
            raise ValueError("--max-rounds must be at least 1")
        if self.skew_s >= 30.0:
            raise ValueError("--skew must stay well under the 60 s clock-drift limit")
        if self.scenario == "hub-failover" and not (
            0 <= self.kill_hub_after_s < self.duration_s and self.hub_role
        ):
            raise ValueError("hub-failover needs the hub role and a kill within the active phase")
        if self.discovery not in ("burst", "pairwise"):
            raise ValueError("--discovery is burst or pairwise")

    def to_json(self) -> dict[str, Any]:
        """Return the parameters as a JSON object."""
        return dataclasses.asdict(self)


def defaults_for(scenario: str, nodes: int | None = None) -> dict[str, Any]:
    """Return the scenario's default parameters (its node count unless `nodes` is given)."""
    base: dict[str, dict[str, Any]] = {
        "partition-heal": {"nodes": 50, "conflicting": 5},
        "scale": {
            "nodes": 1000,
            "writes": 50,
            "conflicting": 5,
            "duration_s": 5.0,
            "timer_quantum_s": 0.005,
        },
        "churn": {
            "nodes": 30,
            "duration_s": 30.0,
            "crash_rate": 0.01,
            "down_s": 5.0,
            "skew_s": 0.05,
            "groups": 1,
        },
        "lossy-lan": {
            "nodes": 30,
            "duration_s": 10.0,
            "loss": 0.1,
            "duplicate": 0.05,
            "latency_s": 0.002,
            "jitter_s": 0.005,
            "skew_s": 0.05,
            "groups": 1,
        },
        "idle": {"nodes": 10, "warmup_s": 10.0, "duration_s": 60.0, "groups": 1},
        "hub-failover": {
            "nodes": 100,
            "duration_s": 8.0,
            "groups": 1,
            "hub_role": True,
            "peer_ack_fraction": 0.5,
        },
    }
    if scenario not in base:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    out = dict(base[scenario])
    if nodes is not None:
        out["nodes"] = nodes
    n = int(out["nodes"])
    writes_default = {"churn": 3 * n, "lossy-lan": 2 * n}.get(scenario, n)
    out.setdefault("writes", writes_default)
    return out


def make_params(scenario: str, **overrides: Any) -> Params:
    """Return validated parameters: the scenario's defaults, then `overrides` (None skipped)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    values = defaults_for(scenario, given.get("nodes"))
    values.update(given)
    params = Params(scenario=scenario, **values)
    params.validate()
    return params


def convergence_bound(nodes: int) -> float:
    """Return the round bound log2(N) + ln(N) that a push-pull epidemic should meet."""
    return math.log2(nodes) + math.log(nodes)


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """One write request of the plan: when, by whom (None: any live node), what."""

    at: float
    writer: str | None
    item_ids: tuple[str, ...]
    tiers: tuple[str, ...]
    contents: tuple[str, ...]
    ack: AckLevel
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Outage:
    """A node is down from `crash_at` until `restart_at`."""

    node_id: str
    crash_at: float
    restart_at: float


@dataclass(frozen=True, slots=True)
class Plan:
    """A run's script: node ids, skews, partition groups, writes and outages."""

    node_ids: tuple[str, ...]
    skews: tuple[float, ...]
    groups: tuple[tuple[str, ...], ...]  # empty: no partition
    writes: tuple[PlannedWrite, ...]
    outages: tuple[Outage, ...]
    active_at: float
    settle_at: float
    min_end: float  # the run lasts at least until here (idle: the whole window)


def node_ids(count: int) -> tuple[str, ...]:
    """Return `count` node ids that sort in creation order."""
    width = max(3, len(str(count - 1)))
    return tuple(f"n{i:0{width}d}" for i in range(count))


def make_plan(params: Params) -> Plan:
    """Draw the run's script from the seed (independently of the network's randomness)."""
    rng = random.Random(f"plan-{params.scenario}-{params.seed}")
    ids = node_ids(params.nodes)
    skews = tuple(
        round(rng.uniform(-params.skew_s, params.skew_s), 6) if params.skew_s else 0.0 for _ in ids
    )
    active_at = params.warmup_s
    settle_at = active_at + params.duration_s
    partitioned = params.scenario in ("partition-heal", "scale") and params.groups > 1
    groups: tuple[tuple[str, ...], ...] = ()
    if partitioned:
        shuffled = list(ids)
        rng.shuffle(shuffled)
        groups = tuple(tuple(sorted(shuffled[g :: params.groups])) for g in range(params.groups))
    if params.scenario == "idle":
        window = (0.5, max(0.6, params.warmup_s / 2))
        settle_at, min_end = params.warmup_s, params.warmup_s + params.duration_s
    elif partitioned:
        window = (active_at + 0.1, active_at + max(0.2, params.duration_s / 2))
        min_end = settle_at
    else:
        window = (active_at, max(active_at, settle_at - 0.1))
        min_end = settle_at
    if params.scenario == "hub-failover":
        min_end = settle_at + 3.0  # the old hub restarts at the settle point: watch it rejoin
    writes = _plan_writes(params, rng, ids, window)
    conflict_at = window[0]
    writes += _plan_conflicts(params, rng, ids, groups, conflict_at)
    writes.sort(key=lambda w: w.at)
    outages = _plan_outages(params, rng, ids, active_at, settle_at)
    return Plan(ids, skews, groups, tuple(writes), outages, active_at, settle_at, min_end)


def _plan_writes(
    params: Params, rng: random.Random, ids: tuple[str, ...], window: tuple[float, float]
) -> list[PlannedWrite]:
    order = list(ids)
    rng.shuffle(order)
    fixed_writers = params.crash_rate == 0.0
    out = []
    for k in range(params.writes):
        at = round(rng.uniform(*window), 6)
        durable = AckLevel.HUB if params.hub_role else AckLevel.PEER
        ack = durable if rng.random() < params.peer_ack_fraction else AckLevel.LOCAL
        item_ids = tuple(f"w{k:06d}-{j}" for j in range(params.items_per_write))
        tiers = (TIERS[k % len(TIERS)],) * params.items_per_write
        contents = tuple(f"{params.scenario} write {k} item {j}" for j in range(len(item_ids)))
        writer = order[k % len(order)] if fixed_writers else None
        # hub-failover: every tenth write is CRITICAL (the direct path), the rest NORMAL.
        urgent = params.scenario == "hub-failover" and k % 10 == 9
        priority = Priority.CRITICAL if urgent else Priority.NORMAL
        out.append(PlannedWrite(at, writer, item_ids, tiers, contents, ack, priority))
    return out


def _plan_conflicts(
    params: Params,
    rng: random.Random,
    ids: tuple[str, ...],
    groups: tuple[tuple[str, ...], ...],
    at: float,
) -> list[PlannedWrite]:
    """Every conflicting id is written at once by one node per group (or two nodes)."""
    if params.conflicting == 0:
        return []
    writers = [g[0] for g in groups] if groups else rng.sample(list(ids), 2)
    item_ids = tuple(f"conflict-{c:04d}" for c in range(params.conflicting))
    tiers = tuple(TIERS[c % len(TIERS)] for c in range(params.conflicting))
    return [
        PlannedWrite(
            at,
            writer,
            item_ids,
            tiers,
            tuple(f"version of {writer}" for _ in item_ids),
            AckLevel.LOCAL,
        )
        for writer in writers
    ]


def _plan_outages(
    params: Params, rng: random.Random, ids: tuple[str, ...], start: float, end: float
) -> tuple[Outage, ...]:
    """Crashes as a Poisson process per node; a node still down at `end` restarts then."""
    if params.crash_rate <= 0:
        return ()
    out = []
    for node_id in ids:
        t = start
        while True:
            t += rng.expovariate(params.crash_rate)
            if t >= end:
                break
            back = min(end, t + rng.expovariate(1.0 / params.down_s))
            out.append(Outage(node_id, round(t, 6), round(back, 6)))
            t = back
    out.sort(key=lambda o: (o.crash_at, o.node_id))
    return tuple(out)
