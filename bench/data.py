"""Deterministic benchmark workloads: item contents, embeddings and put requests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from crdt.memory import NewItem

FloatMatrix = npt.NDArray[np.float32]


def content_for(i: int) -> str:
    """Return the content of benchmark item number `i` (about 75 characters)."""
    return f"benchmark memory item {i:08d}: the quick brown fox jumps over the lazy dog"


def item_id(prefix: str, i: int) -> str:
    """Return the id of benchmark item number `i` under `prefix`."""
    return f"{prefix}-{i:08d}"


def embeddings(seed: int, count: int, dim: int) -> FloatMatrix:
    """Return `count` standard-normal float32 vectors of `dim` components."""
    return np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)


def requests_for(
    prefix: str,
    start: int,
    count: int,
    *,
    tier: str = "L1",
    vectors: FloatMatrix | None = None,
) -> list[NewItem]:
    """Return put requests for items start..start+count-1 (row j of `vectors` for item j)."""
    return [
        NewItem(
            tier=tier,
            content=content_for(start + j),
            id=item_id(prefix, start + j),
            embedding=None if vectors is None else vectors[j],
        )
        for j in range(count)
    ]


def chunks(total: int, size: int) -> Sequence[tuple[int, int]]:
    """Return (start, count) pairs covering 0..total-1 in pieces of at most `size`."""
    return [(start, min(size, total - start)) for start in range(0, total, size)]
