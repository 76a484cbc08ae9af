"""Mesh-wide statistics: pure. Each node collects per-tier figures and reports them to the
hub; the hub keeps the latest report of every node and publishes them all to every node.

Per node and tier (`mesh.messages.TierStats`): update batches per minute (sent and
applied), mean items per batch and mean write-to-ack latency over the last report
interval; cumulative P2P and relayed batch counts and conflicts by resolution (the tier's
resolver); the backlog (updates waiting to be sent) when the report was made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from mesh.codec import MAX_STATS_NODES, U64, stats_publish_overhead, stats_report_bytes
from mesh.frames import DEFAULT_LIMITS
from mesh.messages import StatsPublish, StatsReport, TierStats


@dataclass(slots=True)
class _Tier:
    batches: int = 0
    items: int = 0
    latency_ms: float = 0.0
    latencies: int = 0
    p2p: int = 0
    relayed: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)


class StatsCollector:
    """One node's figures; `report(now, backlog)` returns them and opens a new interval."""

    def __init__(self, node_id: str, tiers: Sequence[str], now: float) -> None:
        """Start an empty interval at `now` for the tiers this node replicates."""
        self.node_id = node_id
        self._tiers = {t: _Tier() for t in tiers}
        self._since = now

    def on_batch(self, tier: str, items: int, *, relayed: bool) -> None:
        """Count one update batch sent or applied here (relayed through the hub, or P2P)."""
        t = self._tiers.get(tier)
        if t is None:
            return
        t.batches += 1
        t.items += max(items, 0)
        if relayed:
            t.relayed += 1
        else:
            t.p2p += 1

    def on_latency(self, tier: str, ms: float) -> None:
        """Count one write-to-ack round trip."""
        t = self._tiers.get(tier)
        if t is not None:
            t.latency_ms += ms
            t.latencies += 1

    def on_conflict(self, tier: str, resolution: str) -> None:
        """Count one conflict on `tier`, resolved by `resolution` (the resolver's name)."""
        t = self._tiers.get(tier)
        if t is not None:
            t.conflicts[resolution] = t.conflicts.get(resolution, 0) + 1

    def report(self, now: float, backlog: Mapping[str, int]) -> StatsReport:
        """Return this interval's figures (plus cumulative counts) and start the next one."""
        minutes = max(now - self._since, 1e-9) / 60.0
        out = []
        for name, t in sorted(self._tiers.items()):
            out.append(
                TierStats(
                    name,
                    float(t.batches / minutes),
                    float(t.items / t.batches) if t.batches else 0.0,
                    float(t.latency_ms / t.latencies) if t.latencies else 0.0,
                    t.p2p,
                    t.relayed,
                    max(0, backlog.get(name, 0)),
                    tuple(sorted(t.conflicts.items()))[:16],
                )
            )
            t.batches = t.items = t.latencies = 0
            t.latency_ms = 0.0
        self._since = now
        return StatsReport(self.node_id, tuple(out))


# Conflict rows a published report keeps per tier. An honest node has one (its tier's
# resolver); the wire allows 16. Past this, the rows with the smallest counts are folded
# into one OTHER_RESOLUTIONS row, so the mesh-wide conflict total stays exact.
MAX_PUBLISHED_CONFLICTS = 4
OTHER_RESOLUTIONS = "(other)"


def trim_conflicts(report: StatsReport) -> StatsReport:
    """Return `report` with at most MAX_PUBLISHED_CONFLICTS conflict rows per tier."""
    if all(len(t.conflicts) <= MAX_PUBLISHED_CONFLICTS for t in report.tiers):
        return report
    tiers = []
    for t in report.tiers:
        if len(t.conflicts) <= MAX_PUBLISHED_CONFLICTS:
            tiers.append(t)
            continue
        ranked = sorted(t.conflicts, key=lambda kv: (-kv[1], kv[0]))
        kept = dict(ranked[: MAX_PUBLISHED_CONFLICTS - 1])
        rest = sum(n for _k, n in ranked[MAX_PUBLISHED_CONFLICTS - 1 :])
        # Counts are u64 on the wire: a sum of them may not be.
        kept[OTHER_RESOLUTIONS] = min(U64, kept.get(OTHER_RESOLUTIONS, 0) + rest)
        tiers.append(replace(t, conflicts=tuple(sorted(kept.items()))))
    return StatsReport(report.node_id, tuple(tiers))


