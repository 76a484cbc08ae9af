"""`memmesh sim SCENARIO` / `python -m simulations SCENARIO`: run one simulated study.

The JSON (`--json`) depends only on the parameters and the seed: the same seed gives the
same bytes. Progress and the wall time of the run go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from simulations.report import PlotUnavailableError, check_plot_available, human, plot, to_csv
from simulations.report import to_json as summary_json
from simulations.runner import run
from simulations.scenarios import DESCRIPTIONS, SCENARIOS, make_params

EXIT_USAGE = 2

EPILOG = """\
definitions:
  round                 one anti-entropy interval (NodeConfig.anti_entropy_interval_s, 1 s):
                        every live node starts one exchange with a random member
  rounds_to_converge    rounds from the settle point (heal / end of churn / end of the
                        lossy writes) until every live node holds every written item
                        (checked every --check-interval seconds), rounded up
  bound_rounds          log2(N) + ln(N)
  lost_acked_writes     acknowledged write requests with an item missing on a live node at
                        the end
  conflicts             distinct items in conflict on at least one live node at the end
                        (conflict_events: conflict events emitted by all nodes together)
  bytes/messages_per_node
                        frames handed to the network over the whole run, divided by N
  failover_s            hub-failover: from killing the hub until every live node follows
                        one new hub and it has relayed a frame
  relayed_share/p2p_share
                        update batches sent through the hub / flooded peer to peer

scenarios:
""" + "\n".join(f"  {name:<22}{DESCRIPTIONS[name]}" for name in SCENARIOS)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the simulator command line."""
    parser = argparse.ArgumentParser(
        prog="memmesh sim",
        description="Run a deterministic simulated mesh of real memmesh nodes and measure "
        "convergence, durability and traffic.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenario", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS)
    )
    parser.add_argument("--nodes", type=int, help="mesh size (default per scenario)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument("--csv", type=Path, metavar="FILE", help="write the time series as CSV")
    out.add_argument("--plot", type=Path, metavar="FILE", help="draw convergence as a PNG")
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    work = parser.add_argument_group("workload")
    work.add_argument("--writes", type=int, help="write requests (default per scenario)")
    work.add_argument("--items-per-write", type=int, help="items per write request (3)")
    work.add_argument("--peer-ack", type=float, help="share of writes asking ack=peer (0.25)")
    work.add_argument("--conflicting", type=int, help="items written concurrently on every side")
    faults = parser.add_argument_group("faults and timing (simulated seconds)")
    faults.add_argument("--groups", type=int, help="partition groups (partition-heal, scale)")
    faults.add_argument("--duration", type=float, help="the active phase: partition, churn, ...")
    faults.add_argument("--warmup", type=float, help="boot phase before any fault (3)")
    faults.add_argument("--loss", type=float, help="frame loss probability")
    faults.add_argument("--duplicate", type=float, help="frame duplication probability")
    faults.add_argument("--latency-ms", type=float, help="one-way latency")
    faults.add_argument("--jitter-ms", type=float, help="extra random delay (reorders frames)")
    faults.add_argument("--bandwidth-mbps", type=float, help="per-link bandwidth (100)")
    faults.add_argument("--crash-rate", type=float, help="crashes per node per second")
    faults.add_argument("--down", type=float, help="mean downtime of a crashed node")
    faults.add_argument("--skew-ms", type=float, help="max clock skew of a node, either way")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--max-rounds", type=int, help="give up after this many rounds (60)")
    run_group.add_argument("--check-interval", type=float, help="convergence check step (0.05)")
    run_group.add_argument(
        "--discovery",
        choices=("burst", "pairwise"),
        help="burst: every node learns all peers at once (default); pairwise: one PeerFound "
        "per pair, as mDNS",
    )
    run_group.add_argument(
        "--timer-quantum", type=float, help="re-arm node timers at most this often (s)"
    )
    run_group.add_argument(
        "--links-required",
        action="store_true",
        default=None,
        help="deliver a frame only over an open link, as the WebRTC transport does "
        "(default: any two reachable nodes can talk)",
    )
    run_group.add_argument(
        "--hub",
        action="store_true",
        default=None,
        help="nodes elect a hub and relay HIGH/NORMAL/LOW through it (always on in "
        "hub-failover); durable writes then ask ack=hub instead of ack=peer",
    )
    run_group.add_argument(
        "--kill-hub-after", type=float, help="hub-failover: kill the hub this long into the run"
    )
    return parser


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        params = make_params(
            args.scenario,
            nodes=args.nodes,
            seed=args.seed,
            writes=args.writes,
            items_per_write=args.items_per_write,
            peer_ack_fraction=args.peer_ack,
            conflicting=args.conflicting,
            groups=args.groups,
            duration_s=args.duration,
            warmup_s=args.warmup,
            loss=args.loss,
            duplicate=args.duplicate,
            latency_s=_ms(args.latency_ms),
            jitter_s=_ms(args.jitter_ms),
            bandwidth_bps=None if args.bandwidth_mbps is None else args.bandwidth_mbps * 1e6,
            crash_rate=args.crash_rate,
            down_s=args.down,
            skew_s=_ms(args.skew_ms),
            max_rounds=args.max_rounds,
            check_s=args.check_interval,
            discovery=args.discovery,
            timer_quantum_s=args.timer_quantum,
            links_required=args.links_required,
            hub_role=args.hub,
            kill_hub_after_s=args.kill_hub_after,
        )
        if args.plot is not None:
            check_plot_available()
    except (ValueError, PlotUnavailableError) as exc:
        print(f"memmesh sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def progress(message: str) -> None:
        print(f"[sim {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr)

    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = run(params, progress=None if args.quiet else progress)
    except KeyboardInterrupt:
        return 130
    summary = result.summary
    if args.json:
        sys.stdout.write(summary_json(summary))
    else:
        print(human(summary))
    try:
        if args.csv is not None:
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            args.csv.write_text(to_csv(result.series), encoding="utf-8")
        if args.plot is not None:
            plot(summary, result.series, args.plot)
    except OSError as exc:
        print(f"memmesh sim: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    print(
        f"memmesh sim: {params.scenario}, {params.nodes} nodes, seed {params.seed}: "
        f"{result.wall_s:.1f} s wall ({time.process_time() - cpu_started:.1f} s CPU) for "
        f"{summary['sim_time_s']:.2f} s simulated",
        file=sys.stderr,
    )
    return 0
