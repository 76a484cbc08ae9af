"""The hub benchmark: links per node and relay throughput on a real LAN; bytes per node
with and without the hub relay in the simulator.

Network part (root; `tests/netlab.py` namespaces): for N in {5, 10}, N production daemons
(`bench._net_daemon`, `--profile standard`) elect a hub. Figures: links per node (against
a full mesh, N - 1) and relay throughput: a non-hub node writes a burst of NORMAL items,
which travel through the hub, timed until every other node holds them. The baseline,
measured in the same run on the same mesh, is the same burst at CRITICAL priority, which
goes peer to peer over direct links.

Simulator part: `memmesh sim lossy-lan --nodes 100 --seed 1 --loss 0 --duplicate 0` with
and without `--hub`: bytes per node (the baseline is the run without the hub) and links
per node. Run it with ``python -m bench hub``; ``--quick`` shrinks the bursts.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Progress, figure
from bench.net import DaemonChild, Run, _node_dirs, _stop_all, _wait, netlab
from simulations.runner import run as run_scenario
from simulations.scenarios import make_params

DESCRIPTION = (
    "hub role: links per node and relay throughput for 5 and 10 daemons in namespaces "
    "(vs P2P in the same run); simulated bytes per node with and without the hub at N=100"
)

STARTUP_S = 120.0
AGREE_S = 30.0
DELIVER_S = 300.0
SETTLE_S = 2.0
TIER = "L1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the hub family's options."""
    parser.add_argument("--quick", action="store_true", help="smaller bursts (500 items)")
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(5, 10),
        help="comma-separated numbers of daemons (default 5,10)",
    )
    parser.add_argument("--items", type=int, help="items per burst (default 2000; 500 quick)")
    parser.add_argument("--sim-nodes", type=int, default=100, help="simulated mesh size (100)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (1)")
    parser.add_argument("--skip-net", action="store_true", help="simulator part only")
    parser.add_argument("--skip-sim", action="store_true", help="network part only")
    parser.add_argument("--workdir", type=Path, help="where the data directories go")


# --------------------------------------------------------------------- network


def _hub_of(d: DaemonChild) -> tuple[str, int] | None:
    hub = d.call("status")["hub"]
    return None if hub is None else (hub["id"], hub["term"])


def _agreed(daemons: list[DaemonChild]) -> tuple[str, int] | None:
    seen = {_hub_of(d) for d in daemons}
    if len(seen) != 1:
        return None
    return next(iter(seen))


def _burst(
    writer: DaemonChild,
    readers: list[DaemonChild],
    *,
    prefix: str,
    start: int,
    count: int,
    priority: str,
) -> dict[str, Any]:
    """Write `count` items on `writer`; return the seconds until every reader holds them."""
    before = {d.label: d.bench("counters")["items"][TIER] for d in readers}
    began = time.perf_counter()
    writer.bench(
        "put_many",
        tier=TIER,
        prefix=prefix,
        start=start,
        count=count,
        batch=50,
        priority=priority,
    )
    written = time.perf_counter() - began

    def everywhere() -> bool:
        return all(d.bench("counters")["items"][TIER] >= before[d.label] + count for d in readers)

    _wait(f"{count} {priority} items on {len(readers)} nodes", everywhere, DELIVER_S, 0.02)
    took = time.perf_counter() - began
    return {
        "items": count,
        "priority": priority,
        "write_s": round(written, 3),
        "everywhere_s": round(took, 3),
        "items_per_s": round(count / took, 1),
    }


def measure_mesh(
    net: netlab.Netlab, work: Path, n: int, items: int, progress: Progress
) -> dict[str, Any]:
    """Start `n` daemons, wait for one hub, count links, time relayed and P2P bursts."""
    hosts = [net.add_host() for _ in range(n)]
    names = [f"h{n}-{i + 1}" for i in range(n)]
    dirs = _node_dirs(work / f"n{n}", names)
    run = Run(net, work, progress, profile=False)
    daemons = [
        DaemonChild(run, host, dirs[name], name) for host, name in zip(hosts, names, strict=True)
    ]
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_up(STARTUP_S)
        ids = {d.label: d.call("status")["node_id"] for d in daemons}
        hub_seen: list[tuple[str, int]] = []

        def one_hub() -> bool:
            hub = _agreed(daemons)
            if hub is not None:
                hub_seen.append(hub)
            return hub is not None

        elected = _wait(f"{n} daemons to agree on a hub", one_hub, AGREE_S, 0.05)
        hub_id, term = hub_seen[-1]
        by_id = {ids[d.label]: d for d in daemons}
        hub = by_id[hub_id]

        def linked_to_hub() -> bool:
            return all(hub_id in d.connected() for d in daemons if d is not hub)

        _wait("every node to link to the hub", linked_to_hub, AGREE_S, 0.05)
        time.sleep(SETTLE_S)  # let random links settle
        links = {d.label: len(d.connected()) for d in daemons}
        others = [links[d.label] for d in daemons if d is not hub]
        progress(f"N={n}: hub {hub.label} term {term}; links per node {links}")
        writer = next(d for d in daemons if d is not hub)
        readers = [d for d in daemons if d is not writer]
        _burst(writer, readers, prefix="warm", start=0, count=50, priority="NORMAL")
        relayed = _burst(writer, readers, prefix="relay", start=0, count=items, priority="NORMAL")
        progress(f"N={n}: relayed {relayed}")
        direct = _burst(writer, readers, prefix="p2p", start=0, count=items, priority="CRITICAL")
        progress(f"N={n}: P2P {direct}")
        return {
            "nodes": n,
            "hub": {"label": hub.label, "id": hub_id, "term": term},
            "election_s_after_all_up": round(elected, 3),
            "links": links,
            "links_mean": round(statistics.fmean(links.values()), 2),
            "links_hub": links[hub.label],
            "links_non_hub_mean": round(statistics.fmean(others), 2),
            "relayed": relayed,
            "p2p": direct,
        }
    finally:
        _stop_all(daemons)


