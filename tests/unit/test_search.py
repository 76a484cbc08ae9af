"""Unit tests for the incremental cosine vector index, checked against brute force."""

from __future__ import annotations

import itertools
from collections.abc import Collection

import numpy as np
import numpy.typing as npt
import pytest

from crdt.memory import NewItem, TieredMemory
from crdt.search import SearchHit, VectorIndex

Key = tuple[str, str]
EPS = 1e-5


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
    tiers: Collection[str] | None = None,
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
        assert hit.score == pytest.approx(score, abs=EPS)
        assert hit.score == pytest.approx(exact[(hit.tier, hit.item_id)], abs=EPS)
    for a, b in itertools.pairwise(hits):
        assert (-a.score, a.tier, a.item_id) < (-b.score, b.tier, b.item_id)
    if hits:
        cutoff = expected[len(hits) - 1][0]
        must = {key for score, key in expected if score > cutoff + EPS}
        assert must <= set(keys)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float64]:
    """Return n random vectors of the given dimension."""
    return rng.standard_normal((n, dim))


def test_exact_top_k_on_random_data() -> None:
    rng = np.random.default_rng(1)
    data = unit_rows(rng, 500, 32)
    idx = VectorIndex()
    stored: dict[Key, npt.NDArray[np.float64]] = {}
    for i, v in enumerate(data):
        key = ("L2", f"id{i:03d}")
        idx.upsert(*key, v)
        stored[key] = v
    for q in unit_rows(rng, 20, 32):
        hits = idx.search(q, k=10)
        expected = brute_force(stored, q)
        assert [(h.tier, h.item_id) for h in hits] == [key for _, key in expected[:10]]
        assert_matches(hits, expected, 10)
    assert len(idx) == 500


def test_results_stay_exact_after_removals_and_reupserts() -> None:
    rng = np.random.default_rng(2)
    idx = VectorIndex()
    stored: dict[Key, npt.NDArray[np.float64]] = {}
    for i, v in enumerate(unit_rows(rng, 300, 16)):
        key = ("L1" if i % 3 else "L3", f"id{i}")
        idx.upsert(*key, v)
        stored[key] = v
    for key in list(stored)[::2]:
        idx.remove(*key)
        del stored[key]
    for key in list(stored)[::5]:
        v = rng.standard_normal(16)
        idx.upsert(*key, v)
        stored[key] = v
    for i, v in enumerate(unit_rows(rng, 100, 16)):
        key = ("L2", f"new{i}")
        idx.upsert(*key, v)
        stored[key] = v
    assert len(idx) == len(stored)
    for q in unit_rows(rng, 20, 16):
        for k in (1, 7, 50):
            assert_matches(idx.search(q, k), brute_force(stored, q), k)
    for key in stored:
        assert key in idx
    assert ("L1", "id0") not in idx


def test_removed_rows_are_reused() -> None:
    rng = np.random.default_rng(3)
    idx = VectorIndex()
    for i in range(100):
        idx.upsert("t", f"a{i}", rng.standard_normal(8))
    block = idx._blocks[8]
    capacity, used = block.vectors.shape[0], block.used
    for i in range(60):
        idx.remove("t", f"a{i}")
    for i in range(60):
        idx.upsert("t", f"b{i}", rng.standard_normal(8))
    assert (block.vectors.shape[0], block.used) == (capacity, used)
    assert len(idx) == 100


def test_tier_filtering() -> None:
    rng = np.random.default_rng(4)
    idx = VectorIndex()
    stored: dict[Key, npt.NDArray[np.float64]] = {}
    for i, v in enumerate(unit_rows(rng, 200, 12)):
        key = (["L1", "L2", "L3"][i % 3], f"id{i}")
        idx.upsert(*key, v)
        stored[key] = v
    q = rng.standard_normal(12)
    for tiers in (["L1"], {"L2", "L3"}, ("L3", "unknown"), ["L1", "L2", "L3"]):
        hits = idx.search(q, 15, tiers)
        assert {h.tier for h in hits} <= set(tiers)
        assert_matches(hits, brute_force(stored, q, tiers), 15)
    assert idx.search(q, 5, []) == []
    assert idx.search(q, 5, ["unknown"]) == []
    with pytest.raises(TypeError, match="not a single str"):
        idx.search(q, 5, "L1")


