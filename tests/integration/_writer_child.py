"""Child process of the durability test: writes items forever, printing each acknowledged id.

Usage: python _writer_child.py DATA_DIR START SEED

Item ``w{i}`` (i = START, START+1, ...) is written in id order, one write at a time, as a
single `put` or as part of a `put_many` batch. An id is printed (and stdout flushed) only
after the call that wrote it returned, so every printed id was acknowledged as durable.
The parent SIGKILLs this process at a random moment.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import numpy as np

from crdt.memory import NewItem
from mesh.api import Mesh

MAX_BATCH = 6
TIER = "L1"


def content_for(i: int) -> str:
    """Return the content of item ``w{i}`` (deterministic, varying length)."""
    return f"item w{i}: " + "abcdefghij" * (i % 37)


def metadata_for(i: int) -> dict[str, Any]:
    """Return the metadata of item ``w{i}``."""
    return {"i": i, "parity": i % 2}


def embedding_for(i: int) -> np.ndarray | None:
    """Return the embedding of item ``w{i}``: every third item has one."""
    if i % 3:
        return None
    return np.random.default_rng(i).standard_normal(16).astype(np.float32)


def request_for(i: int) -> NewItem:
    """Return the put request of item ``w{i}``."""
    return NewItem(
        tier=TIER,
        content=content_for(i),
        id=f"w{i}",
        embedding=embedding_for(i),
        metadata=metadata_for(i),
    )


def _ack(ids: list[str]) -> None:
    sys.stdout.write("".join(f"{item_id}\n" for item_id in ids))
    sys.stdout.flush()


async def write_forever(data_dir: str, start: int, seed: int) -> None:
    """Write items w{start}, w{start+1}, ... until killed."""
    rng = random.Random(seed)
    i = start
    async with Mesh.open(data_dir) as mesh:
        while True:
            if rng.random() < 0.25:
                size = rng.randint(2, MAX_BATCH)
                requests = [request_for(j) for j in range(i, i + size)]
                await mesh.put_many(requests)
                _ack([r.id for r in requests])
                i += size
            else:
                req = request_for(i)
                await mesh.put(
                    req.tier, req.content, id=req.id, embedding=req.embedding, metadata=req.metadata
                )
                _ack([req.id])
                i += 1


if __name__ == "__main__":
    asyncio.run(write_forever(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
