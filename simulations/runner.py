"""Run one scenario in a `World` and measure it: convergence, durability, traffic, series.

Definitions (also in docs/PERFORMANCE.md):

- a round is one anti-entropy interval (`NodeConfig.anti_entropy_interval_s`), in which
  every live node starts one exchange with a random member;
- `time_to_converge_s` runs from the settle point (the heal, the end of churn or of the
  lossy writes) to the first check (every `check_s`) at which every live node holds every
  written item; `rounds_to_converge` is that time in rounds, rounded up;
- `lost_acked_writes` counts acknowledged write requests with an item missing on some live
  node at the end of the run;
- `conflicts` counts distinct item ids in conflict on at least one live node at the end;
  `conflict_events` is the total of conflict events every node emitted (`World`).

With the hub role (`hub_role`, always on in `hub-failover`):

- `hub` reports the hub every live node follows at the end (or null if they disagree), its
  term, and how update batches travelled: `relayed_batches` through the hub,
  `p2p_batches` flooded peer to peer (CRITICAL/EMERGENCY, no hub, or a fallback), and
  `relayed_share` / `p2p_share` of the two;
- `failover_s` (hub-failover) runs from the kill of the hub to the first check at which
  every live node follows one new hub and that hub has relayed at least one envelope.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from crdt.memory import NewItem
from mesh.config import NodeConfig
from mesh.gc_pause import cyclic_gc_paused
from mesh.inputs import AckLevel
from simulations.metrics import DeliveryTracker, Sample
from simulations.scenarios import Params, Plan, PlannedWrite, convergence_bound, make_plan
from simulations.world import LinkModel, World

ProgressFn = Callable[[str], None]
PROGRESS_EVERY_S = 3.0


@dataclass(slots=True)
class Phase:
    """A named stretch of simulated time and the traffic sent during it."""

    name: str
    start_s: float
    end_s: float | None = None
    frames_start: int = 0
    bytes_start: int = 0
    frames: int = 0
    bytes: int = 0
    by_type_start: dict[str, tuple[int, int]] = field(default_factory=dict)
    by_type: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class RunResult:
    """The outcome of one run: the JSON summary and the time series."""

    summary: dict[str, Any]
    series: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0


class Runner:
    """Builds the world for a plan and steps it check by check."""

    def __init__(self, params: Params, *, progress: ProgressFn | None = None) -> None:
        """Prepare the world and the plan; nothing runs until `run`."""
        self.params = params
        self.plan: Plan = make_plan(params)
        self.config = NodeConfig.sim()
        link = LinkModel(
            latency_s=params.latency_s,
            jitter_s=params.jitter_s,
            loss=params.loss,
            duplicate=params.duplicate,
            bandwidth_bps=params.bandwidth_bps,
        )
        self.world = World(
            params.seed,
            config=self.config,
            link=link,
            discovery="burst" if params.discovery == "burst" else "pairwise",
            timer_quantum_s=params.timer_quantum_s,
            links_required=params.links_required,
            hub_role=params.hub_role,
        )
        self.tracker = DeliveryTracker(self.world)
        self._rng = random.Random(f"runner-{params.scenario}-{params.seed}")
        self._progress = progress
        self._phases: list[Phase] = []
        self._series: list[Sample] = []
        self._requests: list[tuple[int, AckLevel]] = []  # (world request id, ack level)
        self._skipped_writes = 0
        self._payload_bytes = 0
        self._crashes = 0
        self._restarts = 0
        self._killed_hub: str | None = None
        self._killed_at: float | None = None
        self._fanned_at_kill: dict[str, int] = {}
        self._failover_s: float | None = None
        self._new_hub: str | None = None

    # ----------------------------------------------------------------- actions

    def _totals(self) -> tuple[int, int]:
        frames = sum(s.frames_sent for s in self.world.nodes.values())
        size = sum(s.bytes_sent for s in self.world.nodes.values())
        return frames, size

    def _enter(self, name: str) -> None:
        frames, size = self._totals()
        by_type = self.world.traffic_by_type()
        if self._phases:
            last = self._phases[-1]
            last.end_s = self.world.now
            last.frames, last.bytes = frames - last.frames_start, size - last.bytes_start
            for kind, (f, b) in by_type.items():
                f0, b0 = last.by_type_start.get(kind, (0, 0))
                if f > f0:
                    last.by_type[kind] = (f - f0, b - b0)
        self._phases.append(
            Phase(
                name, self.world.now, frames_start=frames, bytes_start=size, by_type_start=by_type
            )
        )

    def _write(self, planned: PlannedWrite) -> None:
        world = self.world
        writer = planned.writer
        if writer is None or not world.nodes[writer].alive:
            live = [s.node_id for s in world.live()]
            if not live:
                self._skipped_writes += 1
                return
            writer = self._rng.choice(live)
        items = [
            NewItem(tier, content, item_id)
            for item_id, tier, content in zip(
                planned.item_ids, planned.tiers, planned.contents, strict=True
            )
        ]
        disk = world.nodes[writer].disk
        before = len(disk.updates)
        record = world.write(writer, items, ack=planned.ack, priority=planned.priority)
        self._payload_bytes += sum(len(u) for _t, u in disk.updates[before:])
        self._requests.append((record.request_id, planned.ack))
        self.tracker.add(planned.item_ids, writer)

    def _crash(self, node_id: str) -> None:
        if self.world.nodes[node_id].alive:
            self.world.crash(node_id)
            self._crashes += 1

    def _restart(self, node_id: str) -> None:
        if not self.world.nodes[node_id].alive:
            self.world.restart(node_id)
            self._restarts += 1

    def _common_hub(self) -> str | None:
        """Return the hub every live node follows, or None if they do not all agree."""
        hubs = set(self.world.hubs().values())
        return next(iter(hubs)) if len(hubs) == 1 else None

    def _kill_hub(self) -> None:
        hub = self._common_hub()
        if hub is None:
            counts: dict[str, int] = {}
            for h in self.world.hubs().values():
                if h is not None:
                    counts[h] = counts.get(h, 0) + 1
            hub = max(sorted(counts), key=lambda h: counts[h]) if counts else None
        if hub is None:
            return
        self._fanned_at_kill = {
            s.node_id: s.node.hub_counters.fanned_out for s in self.world.nodes.values()
        }
        self._killed_hub, self._killed_at = hub, self.world.now
        self._crash(hub)

    def _check_failover(self) -> None:
        if self._killed_at is None or self._failover_s is not None:
            return
        hub = self._common_hub()
        if hub is None or hub == self._killed_hub:
            return
        node = self.world.nodes[hub].node
        if node.is_hub and node.hub_counters.fanned_out > self._fanned_at_kill.get(hub, 0):
            self._failover_s = self.world.now - self._killed_at
            self._new_hub = hub

    def _partition(self, name: str) -> None:
        self.world.partition(self.plan.groups)
        self._enter(name)

    def _settle(self) -> None:
        self.world.heal()
        for node_id in self.plan.node_ids:
            self._restart(node_id)
        self._enter("settle")

    def _actions(self) -> list[tuple[float, int, Callable[[], None]]]:
        plan = self.plan
        actions: list[tuple[float, int, Callable[[], None]]] = []

        def at(t: float, fn: Callable[[], None]) -> None:
            actions.append((t, len(actions), fn))

        active = {"partition-heal": "partition", "scale": "partition"}.get(
            self.params.scenario, self.params.scenario
        )
        if plan.groups:
            at(plan.active_at, partial(self._partition, active))
        elif self.params.scenario != "idle":
            at(plan.active_at, partial(self._enter, active))
        for write in plan.writes:
            at(write.at, partial(self._write, write))
        for outage in plan.outages:
            at(outage.crash_at, partial(self._crash, outage.node_id))
            if outage.restart_at < plan.settle_at:
                at(outage.restart_at, partial(self._restart, outage.node_id))
        if self.params.scenario == "hub-failover":
            at(plan.active_at + self.params.kill_hub_after_s, self._kill_hub)
        if self.params.scenario == "idle":
            at(plan.settle_at, partial(self._enter, "idle"))
        else:
            at(plan.settle_at, self._settle)
        actions.sort(key=lambda a: (a[0], a[1]))
        return actions

    # ----------------------------------------------------------------- running

    def run(self) -> RunResult:
        """Run the plan to convergence (or the round limit); return the measurements."""
        # A 1,000-node world holds millions of long-lived objects; with the collector on,
        # 24 full collections took 31 s of the 108 s of CPU of `scale` at N = 1,000.
        with cyclic_gc_paused():
            return self._run()

    def _run(self) -> RunResult:
        started = time.perf_counter()
        params, plan, world = self.params, self.plan, self.world
        for node_id, skew in zip(plan.node_ids, plan.skews, strict=True):
            world.add_node(node_id, skew_s=skew)
        self._enter("boot")
        round_s = self.config.anti_entropy_interval_s
        deadline = max(plan.min_end, plan.settle_at + params.max_rounds * round_s)
        actions = self._actions()
        next_action = 0
        check = 0
        converged_at: float | None = None
        last_report = started
        while True:
            t_check = round(check * params.check_s, 9)
            while next_action < len(actions) and actions[next_action][0] <= t_check:
                t_action, _seq, fn = actions[next_action]
                world.run_until(t_action)
                fn()
                next_action += 1
            world.run_until(t_check)
            self._check_failover()
            self.tracker.refresh()
            sample = self._sample(t_check)
            if (
                converged_at is None
                and t_check >= plan.settle_at - 1e-9
                and next_action >= len(actions)
                and self.tracker.complete()
                and world.digests_equal()  # every id everywhere is not enough: equal content
            ):
                converged_at = t_check
            if self._progress is not None and time.perf_counter() - last_report >= PROGRESS_EVERY_S:
                last_report = time.perf_counter()
                self._report(sample)
            if (converged_at is not None and t_check >= plan.min_end - 1e-9) or t_check >= deadline:
                break
            check += 1
        self._enter("end")
        self._phases.pop()
        wall = time.perf_counter() - started
        return RunResult(self._summary(converged_at), self._series, wall)

    def _sample(self, t: float) -> Sample:
        live, complete, pairs = self.tracker.delivered()
        items = len(self.tracker.items)
        frames, size = self._totals()
        sample = Sample(
            t_s=t,
            phase=self._phases[-1].name,
            live_nodes=live,
            items_written=items,
            delivered_fraction=pairs / (live * items) if live and items else 1.0,
            complete_nodes_fraction=complete / live if live else 1.0,
            frames_sent=frames,
            bytes_sent=size,
            bytes_per_node=size / self.params.nodes,
            frames_dropped=self.world.frames_dropped,
        )
        self._series.append(sample)
        return sample

    def _report(self, sample: Sample) -> None:
        assert self._progress is not None
        self._progress(
            f"t={sample.t_s:7.2f}s {sample.phase:<9} live={sample.live_nodes} "
            f"items={sample.items_written} delivered={100 * sample.delivered_fraction:6.2f}% "
            f"complete-nodes={100 * sample.complete_nodes_fraction:6.2f}% "
            f"frames={sample.frames_sent}"
        )

    # ----------------------------------------------------------------- results

    def _summary(self, converged_at: float | None) -> dict[str, Any]:
        params, plan, world = self.params, self.plan, self.world
        round_s = self.config.anti_entropy_interval_s
        nodes = params.nodes
        items = self.tracker.items
        converged = converged_at is not None
        if converged and not world.holds_everything(items):
            raise RuntimeError("delivery tracker and World.holds_everything disagree")
        time_to_converge = None if converged_at is None else converged_at - plan.settle_at
        rounds = None
        if time_to_converge is not None:
            rounds = max(0, math.ceil(time_to_converge / round_s - 1e-9))
        bound = convergence_bound(nodes)
        records = [world.writes[r] for r, _level in self._requests]
        acked = [r for r in records if r.acked_at is not None]
        lost = [r for r in acked if self.tracker.missing_on_live(r.item_ids)]
        live = world.live()
        conflicted = sorted({i for s in live for i in s.node.memory.conflicted_ids()})
        frames, size = self._totals()
        phases = [
            {
                "name": p.name,
                "start_s": _r(p.start_s),
                "end_s": _r(p.end_s if p.end_s is not None else world.now),
                "bytes_per_node": _r(p.bytes / nodes, 1),
                "messages_per_node": _r(p.frames / nodes, 2),
                "by_type": {k: {"frames": f, "bytes": b} for k, (f, b) in p.by_type.items()},
            }
            for p in self._phases
        ]
        summary: dict[str, Any] = {
            "scenario": params.scenario,
            "nodes": nodes,
            "seed": params.seed,
            "converged": converged,
            "time_to_converge_s": None if time_to_converge is None else _r(time_to_converge),
            "rounds_to_converge": rounds,
            "round_s": round_s,
            "bound_rounds": _r(bound),
            "bound_formula": "log2(N) + ln(N)",
            "within_bound": rounds is not None and rounds <= bound,
            "settle_at_s": _r(plan.settle_at),
            "sim_time_s": _r(world.now),
            "writes": len(records),
            "writes_skipped_no_live_node": self._skipped_writes,
            "items_written": len(items),
            "acked_writes": len(acked),
            "peer_ack_writes": sum(1 for _id, level in self._requests if level is AckLevel.PEER),
            "failed_writes": sum(1 for r in records if r.failed is not None),
            "lost_acked_writes": len(lost),
            "conflicts": len(conflicted),
            "conflict_events": world.conflict_events,
            "bytes_per_node": _r(size / nodes, 1),
            "messages_per_node": _r(frames / nodes, 2),
            "write_payload_bytes": self._payload_bytes,
            "phases": phases,
            "traffic_by_type": {
                name: {"frames": f, "bytes": b} for name, (f, b) in world.traffic_by_type().items()
            },
            "frames_delivered": world.frames_delivered,
            "frames_dropped": world.frames_dropped,
            "frames_dropped_no_link": world.frames_unlinked,
            "crashes": self._crashes,
            "restarts": self._restarts,
            "live_nodes_at_end": len(live),
            "digests_equal": world.digests_equal(),
            "params": params.to_json(),
        }
        summary["hub_ack_writes"] = sum(1 for _i, level in self._requests if level is AckLevel.HUB)
        if params.hub_role:
            summary.update(self._hub_summary())
        idle = next((p for p in self._phases if p.name == "idle"), None)
        if idle is not None and idle.end_s is not None and idle.end_s > idle.start_s:
            span = idle.end_s - idle.start_s
            summary["idle_bytes_per_s_per_node"] = _r(idle.bytes / nodes / span, 1)
            summary["idle_messages_per_s_per_node"] = _r(idle.frames / nodes / span, 3)
        return summary

    def _hub_summary(self) -> dict[str, Any]:
        world = self.world
        nodes = [s.node for s in world.nodes.values()]
        # A batch handed to the hub but re-flooded after its ack timed out went peer to
        # peer in the end: counted there, not as relayed.
        fallbacks = sum(n.hub_counters.relay_fallbacks for n in nodes)
        relayed = sum(n.hub_counters.relayed_sent for n in nodes) - fallbacks
        p2p = sum(n.hub_counters.p2p_sent for n in nodes) + fallbacks
        total = relayed + p2p
        hub_id = self._common_hub()
        hub = world.nodes[hub_id].node.hub if hub_id is not None else None
        rejected: dict[str, int] = {}
        for n in nodes:
            for reason, count in n.claims_rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        out: dict[str, Any] = {
            "hub": {
                "id": hub_id,
                "term": None if hub is None else hub.term,
                "relayed_batches": relayed,
                "p2p_batches": p2p,
                "relayed_share": _r(relayed / total if total else 0.0),
                "p2p_share": _r(p2p / total if total else 0.0),
                "relay_fallbacks": fallbacks,
                "relay_rejected": sum(n.hub_counters.relay_rejected for n in nodes),
                "claims_rejected": dict(sorted(rejected.items())),
                "links_per_node": _r(sum(len(n.links) for n in nodes) / len(nodes), 2),
                "max_links": max(len(n.links) for n in nodes),
            },
        }
        if self.params.scenario == "hub-failover":
            out["killed_hub"] = self._killed_hub
            out["new_hub"] = self._new_hub
            out["failover_s"] = None if self._failover_s is None else _r(self._failover_s)
            out["relayed_share"] = out["hub"]["relayed_share"]
            out["p2p_share"] = out["hub"]["p2p_share"]
        return out


def _r(value: float, digits: int = 3) -> float:
    """Round for stable, readable JSON."""
    return round(float(value), digits)


def run(params: Params, *, progress: ProgressFn | None = None) -> RunResult:
    """Run one scenario with validated parameters."""
    runner = Runner(params, progress=progress)
    try:
        return runner.run()
    finally:
        # Pending timers hold closures over the world, the only reference cycle in it:
        # without them the world is freed at once by reference counting, instead of by a
        # collector pass over millions of objects (about 12 s at the exit of N = 1,000).
        runner.world.discard_pending()