def test_same_key_name_in_two_tiers_is_two_entries() -> None:
    idx = VectorIndex()
    idx.upsert("L1", "x", np.array([1.0, 0.0]))
    idx.upsert("L2", "x", np.array([0.0, 1.0]))
    assert len(idx) == 2
    [hit] = idx.search(np.array([1.0, 0.0]), 1)
    assert (hit.tier, hit.item_id) == ("L1", "x")
    assert hit.score == pytest.approx(1.0)
    idx.remove("L1", "x")
    assert [(h.tier, h.item_id) for h in idx.search(np.array([1.0, 0.0]))] == [("L2", "x")]


def test_multiple_dimensions_and_dimension_change() -> None:
    rng = np.random.default_rng(5)
    idx = VectorIndex()
    stored: dict[Key, npt.NDArray[np.float64]] = {}
    for i in range(60):
        dim = (4, 8, 16)[i % 3]
        key = ("t", f"id{i}")
        stored[key] = rng.standard_normal(dim)
        idx.upsert(*key, stored[key])
    assert idx.dimensions() == (4, 8, 16)
    for dim in (4, 8, 16):
        q = rng.standard_normal(dim)
        assert_matches(idx.search(q, 100), brute_force(stored, q), 100)
    assert idx.search(rng.standard_normal(5), 3) == []

    # Moving a key to another dimension removes it from the old block.
    stored[("t", "id0")] = rng.standard_normal(8)
    idx.upsert("t", "id0", stored[("t", "id0")])
    assert len(idx) == 60
    for dim in (4, 8):
        q = rng.standard_normal(dim)
        hits = idx.search(q, 100)
        assert_matches(hits, brute_force(stored, q), 100)
    assert ("t", "id0") in {(h.tier, h.item_id) for h in idx.search(stored[("t", "id0")], 1)}

    for i in range(1, 60, 3):
        idx.remove("t", f"id{i}")
    assert idx.dimensions() == (4, 8, 16)  # id0 now lives in the 8-dim block
    idx.remove("t", "id0")
    assert idx.dimensions() == (4, 16)


def test_scores_are_cosine_and_input_is_copied() -> None:
    idx = VectorIndex()
    v = np.array([3.0, 4.0])
    idx.upsert("t", "a", v)
    v[:] = [-1.0, 0.0]
    [hit] = idx.search(np.array([10.0, 0.0]), 5)
    assert hit.score == pytest.approx(0.6, abs=1e-6)
    assert isinstance(hit.score, float)


def test_extreme_magnitudes_normalise() -> None:
    idx = VectorIndex()
    idx.upsert("t", "big", np.array([1e300, 1e300]))
    idx.upsert("t", "tiny", np.array([-1e-300, 0.0]))
    hits = idx.search(np.array([1e-310, 1e-310]), 2)
    assert [h.item_id for h in hits] == ["big", "tiny"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert hits[1].score == pytest.approx(-np.sqrt(0.5), abs=1e-6)


def test_zero_vector_is_stored_and_scores_zero() -> None:
    idx = VectorIndex()
    idx.upsert("t", "zero", np.zeros(3))
    idx.upsert("t", "neg", np.array([-1.0, 0.0, 0.0]))
    hits = idx.search(np.array([1.0, 0.0, 0.0]), 5)
    assert [(h.item_id, h.score) for h in hits] == [("zero", 0.0), ("neg", -1.0)]
    assert "zero" in {h.item_id for h in idx.search(np.array([0.0, 0.0, -1.0]), 5)}


def test_ties_are_broken_by_key_even_at_the_cut() -> None:
    idx = VectorIndex()
    v = np.array([1.0, 2.0, 3.0])
    for tier, item_id in [("b", "1"), ("a", "2"), ("a", "1"), ("c", "0"), ("b", "0")]:
        idx.upsert(tier, item_id, v * 7)
    idx.upsert("z", "best", v + np.array([0.0, 0.0, 0.1]))
    q = np.array([1.0, 2.0, 3.1])
    hits = idx.search(q, 3)
    assert [(h.tier, h.item_id) for h in hits] == [("z", "best"), ("a", "1"), ("a", "2")]
    assert hits[1].score == hits[2].score
    everything = idx.search(q, 100)
    assert [(h.tier, h.item_id) for h in everything[1:]] == sorted(
        [("b", "1"), ("a", "2"), ("a", "1"), ("c", "0"), ("b", "0")]
    )


def test_k_larger_than_candidates_returns_all() -> None:
    idx = VectorIndex()
    for i in range(5):
        idx.upsert("t", str(i), np.array([1.0, float(i)]))
    assert len(idx.search(np.array([1.0, 1.0]), 1000)) == 5
    assert VectorIndex().search(np.array([1.0]), 3) == []


def test_remove_absent_is_silent() -> None:
    idx = VectorIndex()
    idx.remove("t", "nothing")
    idx.upsert("t", "x", np.ones(4))
    idx.remove("t", "x")
    idx.remove("t", "x")
    assert len(idx) == 0
    assert idx.dimensions() == ()
    assert idx.search(np.ones(4)) == []


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [
        (np.zeros(3), 5, "zero norm"),
        (np.array([1.0, np.nan, 0.0]), 5, "NaN"),
        (np.array([1.0, np.inf, 0.0]), 5, "infinite"),
        (np.ones((2, 3)), 5, "1-D"),
        (np.array([]), 5, "non-empty"),
        (np.ones(3), 0, "k must be at least 1"),
    ],
)
def test_search_errors(query: npt.NDArray[np.float64], k: int, message: str) -> None:
    idx = VectorIndex()
    idx.upsert("t", "x", np.ones(3))
    with pytest.raises(ValueError, match=message):
        idx.search(query, k)