def network_figures(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Return the figures of the network part."""
    figures: dict[str, Any] = {}
    for n, r in results.items():
        figures[f"links_per_node_n{n}"] = figure(
            value=r["links_mean"],
            unit="links per node",
            baseline_name="full mesh (N - 1)",
            baseline_value=float(n - 1),
            ratio_meaning="mean links per node / full-mesh links per node",
            higher_is_better=False,
            raw={k: r[k] for k in ("links", "links_hub", "links_non_hub_mean", "hub")},
        )
        figures[f"relay_throughput_n{n}"] = figure(
            value=r["relayed"]["items_per_s"],
            unit="items/s written on one node until on every node (NORMAL, through the hub)",
            baseline_name="the same burst at CRITICAL priority (peer to peer), same mesh",
            baseline_value=r["p2p"]["items_per_s"],
            ratio_meaning="relayed items/s / peer-to-peer items/s",
            raw={"relayed": r["relayed"], "p2p": r["p2p"]},
        )
    return figures


# --------------------------------------------------------------------- simulator


def simulate(nodes: int, seed: int, *, hub: bool, progress: Progress) -> dict[str, Any]:
    """Run lossy-lan without loss or duplicates; return its bytes, links and checks."""
    params = make_params("lossy-lan", nodes=nodes, seed=seed, loss=0.0, duplicate=0.0, hub_role=hub)
    started = time.perf_counter()
    s = run_scenario(params).summary
    wall = time.perf_counter() - started
    progress(f"sim N={nodes} hub={hub}: {s['bytes_per_node']:.0f} B/node in {wall:.1f} s")
    out = {
        "bytes_per_node": s["bytes_per_node"],
        "messages_per_node": s["messages_per_node"],
        "converged": s["converged"],
        "lost_acked_writes": s["lost_acked_writes"],
        "wall_s": round(wall, 1),
    }
    if hub:
        out["links_per_node"] = s["hub"]["links_per_node"]
        out["max_links"] = s["hub"]["max_links"]
        out["relayed_share"] = s["hub"]["relayed_share"]
    return out


def sim_figures(nodes: int, seed: int, progress: Progress) -> dict[str, Any]:
    """Return the simulator figure: bytes per node with the hub vs without."""
    without = simulate(nodes, seed, hub=False, progress=progress)
    with_hub = simulate(nodes, seed, hub=True, progress=progress)
    return {
        f"sim_bytes_per_node_n{nodes}": figure(
            value=with_hub["bytes_per_node"],
            unit="bytes per node (simulated, whole run)",
            baseline_name="the same run without the hub relay",
            baseline_value=without["bytes_per_node"],
            ratio_meaning="bytes per node with the hub / without",
            higher_is_better=False,
            raw={"with_hub": with_hub},
            baseline_raw={"run": without},
        )
    }


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run both parts; return {"params", "figures", "targets", "notes"}."""
    items = args.items or (500 if args.quick else 2000)
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if not args.skip_net:
        reason = netlab.available()
        if reason is not None:
            raise SystemExit(f"bench hub needs network namespaces (or --skip-net): {reason}")
        work = Path(tempfile.mkdtemp(prefix="memmesh-bench-hub-", dir=args.workdir))

        def terminated(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")  # unwinds: children and namespaces go

        previous = signal.signal(signal.SIGTERM, terminated)
        try:
            results = {}
            for n in args.sizes:
                with netlab.Netlab() as net:
                    results[n] = measure_mesh(net, work, n, items, progress)
            figures.update(network_figures(results))
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(work, ignore_errors=True)
    else:
        skipped["network"] = "--skip-net"
    if not args.skip_sim:
        figures.update(sim_figures(args.sim_nodes, args.seed, progress))
    else:
        skipped["simulator"] = "--skip-sim"
    return {
        "params": {
            "sizes": list(args.sizes),
            "items": items,
            "quick": bool(args.quick),
            "sim_nodes": args.sim_nodes,
            "seed": args.seed,
            "skipped": skipped,
        },
        "figures": figures,
        "targets": {},
        "notes": [
            "network: N namespaces on one bridge (tests/netlab.py) on one machine; daemons "
            "are `memmesh run --profile standard` (bench/_net_daemon.py)",
            "links: a node links to every member up to NodeConfig.full_mesh_max (16), so "
            "N = 5 and 10 are full meshes; the bound shows in the simulator at N = 100",
            "relay throughput baseline: the same burst at CRITICAL priority (flooded peer to "
            "peer), measured right after on the same mesh",
            "simulator: memmesh sim lossy-lan --nodes N --seed S --loss 0 --duplicate 0 "
            "[--hub] --json",
        ],
    }
