"""The receiver's apply of an initial sync, in process: CPU per item of `apply_remote`.

A sender `TieredMemory` (standard profile: L3 stores int8 embeddings) holds N new L3 items
with 384-d float32 embeddings. Its whole L3 diff is cut into 1 MiB slices exactly as
`Node._answer_step1` cuts them (`plan_slices` with `step2_batch_bytes`), and an empty
receiver applies them in order with the cyclic collector paused around each call, as
`NodeRuntime.submit` does. The baseline, measured in the same run, is pycrdt's bare
`Doc.apply_update` of the same slices into an empty document, with no observer:
the floor of any apply.
Run it with ``python -m bench apply``; ``--quick`` is a 5,000-item smoke run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

from pycrdt import Doc, Map

from bench.common import Progress, figure, profile_call
from bench.data import chunks, embeddings, requests_for
from crdt.memory import TieredMemory
from crdt.yslice import plan_slices
from mesh.config import NodeConfig
from mesh.gc_pause import cyclic_gc_paused
from mesh.profiles import Profile, node_config

DESCRIPTION = "CPU per item of TieredMemory.apply_remote for an initial sync's 1 MiB slices"

TIER = "L3"
SENDER = "5f3a9c0e7b1d2468"  # a node id: 16 hex characters
RECEIVER = "0c1d2e3f40516273"
LOAD_BATCH = 1_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the apply family's options."""
    parser.add_argument("--items", type=int, default=None, help="items synced (default 50000)")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension (384)")
    parser.add_argument("--rounds", type=int, default=3, help="receivers timed (best is kept)")
    parser.add_argument("--quick", action="store_true", help="5,000 items, one round")
    parser.add_argument(
        "--profile", action="store_true", help="also run one receiver under cProfile"
    )


def _config() -> NodeConfig:
    return node_config(Profile.STANDARD)


def _sender(items: int, dim: int, config: NodeConfig) -> TieredMemory:
    """Return a memory holding `items` new L3 items, written in put_many batches."""
    memory = TieredMemory(
        node_id=SENDER, client_ids={"L1": 11, "L2": 12, "L3": 13}, config=config.memory
    )
    for first, count in chunks(items, LOAD_BATCH):
        rows = embeddings(1_000 + first, count, dim)
        memory.put_many(requests_for("sync", first, count, tier=TIER, vectors=rows), 1_000)
    return memory


def _receiver(config: NodeConfig) -> TieredMemory:
    return TieredMemory(
        node_id=RECEIVER, client_ids={"L1": 21, "L2": 22, "L3": 23}, config=config.memory
    )


def _timed_apply(slices: list[bytes], config: NodeConfig) -> dict[str, float]:
    """Apply every slice to a fresh receiver; return CPU seconds of the applies and the loop."""
    receiver = _receiver(config)
    gc.collect()
    apply_s = 0.0
    cpu = time.process_time
    loop_start = cpu()
    for body in slices:
        with cyclic_gc_paused():
            began = cpu()
            receiver.apply_remote(TIER, body, 2_000)
            apply_s += cpu() - began
    loop_s = cpu() - loop_start  # the applies plus the collections they trigger after
    return {"apply_s": apply_s, "loop_s": loop_s, "items": float(len(receiver.tier_doc(TIER)))}


def _timed_bare(slices: list[bytes]) -> float:
    """Apply every slice to an empty pycrdt document (nothing observed); return CPU s."""
    doc: Doc[Any] = Doc()
    doc.get("items", type=Map)
    gc.collect()
    total = 0.0
    cpu = time.process_time
    for body in slices:
        with cyclic_gc_paused():
            began = cpu()
            doc.apply_update(body)
            total += cpu() - began
    return total


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Build the sender, time the applies and the baseline; return the JSON body."""
    items = int(args.items) if args.items is not None else (5_000 if args.quick else 50_000)
    rounds = 1 if args.quick else max(1, int(args.rounds))
    config = _config()
    progress(f"sender: {items:,} x {args.dim}-d items in {TIER}")
    sender = _sender(items, int(args.dim), config)
    diff = sender.tier_doc(TIER).encode_diff()
    plan = plan_slices(diff, config.step2_batch_bytes)
    slices = [plan.slice(i) for i in range(len(plan))]
    progress(f"{len(slices)} slices of {len(diff) / len(slices) / 1e6:.2f} MB on average")
    del sender
    ours: list[dict[str, float]] = []
    bare: list[float] = []
    for index in range(rounds):
        ours.append(_timed_apply(slices, config))
        bare.append(_timed_bare(slices))
        progress(
            f"round {index + 1}: apply {ours[-1]['apply_s'] / items * 1e6:.2f} us/item, "
            f"bare pycrdt {bare[-1] / items * 1e6:.2f} us/item"
        )
        if ours[-1]["items"] != items:
            raise SystemExit(f"receiver holds {ours[-1]['items']} items, expected {items}")
    best = min(ours, key=lambda r: r["apply_s"])
    apply_us = best["apply_s"] / items * 1e6
    bare_us = min(bare) / items * 1e6
    figures = {
        "apply_cpu_per_item": figure(
            value=apply_us,
            unit="us CPU per item",
            baseline_name="pycrdt Doc.apply_update of the same slices, nothing observed",
            baseline_value=bare_us,
            ratio_meaning="ours / bare pycrdt apply (lower is better)",
            higher_is_better=False,
            raw={
                "rounds_us": [r["apply_s"] / items * 1e6 for r in ours],
                "median_us": statistics.median(r["apply_s"] for r in ours) / items * 1e6,
                "bare_rounds_us": [b / items * 1e6 for b in bare],
            },
        ),
        "loop_cpu_per_item": figure(
            value=best["loop_s"] / items * 1e6,
            unit="us CPU per item",
            baseline_name="pycrdt Doc.apply_update of the same slices, nothing observed",
            baseline_value=bare_us,
            ratio_meaning="apply plus the collections it triggers / bare pycrdt apply",
            higher_is_better=False,
            raw={"rounds_us": [r["loop_s"] / items * 1e6 for r in ours]},
        ),
    }
    result: dict[str, Any] = {
        "params": {
            "items": items,
            "dim": int(args.dim),
            "rounds": rounds,
            "tier": TIER,
            "codec": config.memory.policy(TIER).codec.value,
            "slices": len(slices),
            "diff_bytes": len(diff),
            "quick": bool(args.quick),
        },
        "figures": figures,
        "notes": [
            "CPU time (process_time) of apply_remote only, collector paused per slice",
            "loop_cpu also counts the collections the applies trigger once it resumes",
        ],
    }
    if args.profile:
        progress("profile: one receiver under cProfile")
        result["profiles"] = {"apply_remote": _profiled(slices, config)}
    return result


def _profiled(slices: list[bytes], config: NodeConfig) -> dict[str, Any]:
    """Apply every slice to a fresh receiver under cProfile; return the top functions."""
    receiver = _receiver(config)

    def all_slices() -> None:
        for body in slices:
            with cyclic_gc_paused():
                receiver.apply_remote(TIER, body, 2_000)

    return profile_call(all_slices, top=25)
