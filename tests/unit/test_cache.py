"""Unit tests for crdt.cache: LRU behaviour, counters and the embedding reducer."""

from __future__ import annotations

import numpy as np
import pytest

from crdt.cache import CacheStats, EmbeddingReducer, LruCache

# -- LruCache --------------------------------------------------------------------------------


def test_get_put_and_lru_order() -> None:
    c: LruCache[str, int] = LruCache(3)
    c.put("a", 1)
    c.put("b", 2)
    c.put("c", 3)
    assert c.get("a") == 1  # a becomes most recent; b is now the LRU entry
    c.put("d", 4)
    assert "b" not in c
    assert [k for k in ("a", "c", "d") if k in c] == ["a", "c", "d"]
    c.put("e", 5)  # evicts c
    assert "c" not in c and len(c) == 3


def test_put_existing_key_replaces_and_refreshes() -> None:
    c: LruCache[str, int] = LruCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 10)  # refresh, no eviction
    c.put("c", 3)  # evicts b
    assert c.get("a") == 10
    assert "b" not in c
    assert c.stats.evictions == 1


def test_contains_and_peek_do_not_touch_recency_or_counters() -> None:
    c: LruCache[str, int] = LruCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert "a" in c
    assert c.peek("a") == 1
    assert c.peek("zz") is None
    c.put("c", 3)  # a is still LRU
    assert "a" not in c
    assert c.stats == CacheStats(hits=0, misses=0, evictions=1, size=2, capacity=2)


def test_stats_counts() -> None:
    c: LruCache[int, str] = LruCache(2)
    assert c.stats.hit_rate == 0.0
    c.put(1, "x")
    c.get(1)
    c.get(1)
    c.get(2)
    for k in range(3, 7):
        c.put(k, "y")
    s = c.stats
    assert (s.hits, s.misses, s.evictions, s.size, s.capacity) == (2, 1, 3, 2, 2)
    assert s.hit_rate == pytest.approx(2 / 3)


def test_invalidation() -> None:
    c: LruCache[str, int] = LruCache(10)
    for k in ("L1/a", "L1/b", "L2/a", "L3/c"):
        c.put(k, len(k))
    assert c.invalidate("L1/a")
    assert not c.invalidate("L1/a")
    assert c.invalidate_where(lambda k: k.endswith("/a")) == 1
    assert sorted(k for k in ("L1/a", "L1/b", "L2/a", "L3/c") if k in c) == ["L1/b", "L3/c"]
    assert c.stats.evictions == 0
    c.get("L1/b")
    c.clear()
    assert len(c) == 0
    assert c.get("L1/b") is None
    assert c.stats.hits == 1 and c.stats.misses == 1  # counters survive clear()


def test_capacity_one_and_invalid_capacity() -> None:
    c: LruCache[int, int] = LruCache(1)
    c.put(1, 1)
    c.put(2, 2)
    assert 1 not in c and c.get(2) == 2
    with pytest.raises(ValueError):
        LruCache(0)


# -- EmbeddingReducer ------------------------------------------------------------------------


def test_reduce_shape_dtype_and_norm() -> None:
    r = EmbeddingReducer(target_dim=256, seed=1)
    out = r.reduce(np.random.default_rng(0).standard_normal(4096))
    assert out.shape == (256,) and out.dtype == np.float32
    assert float(np.linalg.norm(out)) == pytest.approx(1.0, abs=1e-5)
    assert r.target_dim == 256


def test_small_vectors_are_only_normalised() -> None:
    r = EmbeddingReducer(target_dim=8)
    out = r.reduce([3.0, 4.0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0.6, 0.8], dtype=np.float32))
    src = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    out2 = r.reduce(src)
    out2[0] = 5.0
    assert src[0] == 1.0  # a copy, not a view
    np.testing.assert_array_equal(r.reduce(np.zeros(4)), np.zeros(4, dtype=np.float32))
    np.testing.assert_array_equal(r.reduce(np.zeros(40)), np.zeros(8, dtype=np.float32))


def test_reduce_is_deterministic_across_instances() -> None:
    v = np.random.default_rng(7).standard_normal(1024).astype(np.float32)
    a = EmbeddingReducer(target_dim=64, seed=3).reduce(v)
    b = EmbeddingReducer(target_dim=64, seed=3).reduce(v.copy())
    assert a.tobytes() == b.tobytes()
    c = EmbeddingReducer(target_dim=64, seed=4).reduce(v)
    assert not np.array_equal(a, c)


def test_projection_is_cached_per_dimension_and_read_only() -> None:
    r = EmbeddingReducer(target_dim=16, seed=0)
    p = r.projection(100)
    assert r.projection(100) is p
    assert p.shape == (100, 16)
    assert r.projection(200).shape == (200, 16)
    assert not p.flags.writeable


def test_reduce_batch_matches_reduce() -> None:
    r = EmbeddingReducer(target_dim=32, seed=0)
    mat = np.random.default_rng(1).standard_normal((5, 300))
    mat[2] = 0.0
    batch = r.reduce_batch(mat)
    assert batch.shape == (5, 32) and batch.dtype == np.float32
    for row, out in zip(mat, batch, strict=True):
        np.testing.assert_allclose(out, r.reduce(row), atol=1e-6)


def test_reduce_rejects_bad_input() -> None:
    r = EmbeddingReducer(target_dim=4)
    for bad in (np.zeros((2, 2)), np.zeros(0), np.array([1.0, np.nan]), np.array([np.inf] * 9)):
        with pytest.raises(ValueError):
            r.reduce(bad)
    with pytest.raises(ValueError):
        r.reduce_batch(np.zeros(3))
    with pytest.raises(ValueError):
        EmbeddingReducer(target_dim=0)
    with pytest.raises(ValueError):
        EmbeddingReducer(seed=-1)


def _cosines(m: np.ndarray) -> np.ndarray:
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    sims: np.ndarray = unit @ unit.T
    return sims[np.triu_indices(len(m), k=1)]


def test_cosine_similarity_is_approximately_preserved() -> None:
    rng = np.random.default_rng(42)
    # mix of unrelated vectors and near-duplicates so similarities span a wide range
    base = rng.standard_normal((20, 1024))
    noisy = base + rng.standard_normal((20, 1024)) * rng.uniform(0.2, 2.0, (20, 1))
    vecs = np.vstack([base, noisy])
    r = EmbeddingReducer(target_dim=256, seed=0)
    reduced = np.vstack([r.reduce(v) for v in vecs]).astype(np.float64)
    err = np.abs(_cosines(vecs) - _cosines(reduced))
    assert float(err.mean()) < 0.1
    assert float(err.max()) < 0.35
    # near-duplicates stay the most similar pairs
    sims = reduced @ reduced.T
    np.fill_diagonal(sims, -1.0)
    assert sum(int(np.argmax(sims[i])) == i + 20 for i in range(20)) >= 18
