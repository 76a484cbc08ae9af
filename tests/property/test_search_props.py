"""Property test: the vector index agrees with brute force under arbitrary upserts and removals."""

from __future__ import annotations

import itertools
from collections.abc import Collection

import numpy as np
import numpy.typing as npt
from hypothesis import given
from hypothesis import strategies as st

from crdt.search import SearchHit, VectorIndex

Key = tuple[str, str]
EPS = 1e-5
TIERS = ["L1", "L2", "L3"]
DIMS = [2, 3, 5]


def unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Return v scaled to unit length in float64 (zeros stay zeros), immune to under/overflow."""
    scale = np.abs(v).max()
    if scale == 0:
        return np.zeros_like(v)
    v = v / scale
    return v / np.linalg.norm(v)


def brute_force(
    stored: dict[Key, npt.NDArray[np.float64]],
    query: npt.NDArray[np.float64],
    tiers: Collection[str] | None,
) -> list[tuple[float, Key]]:
    """Return (score, key) for every same-dimension candidate, best first, ties by key."""
    q = unit(query)
    out = []
    for key, v in stored.items():
        if v.shape == q.shape and (tiers is None or key[0] in tiers):
            out.append((float(unit(v) @ q), key))
    return sorted(out, key=lambda sk: (-sk[0], sk[1]))


def assert_matches(hits: list[SearchHit], expected: list[tuple[float, Key]], k: int) -> None:
    """Assert hits are the brute-force top k, tolerating float32 rounding only among near-ties."""
    assert len(hits) == min(k, len(expected))
    keys = [(hit.tier, hit.item_id) for hit in hits]
    assert len(set(keys)) == len(keys)
    exact = {key: score for score, key in expected}
    for hit, (score, _) in zip(hits, expected, strict=False):
        assert abs(hit.score - score) <= EPS
        assert abs(hit.score - exact[(hit.tier, hit.item_id)]) <= EPS
    for a, b in itertools.pairwise(hits):
        assert (-a.score, a.tier, a.item_id) < (-b.score, b.tier, b.item_id)
    if hits:
        cutoff = expected[len(hits) - 1][0]
        assert {key for score, key in expected if score > cutoff + EPS} <= set(keys)


components = st.integers(min_value=-3, max_value=3).map(float) | st.floats(
    min_value=-10, max_value=10, allow_nan=False, allow_infinity=False
)
vectors = st.sampled_from(DIMS).flatmap(lambda d: st.lists(components, min_size=d, max_size=d))
keys = st.tuples(st.sampled_from(TIERS), st.sampled_from([f"id{i}" for i in range(12)]))
ops = st.lists(
    st.tuples(st.just("upsert"), keys, vectors) | st.tuples(st.just("remove"), keys, st.none()),
    max_size=60,
)
queries = vectors.filter(lambda v: any(v))
tier_filters = st.none() | st.sets(st.sampled_from([*TIERS, "other"]))


@given(
    ops=ops,
    queries=st.lists(st.tuples(queries, st.integers(1, 40), tier_filters), min_size=1, max_size=5),
)
def test_index_matches_brute_force(
    ops: list[tuple[str, Key, list[float] | None]],
    queries: list[tuple[list[float], int, set[str] | None]],
) -> None:
    idx = VectorIndex()
    stored: dict[Key, npt.NDArray[np.float64]] = {}
    for _, key, vector in ops:
        if vector is None:
            idx.remove(*key)
            stored.pop(key, None)
        else:
            idx.upsert(*key, np.array(vector))
            stored[key] = np.array(vector)
        assert len(idx) == len(stored)
    assert idx.dimensions() == tuple(sorted({v.shape[0] for v in stored.values()}))
    for query, k, tiers in queries:
        q = np.array(query)
        assert_matches(idx.search(q, k, tiers), brute_force(stored, q, tiers), k)
