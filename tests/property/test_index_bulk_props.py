"""Property test: `VectorIndex.upsert_many` leaves the index exactly as `upsert` row by row.

Same rows (reuse of freed rows included), same normalised bytes, same tiers, keys and search
results, for float32 and float64 input, zero rows, one tier or a tier per row, replacements
and repeated keys.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.search import VectorIndex

KEYS = st.tuples(st.sampled_from(["L1", "L2", "L3"]), st.sampled_from([f"i{n}" for n in range(40)]))


@st.composite
def batches(draw: st.DrawFn) -> tuple[Any, ...]:
    dim = draw(st.sampled_from([1, 3, 8]))
    count = draw(st.integers(1, 30) | st.integers(60, 150))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-30, 1.0, 1e30]))
    matrix = (np.random.default_rng(seed).standard_normal((count, dim)) * scale).astype(dtype)
    for row in draw(st.lists(st.integers(0, count - 1), max_size=3)):
        matrix[row] = draw(st.sampled_from([0.0, -0.0]))
    one_tier = draw(st.booleans())
    tier = draw(st.sampled_from(["L1", "L2", "L3"]))
    prefix = draw(st.sampled_from(["i", "j", "k"]))
    ids = [f"{prefix}{n}" for n in draw(st.permutations(range(200)))[:count]]
    if draw(st.integers(0, 9)) == 0 and count > 1:
        ids[-1] = ids[0]  # a repeated key
    tiers: Any = tier if one_tier else [draw(st.sampled_from(["L1", "L2", "L3"])) for _ in ids]
    return tiers, ids, matrix, draw(st.booleans())


OPS = st.lists(
    st.tuples(st.just("many"), batches())
    | st.tuples(st.just("remove"), st.lists(KEYS, max_size=15))
    | st.tuples(st.just("one"), st.tuples(KEYS, st.sampled_from([1, 3, 8]), st.integers(0, 2**16))),
    max_size=8,
)


def state(live: VectorIndex) -> object:
    index = copy.deepcopy(live)  # settled here only: `live` keeps its pending rows
    for block in index._blocks.values():
        block.settle()  # what a search does first
    blocks = {
        dim: (
            block.vectors[: block.used].tobytes(),
            block.live[: block.used].tolist(),
            block.tiers[: block.used][block.live[: block.used]].tolist(),
            block.keys[: block.used],
            list(block.free),
            block.count,
        )
        for dim, block in index._blocks.items()
    }
    return blocks, dict(index._rows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_upsert_many_equals_upserts_row_by_row(ops: list[tuple[str, Any]]) -> None:
    bulk, single = VectorIndex(), VectorIndex()
    for kind, arg in ops:
        if kind == "many":
            tiers, ids, matrix, defer = arg
            bulk.upsert_many(tiers, ids, matrix, defer=defer)
            per_row = [tiers] * len(ids) if isinstance(tiers, str) else tiers
            for tier, item_id, row in zip(per_row, ids, matrix, strict=True):
                single.upsert(tier, item_id, row)
        elif kind == "remove":
            for key in arg:
                bulk.remove(*key)
                single.remove(*key)
        else:
            key, dim, seed = arg
            vector = np.random.default_rng(seed).standard_normal(dim)
            bulk.upsert(*key, vector)
            single.upsert(*key, vector)
        assert state(bulk) == state(single)
    for dim in (1, 3, 8):
        query = np.random.default_rng(dim).standard_normal(dim)
        assert bulk.search(query, k=50) == single.search(query, k=50)


# normalise(normalise(W)) differs from normalise(W) in the last bit: a pending row that took
# W's normalised value and was then normalised again would show.
W = np.array([-0.1857739586715857, -1.416489366414042, -0.8274022267661552])


def test_a_deferred_row_replaced_or_freed_before_a_search_is_not_normalised_twice() -> None:
    raw = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    for replace in (True, False):
        deferred, eager = VectorIndex(), VectorIndex()
        deferred.upsert_many("L3", ["a", "b"], raw, defer=True)
        eager.upsert_many("L3", ["a", "b"], raw)
        for index in (deferred, eager):
            if replace:
                index.upsert("L3", "a", W)
            else:
                index.remove("L3", "a")
                index.upsert("L3", "c", W)  # takes the freed row
        assert state(deferred) == state(eager)
        assert deferred.search(W, k=3) == eager.search(W, k=3)
        assert deferred._blocks[3].vectors[0].tobytes() == eager._blocks[3].vectors[0].tobytes()
