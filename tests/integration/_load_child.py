"""Load COUNT generated L3 items with 384-d embeddings straight into a data dir's store.

Usage: python _load_child.py DATA_DIR COUNT (the integration tests preload a node with it).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

from crdt.memory import NewItem
from mesh.api import Mesh
from mesh.profiles import Profile, node_config


async def load(data_dir: Path, count: int) -> None:
    """Put `count` items in batches of 5,000 with the standard profile's codecs."""
    rng = np.random.default_rng(7)
    config = node_config(Profile.STANDARD).memory
    async with Mesh.open(data_dir, config=config) as mesh:
        for start in range(0, count, 5_000):
            n = min(5_000, count - start)
            rows = rng.standard_normal((n, 384)).astype(np.float32)
            await mesh.put_many(
                [
                    NewItem("L3", f"fact {start + j}", f"big-{start + j}", embedding=rows[j])
                    for j in range(n)
                ]
            )


if __name__ == "__main__":
    asyncio.run(load(Path(sys.argv[1]), int(sys.argv[2])))
