"""Measure the RSS growth of one node loading N items, in a fresh process.

Run by `bench.local` as ``python -m bench.rss_probe --items N --dim D --tier L1``; prints ONE
JSON line on stdout. RSS is read from /proc/self/status (VmRSS) after opening an empty node
and putting one warm-up item, and again after loading. Embeddings are generated batch by
batch and dropped, so the growth is what the node keeps, not the caller's input.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import malloc_trim, read_status_kib
from bench.data import chunks, requests_for
from crdt.config import MemoryConfig
from mesh.api import Mesh


def _breakdown(mesh: Mesh, tier: str) -> dict[str, Any]:
    """Best-effort sizes of the big Python-side structures (private attributes may move)."""
    doc = mesh.memory.tier_doc(tier)
    out: dict[str, Any] = {
        "record_chars": sum(
            len(record) for item_id in doc.item_ids() for record in doc.versions(item_id).values()
        ),
        "index_allocated_bytes": None,
    }
    index: Any = getattr(mesh.memory, "_index", None)
    blocks: Any = getattr(index, "_blocks", None)
    if isinstance(blocks, dict):
        out["index_allocated_bytes"] = int(sum(b.vectors.nbytes for b in blocks.values()))
    return out


async def measure(data_dir: Path, items: int, dim: int, tier: str, batch: int) -> dict[str, Any]:
    """Open a node on `data_dir`, load `items` embedded items into `tier`; return RSS data."""
    gc.collect()
    rss_before_open = read_status_kib()
    async with Mesh.open(data_dir) as mesh:
        rng = np.random.default_rng(1234)
        # One warm-up item first, so one-time lazy set-up is not counted as per-item growth.
        warm = rng.standard_normal((1, dim), dtype=np.float32)
        await mesh.put_many(requests_for("warm", 0, 1, tier=tier, vectors=warm))
        gc.collect()
        rss_start = read_status_kib()
        for start, count in chunks(items, batch):
            vectors = rng.standard_normal((count, dim), dtype=np.float32)
            await mesh.put_many(requests_for("rss", start, count, tier=tier, vectors=vectors))
            del vectors
        gc.collect()
        rss_end = read_status_kib()
        trimmed = malloc_trim()
        rss_trimmed = read_status_kib()
        breakdown = _breakdown(mesh, tier)
        live = mesh.memory.count(tier) - 1
    return {
        "tier": tier,
        "codec": MemoryConfig.default().policy(tier).codec.value,
        "items": items,
        "live_items": live,
        "dim": dim,
        "rss_before_open_kib": rss_before_open,
        "rss_start_kib": rss_start,
        "rss_end_kib": rss_end,
        "malloc_trim": trimmed,
        "rss_after_malloc_trim_kib": rss_trimmed,
        "vm_hwm_kib": read_status_kib("VmHWM"),
        "growth_bytes": (rss_end - rss_start) * 1024,
        "growth_after_trim_bytes": (rss_trimmed - rss_start) * 1024,
        **breakdown,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse options, load the items into a fresh node and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.rss_probe")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--tier", required=True)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memmesh-rss-", dir=args.workdir) as tmp:
        result = asyncio.run(measure(Path(tmp), args.items, args.dim, args.tier, args.batch))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