def test_upsert_rejects_invalid_vectors_without_side_effects() -> None:
    idx = VectorIndex()
    idx.upsert("t", "x", np.ones(3))
    for bad in (np.array([np.nan, 1.0, 1.0]), np.ones((3, 1)), np.array([])):
        with pytest.raises(ValueError):
            idx.upsert("t", "x", bad)
    assert idx.search(np.ones(3), 1)[0].score == pytest.approx(1.0, abs=1e-6)
    assert len(idx) == 1


def test_replicas_rank_equal_vectors_the_same_whatever_their_rows() -> None:
    """Found in review: BLAS's float32 scores of equal vectors could differ by an ulp with
    their rows' positions, which differ between replicas (write order against id order on
    a sync), so two replicas with equal content returned different top-k lists."""
    tiers = ("L1", "L2", "L3")

    def replica(n: int) -> TieredMemory:
        return TieredMemory(
            node_id=f"n{n}", client_ids={t: 10 * n + i for i, t in enumerate(tiers)}
        )

    rng = np.random.default_rng(1)
    for _ in range(100):
        dup, other, query = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
        a, b = replica(1), replica(2)
        for item_id, vector in (("z", dup), ("y", other), ("x", dup)):  # rows: z, y, x
            a.put(NewItem("L1", item_id, item_id, embedding=vector), 1_000)
        b.apply_remote("L1", a.tier_doc("L1").encode_diff(), 1_000)  # rows: x, y, z
        hits_a = [(h.item_id, h.score) for h in a.search(query, k=2)]
        assert hits_a == [(h.item_id, h.score) for h in b.search(query, k=2)]


def test_replicas_agree_on_near_zero_scores_of_high_dimensional_vectors() -> None:
    """Found in review: a widening of a few ulps of the k-th score was too small near zero,
    where rounding differences of 384-d dot products are dozens of ulps."""
    rng = np.random.default_rng(3)
    dim = 384
    for _ in range(100):
        query = rng.standard_normal(dim).astype(np.float32)
        unit = query / np.linalg.norm(query)
        near_zero = rng.standard_normal(dim).astype(np.float32)
        near_zero = (near_zero - (near_zero @ unit) * unit * 0.99999).astype(np.float32)
        worse = (-unit + 0.01 * rng.standard_normal(dim)).astype(np.float32)
        a, b = VectorIndex(), VectorIndex()
        for item_id, vector in (("z", near_zero), ("y", worse), ("x", near_zero)):
            a.upsert("L1", item_id, vector)
        for item_id, vector in (("x", near_zero), ("y", worse), ("z", near_zero)):
            b.upsert("L1", item_id, vector)
        assert [h.item_id for h in a.search(query, 1)] == [h.item_id for h in b.search(query, 1)]
