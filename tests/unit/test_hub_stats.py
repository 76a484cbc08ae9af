"""hub_role.stats: per-tier figures per interval, the hub's board, mesh-wide totals."""

from __future__ import annotations

import pytest

from hub_role.stats import MeshStats, StatsBoard, StatsCollector


def test_collector_reports_rates_means_and_cumulative_counts() -> None:
    stats = StatsCollector("a", ("L1", "L2"), now=0.0)
    for items in (2, 4):
        stats.on_batch("L1", items, relayed=True)
    stats.on_batch("L1", 6, relayed=False)
    stats.on_latency("L1", 10.0)
    stats.on_latency("L1", 30.0)
    stats.on_conflict("L2", "merge")
    stats.on_batch("L9", 1, relayed=True)  # a tier we do not replicate: ignored
    report = stats.report(30.0, {"L1": 5})
    l1, l2 = report.tiers
    assert report.node_id == "a"
    assert (l1.tier, l1.syncs_per_min, l1.items_per_batch, l1.latency_ms) == ("L1", 6.0, 4.0, 20.0)
    assert (l1.p2p, l1.relayed, l1.backlog) == (1, 2, 5)
    assert l2.conflicts == (("merge", 1),)
    again = stats.report(90.0, {})
    assert again.tiers[0].syncs_per_min == 0.0 and again.tiers[0].relayed == 2  # cumulative


def test_board_publishes_fresh_reports_and_totals() -> None:
    board = StatsBoard(max_age_s=10.0)
    a, b = StatsCollector("a", ("L1",), 0.0), StatsCollector("b", ("L1",), 0.0)
    a.on_batch("L1", 1, relayed=True)
    b.on_batch("L1", 1, relayed=False)
    b.on_conflict("L1", "lww")
    board.put(a.report(1.0, {}), now=1.0)
    board.put(b.report(1.0, {"L1": 3}), now=5.0)
    publish = board.publish("hub", 4, now=12.0)  # a's report is 11 s old: left out
    assert [r.node_id for r in publish.reports] == ["b"]
    view = MeshStats("hub", 4, board.publish("hub", 4, 12.0).reports, 12.0)
    totals = view.totals()
    assert totals["nodes"] == 1 and totals["backlog"] == 3
    assert totals["p2p_ratio"] == pytest.approx(1.0)
    assert totals["conflicts"] == {"lww": 1}
