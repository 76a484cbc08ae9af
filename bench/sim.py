"""The simulation benchmark: convergence rounds and traffic against the theoretical bound.

Runs the `scale` scenario of the simulator (writes on both sides of a 5 s partition, then
heal) at N = 10, 100 and 1,000 nodes, and an idle 10-node mesh for its steady traffic.
Every figure except wall time is simulated, so it depends only on the seed. Run it with
``python -m bench sim``; ``--quick`` skips the 1,000-node run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import Progress, figure
from simulations.runner import run as run_scenario
from simulations.scenarios import make_params

DESCRIPTION = "simulated mesh: convergence rounds vs log2(N)+ln(N), bytes per node, idle traffic"

DEFAULT_SIZES = (10, 100, 1000)
QUICK_SIZES = (10, 100)
TARGET_IDLE_BYTES_PER_S = 1024.0
TARGET_SCALE_WALL_S = 120.0
SCALE_NODES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sim family's options."""
    parser.add_argument("--quick", action="store_true", help="skip the 1,000-node run")
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=None,
        help="comma-separated mesh sizes (default 10,100,1000; 10,100 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (1)")
    parser.add_argument("--idle-nodes", type=int, default=10, help="idle mesh size (10)")
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="simulated idle window (60)"
    )


def _convergence(nodes: int, seed: int, progress: Progress) -> dict[str, Any]:
    params = make_params("scale", nodes=nodes, seed=seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_scenario(params, progress=lambda m: progress(f"  N={nodes}: {m}"))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    s = result.summary
    phases = {p["name"]: p for p in s["phases"]}
    repair_bytes = sum(
        phases[name]["bytes_per_node"] for name in ("partition", "settle") if name in phases
    )
    progress(
        f"N={nodes}: converged={s['converged']} rounds={s['rounds_to_converge']} "
        f"bound={s['bound_rounds']} wall={wall:.1f}s cpu={cpu:.1f}s"
    )
    rounds = s["rounds_to_converge"]
    return {
        "nodes": nodes,
        "converged": s["converged"],
        "lost_acked_writes": s["lost_acked_writes"],
        "time_to_converge_s": s["time_to_converge_s"],
        "rounds": figure(
            value=float(rounds if rounds is not None else s["params"]["max_rounds"]),
            unit="rounds",
            baseline_name="log2(N) + ln(N)",
            baseline_value=s["bound_rounds"],
            ratio_meaning="rounds to converge after the heal / bound (<= 1 meets it)",
            target=s["bound_rounds"],
            higher_is_better=False,
            raw={"converged": s["converged"], "time_to_converge_s": s["time_to_converge_s"]},
        ),
        "bytes_per_node": figure(
            value=repair_bytes,
            unit="bytes sent per node (partition + settle phases)",
            baseline_name="write payload: the Yjs updates of every write, each received once",
            baseline_value=float(s["write_payload_bytes"]),
            ratio_meaning="bytes each node sent / bytes each node must at least receive",
        ),
        "bytes_per_node_whole_run": s["bytes_per_node"],
        "messages_per_node_whole_run": s["messages_per_node"],
        "phases": s["phases"],
        "traffic_by_type": s["traffic_by_type"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "params": s["params"],
    }


def _idle(nodes: int, seconds: float, seed: int, progress: Progress) -> dict[str, Any]:
    params = make_params("idle", nodes=nodes, seed=seed, duration_s=seconds)
    result = run_scenario(params)
    s = result.summary
    idle = next(p for p in s["phases"] if p["name"] == "idle")
    by_type = {
        name: {
            "frames_per_s_per_node": round(v["frames"] / nodes / seconds, 3),
            "bytes_per_s_per_node": round(v["bytes"] / nodes / seconds, 1),
        }
        for name, v in idle["by_type"].items()
    }
    value = float(s["idle_bytes_per_s_per_node"])
    progress(f"idle {nodes} nodes: {value:.0f} B/s per node")
    dominant = max(by_type, key=lambda k: by_type[k]["bytes_per_s_per_node"], default=None)
    return figure(
        value=value,
        unit="bytes/s sent per node",
        baseline_name="target",
        baseline_value=TARGET_IDLE_BYTES_PER_S,
        ratio_meaning="idle traffic / 1 KB/s target",
        target=TARGET_IDLE_BYTES_PER_S,
        higher_is_better=False,
        raw={
            "nodes": nodes,
            "idle_window_s": seconds,
            "converged_before_idle": s["converged"],
            "by_type": by_type,
            "dominant_type": dominant,
            "messages_per_s_per_node": s["idle_messages_per_s_per_node"],
        },
    )


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run every size and the idle mesh; return {"params", "figures", "targets", "notes"}."""
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    figures: dict[str, Any] = {}
    for nodes in sizes:
        progress(f"convergence: scale scenario at N={nodes}")
        figures[f"convergence_n{nodes}"] = _convergence(nodes, args.seed, progress)
    figures["idle_traffic"] = _idle(args.idle_nodes, args.idle_seconds, args.seed, progress)
    big = figures.get(f"convergence_n{SCALE_NODES}")
    if big is not None:
        figures["scale_wall_time"] = figure(
            value=big["wall_s"],
            unit="s wall",
            baseline_name="target",
            baseline_value=TARGET_SCALE_WALL_S,
            ratio_meaning="wall time of the 1,000-node run / 2-minute target",
            target=TARGET_SCALE_WALL_S,
            higher_is_better=False,
            raw={"cpu_s": big["cpu_s"]},
        )
    targets: dict[str, Any] = {}
    for name, value in figures.items():
        for key in ("rounds", None):
            fig = value.get(key) if key else value
            if isinstance(fig, dict) and fig.get("target") is not None:
                label = f"{name}.{key}" if key else name
                targets[label] = {
                    "target": f"{fig['target_direction']} {fig['target']}",
                    "met": fig["met"],
                }
    return {
        "params": {
            "sizes": list(sizes),
            "seed": args.seed,
            "quick": bool(args.quick),
            "scenario": "scale",
            "idle_nodes": args.idle_nodes,
            "idle_seconds": args.idle_seconds,
        },
        "figures": figures,
        "targets": targets,
        "notes": [
            "a round is one anti-entropy interval (1 s simulated); rounds count from the heal",
            "every figure except wall_s is simulated and depends only on the seed",
            "bytes_per_node: frames handed to the network, per node, while writes happened "
            "and during the repair after the heal; baseline: the write updates' own size",
            "reproduce one run: memmesh sim scale --nodes N --seed S --json",
        ],
    }
