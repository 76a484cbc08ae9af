"""Turn a run into output: deterministic JSON, a CSV time series, a PNG plot, a summary."""

from __future__ import annotations

import csv
import importlib
import io
import json
from pathlib import Path
from typing import Any

from simulations.metrics import SERIES_COLUMNS, Sample

PLOT_HINT = "plotting needs matplotlib: pip install memmesh[plot]"


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed (the optional `plot` extra)."""


def to_json(summary: dict[str, Any]) -> str:
    """Return the summary as JSON text: same run, same bytes (no wall-clock values)."""
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def to_csv(series: list[Sample]) -> str:
    """Return the time series as CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SERIES_COLUMNS)
    for sample in series:
        writer.writerow(sample.row())
    return out.getvalue()


def human(summary: dict[str, Any]) -> str:
    """Return a short human-readable summary of a run."""
    converged = summary["converged"]
    rounds = summary["rounds_to_converge"]
    verdict = (
        f"converged in {summary['time_to_converge_s']:.2f} s = {rounds} rounds "
        f"(bound {summary['bound_formula']} = {summary['bound_rounds']:.1f}: "
        f"{'met' if summary['within_bound'] else 'NOT met'})"
        if converged
        else f"did NOT converge within {summary['params']['max_rounds']} rounds"
    )
    lines = [
        f"{summary['scenario']}: {summary['nodes']} nodes, seed {summary['seed']}, "
        f"{summary['sim_time_s']:.2f} s simulated",
        f"  {verdict}",
        f"  writes: {summary['writes']} requests, {summary['items_written']} items, "
        f"{summary['acked_writes']} acked, {summary['lost_acked_writes']} acked writes lost",
        f"  conflicts: {summary['conflicts']} items in conflict "
        f"({summary['conflict_events']} conflict events)",
        f"  traffic: {summary['bytes_per_node'] / 1024:.1f} KiB and "
        f"{summary['messages_per_node']:.0f} messages sent per node",
    ]
    if summary["crashes"]:
        lines.append(f"  churn: {summary['crashes']} crashes, {summary['restarts']} restarts")
    if "idle_bytes_per_s_per_node" in summary:
        lines.append(
            f"  idle: {summary['idle_bytes_per_s_per_node']:.0f} B/s per node "
            f"({summary['idle_messages_per_s_per_node']:.2f} messages/s)"
        )
    hub = summary.get("hub")
    if hub is not None:
        lines.append(
            f"  hub: {hub['id']} (term {hub['term']}), {100 * hub['relayed_share']:.0f}% of "
            f"update batches relayed, {100 * hub['p2p_share']:.0f}% peer to peer, "
            f"{hub['links_per_node']:.1f} links per node"
        )
    if "failover_s" in summary:
        failover = summary["failover_s"]
        took = "never" if failover is None else f"{failover:.2f} s"
        lines.append(
            f"  failover: {summary['killed_hub']} killed, {summary['new_hub']} relaying "
            f"after {took}"
        )
    phases = ", ".join(
        f"{p['name']} {p['start_s']:.2f}-{p['end_s']:.2f} s" for p in summary["phases"]
    )
    lines.append(f"  phases: {phases}")
    return "\n".join(lines)


def check_plot_available() -> None:
    """Raise PlotUnavailableError if matplotlib cannot be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailableError(PLOT_HINT) from None


def plot(summary: dict[str, Any], series: list[Sample], path: Path) -> None:
    """Draw delivery and complete nodes over simulated time, with phase boundaries, as PNG."""
    check_plot_available()
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    t = [s.t_s for s in series]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    ax.plot(t, [s.delivered_fraction for s in series], label="(node, item) pairs delivered")
    ax.plot(t, [s.complete_nodes_fraction for s in series], label="nodes holding every item")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("fraction")
    for phase in summary["phases"][1:]:
        ax.axvline(phase["start_s"], color="grey", linestyle=":", linewidth=1)
        ax.text(phase["start_s"], 1.01, f" {phase['name']}", fontsize=8, color="grey")
    right = ax.twinx()
    right.plot(
        t,
        [s.bytes_per_node / 1024 for s in series],
        color="tab:red",
        alpha=0.5,
        label="KiB sent per node",
    )
    right.set_ylabel("KiB sent per node")
    handles = ax.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right", fontsize=8)
    title = f"{summary['scenario']}: {summary['nodes']} nodes, seed {summary['seed']}"
    if summary["converged"]:
        title += f" - converged in {summary['rounds_to_converge']} rounds"
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
