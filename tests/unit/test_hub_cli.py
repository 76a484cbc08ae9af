"""The daemon side of the hub role: Prometheus text, `memmesh stats` output, leases."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from pathlib import Path

import pytest
from lone_node import NullTransport

from hub_role.signing import Ed25519Signer
from hub_role.stats import MeshStats
from mesh.api import Mesh
from mesh.cli import main
from mesh.config import NodeConfig
from mesh.daemon import Daemon, DaemonOptions
from mesh.hub_cli import METRICS, format_stats, metrics_lines, stats_json
from mesh.leases import LeaseError
from mesh.messages import StatsReport, TierStats
from mesh.node import Node
from mesh.runtime import NodeRuntime

VIEW = MeshStats(
    "hub-a",
    3,
    (
        StatsReport(
            "hub-a",
            (
                TierStats("L1", 12.0, 2.5, 4.25, 3, 9, 1, (("lww", 2),)),
                TierStats("L2", 0.0, 0.0, 0.0, 0, 0, 0, ()),
            ),
        ),
        StatsReport("node-b", (TierStats("L1", 6.0, 1.0, 8.0, 1, 3, 0, (("lww", 1), ("max", 4))),)),
    ),
    100.0,
)

SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)\})? (?P<value>\S+)$'
)


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse Prometheus text format 0.0.4 strictly; return family -> [(labels, value)]."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in families or not families[name], f"HELP after samples: {name}"
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name not in typed, f"two TYPE lines for {name}"
            typed[name] = kind
            families.setdefault(name, [])
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(
            re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match["labels"] or "")
        )
        families.setdefault(match["name"], []).append((labels, float(match["value"])))
    return families


def test_metrics_have_the_source_design_names_help_type_and_labels() -> None:
    families = parse_exposition("\n".join(metrics_lines(VIEW)) + "\n")
    assert set(METRICS) <= set(families)
    freq = {(lb["node"], lb["tier"]): v for lb, v in families["memshadow_sync_frequency"]}
    assert freq == {("hub-a", "L1"): 12.0, ("hub-a", "L2"): 0.0, ("node-b", "L1"): 6.0}
    latency = {(lb["node"], lb["tier"]): v for lb, v in families["memshadow_sync_latency_ms"]}
    assert latency[("node-b", "L1")] == 8.0
    conflicts = {lb["resolution"]: v for lb, v in families["memshadow_conflicts_total"]}
    assert conflicts == {"lww": 3.0, "max": 4.0}
    assert families["memshadow_p2p_ratio"] == [({}, 4 / 16)]
    backlog = {(lb["node"], lb["tier"]): v for lb, v in families["memshadow_sync_backlog"]}
    assert backlog[("hub-a", "L1")] == 1.0


def test_metrics_without_stats_are_still_valid_and_typed() -> None:
    families = parse_exposition("\n".join(metrics_lines(None)) + "\n")
    assert {name: samples for name, samples in families.items()} == {n: [] for n in METRICS}


def test_stats_json_and_table_cover_every_node_and_tier() -> None:
    stats = stats_json(VIEW, lambda t: t + 1_000.0)
    assert stats["hub_id"] == "hub-a" and stats["term"] == 3 and stats["received_at"] == 1100.0
    assert [n["node_id"] for n in stats["nodes"]] == ["hub-a", "node-b"]
    l1 = stats["nodes"][0]["tiers"][0]
    assert l1["p2p_share"] == 0.25 and l1["conflicts"] == {"lww": 2}
    assert stats["nodes"][0]["tiers"][1]["p2p_share"] is None
    assert stats["totals"]["nodes"] == 2
    table = format_stats(stats)
    assert table.startswith("hub hub-a  term 3  nodes 2")
    assert "hub-a*" in table and "lww=1, max=4" in table
    assert len(table.splitlines()) == 3 + 3 + 1


def test_stats_and_lease_without_a_daemon_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["stats", "--data-dir", str(tmp_path)],
        ["lease", "--data-dir", str(tmp_path), "job", "--ttl", "5"],
        ["release", "--data-dir", str(tmp_path), "job", "--token", "1"],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no daemon is running" in err


async def test_lease_through_a_running_node_is_granted_fenced_and_renewed(
    tmp_path: Path,
) -> None:
    async with Mesh.open(tmp_path / "n") as mesh:
        with pytest.raises(LeaseError, match="running daemon"):
            await mesh.lease("job", 5.0)
        signer = Ed25519Signer(hashlib.sha256(b"n").digest())
        node = Node(mesh.memory, NodeConfig(), random.Random(1), signer=signer)
        async with NodeRuntime(node, mesh._running(), NullTransport()) as runtime:
            mesh.attach(runtime)
            daemon = Daemon(DaemonOptions(tmp_path / "n"))
            daemon.mesh, daemon.runtime = mesh, runtime
            with pytest.raises(ValueError, match=r"^no mesh statistics yet: the hub publishes"):
                await daemon.handle({"op": "stats"})  # the CLI prints this as one line
            runtime.tick()  # what the daemon does after its discovery grace period
            async with asyncio.timeout(10):
                while not node.is_hub:  # a lone eligible node claims after its boot wait
                    await asyncio.sleep(0.05)
            first = await mesh.lease("job", 30.0)
            assert first.holder == node.node_id and node.hub is not None
            assert first.term == node.hub.term and first.token >> 32 == first.term
            async with mesh.lease("job", 30.0) as renewed:  # its holder renews: a new token
                assert renewed.token > first.token
            with pytest.raises(LeaseError, match="bad lease name or ttl"):
                await mesh.lease("job", 0.0)
            # The daemon's whole metrics page parses, with the memshadow_* families typed.
            families = parse_exposition(daemon.metrics_text())
            assert set(METRICS) <= set(families) and "memmesh_frames_out_total" in families
            assert families["memmesh_is_hub"] == [({}, 1.0)]
            mesh.attach(None)