class StatsBoard:
    """The hub's latest report per node; reports older than `max_age_s` are left out.

    A publish is bounded twice: at most `max_nodes` reports (the wire's MAX_STATS_NODES),
    and at most `max_bytes` for the whole STATS_PUBLISH frame (one frame: 256 KiB). About
    200 bytes per honest node fit 1,024 nodes; larger reports (many conflict kinds, long
    labels) are first trimmed (`trim_conflicts`), and what still does not fit is left out,
    stalest first: the board takes reports freshest first and skips any that would go
    over. `left_out` counts the reports skipped by the last publish.
    """

    def __init__(
        self,
        max_age_s: float,
        max_nodes: int = MAX_STATS_NODES,
        max_bytes: int = DEFAULT_LIMITS.max_frame_bytes,
    ) -> None:
        """Start empty."""
        self.max_age_s = max_age_s
        self.max_nodes = min(max_nodes, MAX_STATS_NODES)
        self.max_bytes = max_bytes
        self.left_out = 0
        # node id -> (received at, trimmed report, its bytes in a publish)
        self._reports: dict[str, tuple[float, StatsReport, int]] = {}

    def put(self, report: StatsReport, now: float) -> None:
        """Keep `report` as its node's latest (conflict rows trimmed for publishing)."""
        trimmed = trim_conflicts(report)
        self._reports[report.node_id] = (now, trimmed, stats_report_bytes(trimmed))

    def publish(
        self, hub_id: str, term: int, now: float, max_bytes: int | None = None
    ) -> StatsPublish:
        """Return STATS_PUBLISH with the fresh reports that fit one frame, freshest first.

        The frame stays within `max_bytes` (default `self.max_bytes`) and `max_nodes`
        reports; reports left out are the stalest ones that would have gone over.
        """
        fresh = [e for e in self._reports.values() if now - e[0] <= self.max_age_s]
        self._reports = {e[1].node_id: e for e in fresh}
        fresh.sort(key=lambda e: (-e[0], e[1].node_id))
        limit = self.max_bytes if max_bytes is None else max_bytes
        budget = limit - stats_publish_overhead(hub_id)
        chosen: list[StatsReport] = []
        for _at, report, size in fresh:
            if len(chosen) >= self.max_nodes:
                break
            if size <= budget:
                chosen.append(report)
                budget -= size
        self.left_out = len(fresh) - len(chosen)
        return StatsPublish(hub_id, term, tuple(sorted(chosen, key=lambda r: r.node_id)))


@dataclass(frozen=True, slots=True)
class MeshStats:
    """What a node knows of the whole mesh: the hub's latest publish (`Node.mesh_stats()`).

    `received_at` is the node's `now` when it got (or, at the hub, made) the publish.
    """

    hub_id: str
    term: int
    reports: tuple[StatsReport, ...]
    received_at: float

    def totals(self) -> dict[str, object]:
        """Return mesh-wide figures: P2P share, conflicts by resolution, backlog, nodes."""
        p2p = relayed = backlog = 0
        conflicts: dict[str, int] = {}
        for report in self.reports:
            for t in report.tiers:
                p2p += t.p2p
                relayed += t.relayed
                backlog += t.backlog
                for resolution, count in t.conflicts:
                    conflicts[resolution] = conflicts.get(resolution, 0) + count
        total = p2p + relayed
        return {
            "nodes": len(self.reports),
            "p2p_ratio": p2p / total if total else 0.0,
            "relayed_batches": relayed,
            "p2p_batches": p2p,
            "backlog": backlog,
            "conflicts": dict(sorted(conflicts.items())),
        }
