"""Conflict resolvers: deterministic, pure functions from concurrent versions to one value.

A resolver receives the live concurrent versions of one item, at least one, sorted by
last-writer-wins order (oldest first), and returns the value reads see. Every node calls
it with the same versions in the same order, so every node returns the same value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from crdt.item import MemoryItem

Resolver = Callable[[Sequence[MemoryItem]], MemoryItem]


def lww(versions: Sequence[MemoryItem]) -> MemoryItem:
    """Return the version with the greatest (HLC, author)."""
    return max(versions, key=lambda v: v.order_key)


def max_confidence(versions: Sequence[MemoryItem]) -> MemoryItem:
    """Return the version with the highest confidence; ties go to last-writer-wins."""
    return max(versions, key=lambda v: (v.confidence, v.order_key))


def union(versions: Sequence[MemoryItem]) -> MemoryItem:
    """Return the last writer's version with tags and citations unioned over all versions."""
    winner = lww(versions)
    return dataclasses.replace(
        winner,
        tags=_union(v.tags for v in versions),
        citations=_union(v.citations for v in versions),
    )


def merge(versions: Sequence[MemoryItem]) -> MemoryItem:
    """Return the last writer's version with metadata merged key by key (newest key wins)."""
    merged: dict[str, Any] = {}
    for version in sorted(versions, key=lambda v: v.order_key):
        merged.update(version.metadata)
    return dataclasses.replace(lww(versions), metadata=merged)


def confidence_vote(versions: Sequence[MemoryItem]) -> MemoryItem:
    """Highest confidence wins; citations union; embedding is the confidence-weighted mean."""
    winner = max_confidence(versions)
    embedding = winner.embedding
    if embedding is not None:
        same_dim = [
            v for v in versions if v.embedding is not None and v.embedding.shape == embedding.shape
        ]
        weights = np.array([v.confidence for v in same_dim], dtype=np.float64)
        if len(same_dim) > 1 and weights.sum() > 0:
            stacked = np.stack([v.embedding for v in same_dim if v.embedding is not None])
            mean = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
            embedding = mean.astype(np.float32)
            embedding.flags.writeable = False
    return dataclasses.replace(
        winner, citations=_union(v.citations for v in versions), embedding=embedding
    )


def _union(groups: Any) -> tuple[str, ...]:
    return tuple(sorted({value for group in groups for value in group}))


BUILTIN_RESOLVERS: Mapping[str, Resolver] = {
    "lww": lww,
    "max": max_confidence,
    "union": union,
    "merge": merge,
    "confidence_vote": confidence_vote,
}


def resolver_named(name: str) -> Resolver:
    """Return a built-in resolver by name; raise ValueError for unknown names."""
    try:
        return BUILTIN_RESOLVERS[name]
    except KeyError:
        raise ValueError(
            f"unknown resolver {name!r}; built-ins: {', '.join(BUILTIN_RESOLVERS)}"
        ) from None
