"""The daemon and CLI side of the hub role: `memmesh stats`, `memmesh lease`, Prometheus.

Pure formatting of what the Node knows (`Node.mesh_stats()`, `Node.hub`) plus the CLI
commands that fetch it through the daemon's control socket.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub_role.stats import MeshStats
from mesh.control import ControlError, call, daemon_running

# The source design's metric names (HELP text, TYPE).
METRICS: dict[str, tuple[str, str]] = {
    "memshadow_sync_frequency": ("Update batches sent and applied per minute.", "gauge"),
    "memshadow_batch_size": ("Mean items per update batch.", "gauge"),
    "memshadow_sync_latency_ms": ("Mean write-to-ack round trip in milliseconds.", "gauge"),
    "memshadow_conflicts_total": ("Conflicts resolved, by resolution, mesh-wide.", "counter"),
    "memshadow_p2p_ratio": ("Share of update batches sent peer to peer (vs hub-relayed).", "gauge"),
    "memshadow_sync_backlog": ("Updates waiting to be sent.", "gauge"),
}


def stats_json(view: MeshStats, wall_time: Callable[[float], float]) -> dict[str, Any]:
    """Return the `memmesh stats --json` object of a mesh-wide stats view."""
    nodes = []
    for report in view.reports:
        tiers = []
        for t in report.tiers:
            batches = t.p2p + t.relayed
            tiers.append(
                {
                    "tier": t.tier,
                    "syncs_per_min": round(t.syncs_per_min, 3),
                    "items_per_batch": round(t.items_per_batch, 3),
                    "latency_ms": round(t.latency_ms, 3),
                    "p2p_batches": t.p2p,
                    "relayed_batches": t.relayed,
                    "p2p_share": round(t.p2p / batches, 4) if batches else None,
                    "backlog": t.backlog,
                    "conflicts": dict(t.conflicts),
                }
            )
        nodes.append({"node_id": report.node_id, "tiers": tiers})
    return {
        "hub_id": view.hub_id,
        "term": view.term,
        "received_at": round(wall_time(view.received_at), 3),
        "totals": view.totals(),
        "nodes": nodes,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Return the human table of `memmesh stats`: one block per node, one row per tier."""
    totals = stats["totals"]
    conflicts = ", ".join(f"{k}={v}" for k, v in totals["conflicts"].items()) or "none"
    lines = [
        f"hub {stats['hub_id']}  term {stats['term']}  nodes {totals['nodes']}  "
        f"P2P share {totals['p2p_ratio']:.0%}  backlog {totals['backlog']}  "
        f"conflicts {conflicts}",
        "",
        f"{'node':<16} {'tier':<4} {'syncs/min':>9} {'items/batch':>11} {'latency ms':>10} "
        f"{'P2P':>6} {'relayed':>7} {'P2P %':>6} {'backlog':>7}  conflicts",
    ]
    for node in stats["nodes"]:
        mark = "*" if node["node_id"] == stats["hub_id"] else " "
        for t in node["tiers"]:
            share = "-" if t["p2p_share"] is None else f"{t['p2p_share']:.0%}"
            conf = ", ".join(f"{k}={v}" for k, v in t["conflicts"].items()) or "-"
            lines.append(
                f"{node['node_id'] + mark:<16} {t['tier']:<4} {t['syncs_per_min']:>9.1f} "
                f"{t['items_per_batch']:>11.1f} {t['latency_ms']:>10.1f} {t['p2p_batches']:>6} "
                f"{t['relayed_batches']:>7} {share:>6} {t['backlog']:>7}  {conf}"
            )
    lines.append("(* the hub)")
    return "\n".join(lines)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def metrics_lines(view: MeshStats | None) -> list[str]:
    """Return the Prometheus text lines of the `memshadow_*` families for a stats view.

    Per node and tier (labels `node`, `tier`): sync frequency, batch size, latency,
    backlog; mesh-wide: conflicts by `resolution`, the P2P ratio. Families without data
    (no stats from the hub yet) have HELP and TYPE lines only.
    """
    samples: dict[str, list[str]] = {name: [] for name in METRICS}
    if view is not None:
        for report in view.reports:
            for t in report.tiers:
                labels = f'node="{_label(report.node_id)}",tier="{_label(t.tier)}"'
                for name, value in (
                    ("memshadow_sync_frequency", t.syncs_per_min),
                    ("memshadow_batch_size", t.items_per_batch),
                    ("memshadow_sync_latency_ms", t.latency_ms),
                    ("memshadow_sync_backlog", float(t.backlog)),
                ):
                    samples[name].append(f"{name}{{{labels}}} {_number(value)}")
        totals = view.totals()
        conflicts = totals["conflicts"]
        assert isinstance(conflicts, dict)
        for resolution, count in conflicts.items():
            samples["memshadow_conflicts_total"].append(
                f'memshadow_conflicts_total{{resolution="{_label(resolution)}"}} {count}'
            )
        ratio = totals["p2p_ratio"]
        assert isinstance(ratio, float)
        samples["memshadow_p2p_ratio"].append(f"memshadow_p2p_ratio {_number(ratio)}")
    lines: list[str] = []
    for name, (help_text, kind) in METRICS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples[name]]
    return lines


# ----------------------------------------------------------------- CLI commands


def add_hub_commands(sub: Any, command: Any) -> None:
    """Register `stats`, `lease` and `release` on the `memmesh` parser."""
    p = command("stats", cmd_stats, "mesh-wide sync statistics from the hub (needs a daemon)")
    p.add_argument("--json", action="store_true")

    p = command("lease", cmd_lease, "take an advisory lease from the hub (needs a daemon)")
    p.add_argument("name", help="the lease name")
    p.add_argument("--ttl", type=float, required=True, metavar="S", help="seconds to hold it")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the hub")
    p.add_argument("--json", action="store_true")

    p = command("release", cmd_release, "give up an advisory lease (needs a daemon)")
    p.add_argument("name", help="the lease name")
    p.add_argument("--token", type=int, required=True, help="the fencing token of the grant")


def _daemon(args: argparse.Namespace) -> Path:
    data_dir = Path(args.data_dir)
    if not daemon_running(data_dir):
        raise ControlError(f"no daemon is running on {data_dir}: start `memmesh run` first")
    return data_dir


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the mesh-wide statistics the hub last published."""
    stats = call(_daemon(args), "stats")
    if args.json:
        _print(stats)
    else:
        print(format_stats(stats))
    return 0


def cmd_lease(args: argparse.Namespace) -> int:
    """Take a lease and print its token (the daemon's node holds it)."""
    lease = call(
        _daemon(args),
        "lease",
        timeout=args.timeout + 5.0,
        name=args.name,
        ttl_s=args.ttl,
        timeout_s=args.timeout,
    )
    if args.json:
        _print(lease)
    else:
        print(
            f"lease {lease['name']} granted: token {lease['token']}  term {lease['term']}  "
            f"holder {lease['holder']}  for {lease['ttl_s']:.1f} s"
        )
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Give up a lease."""
    call(_daemon(args), "release", name=args.name, token=args.token)
    print(f"released {args.name}")
    return 0
