"""L0: a process-local LRU cache of hot items and a deterministic embedding reducer.

Nothing here is replicated: L0 is a per-process accelerator in front of the replicated tiers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FloatArray = npt.NDArray[np.float32]
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of an `LruCache`'s counters."""

    hits: int
    misses: int
    evictions: int
    size: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        """Return hits / (hits + misses), or 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class LruCache(Generic[K, V]):
    """A bounded mapping that evicts the least recently used entry when full.

    `get` returns None on a miss, so a stored None value is indistinguishable from a miss;
    do not cache None. Not thread-safe.
    """

    __slots__ = ("_capacity", "_data", "_evictions", "_hits", "_misses", "_touch")

    def __init__(self, capacity: int) -> None:
        """Create an empty cache holding at most `capacity` (>= 1) entries."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self._touch = self._data.move_to_end
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @property
    def capacity(self) -> int:
        """Return the maximum number of entries."""
        return self._capacity

    def get(self, key: K) -> V | None:
        """Return the value for `key` (marking it most recently used) or None; count hit/miss."""
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return None
        self._touch(key)
        self._hits += 1
        return value

    def peek(self, key: K) -> V | None:
        """Return the value for `key` or None without touching recency or counters."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        """Insert or replace `key` as most recently used, evicting the LRU entry if full."""
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
            return
        data[key] = value
        if len(data) > self._capacity:
            data.popitem(last=False)
            self._evictions += 1

    def invalidate(self, key: K) -> bool:
        """Remove `key`; return whether it was present (not counted as an eviction)."""
        return self._data.pop(key, _ABSENT) is not _ABSENT

    def invalidate_where(self, predicate: Callable[[K], bool]) -> int:
        """Remove every entry whose key satisfies `predicate`; return how many were removed."""
        doomed = [k for k in self._data if predicate(k)]
        for k in doomed:
            del self._data[k]
        return len(doomed)

    def clear(self) -> None:
        """Remove all entries; hit/miss/eviction counters are kept."""
        self._data.clear()

    def keys(self) -> list[K]:
        """Return the cached keys, least recently used first (recency untouched)."""
        return list(self._data)

    def __len__(self) -> int:
        """Return the number of entries."""
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Return whether `key` is cached, without touching recency or counters."""
        return key in self._data

    @property
    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            size=len(self._data),
            capacity=self._capacity,
        )


class EmbeddingReducer:
    """Deterministic Gaussian random projection of embeddings down to `target_dim` dims.

    By the Johnson-Lindenstrauss lemma cosine similarity is approximately preserved: the
    error has standard deviation about 1/sqrt(target_dim) (~0.06 at 256 dims). Outputs are
    L2-normalised float32 vectors, so a dot product of two outputs is their cosine. The
    projection for input dimension d is drawn from numpy.random.default_rng((seed, d)) and
    computed in float64 before rounding to float32, so the same seed and input give the same
    output on every run and machine (barring a rare last-bit difference between BLAS builds).
    """

    __slots__ = ("_matrices", "_seed", "_target_dim")

    def __init__(self, target_dim: int = 256, seed: int = 0) -> None:
        """Create a reducer to `target_dim` (>= 1) dimensions; `seed` must be >= 0."""
        if target_dim < 1:
            raise ValueError("target_dim must be >= 1")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self._target_dim = target_dim
        self._seed = seed
        self._matrices: dict[int, npt.NDArray[np.float64]] = {}

    @property
    def target_dim(self) -> int:
        """Return the output dimension for inputs longer than it."""
        return self._target_dim

    def projection(self, dim: int) -> npt.NDArray[np.float64]:
        """Return the (dim x target_dim) projection matrix for inputs of length `dim`."""
        m = self._matrices.get(dim)
        if m is None:
            rng = np.random.default_rng((self._seed, dim))
            m = rng.standard_normal((dim, self._target_dim)) / math.sqrt(self._target_dim)
            m.flags.writeable = False
            self._matrices[dim] = m
        return m

    def reduce(self, vec: npt.ArrayLike) -> FloatArray:
        """Return the L2-normalised float32 reduction of a 1-d vector (zeros stay zeros).

        Vectors of at most `target_dim` dims are only normalised (their length is kept).
        Raises ValueError on non-1-d, empty or non-finite input.
        """
        arr = np.asarray(vec, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(f"expected a non-empty 1-d vector, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("vector contains NaN or infinity")
        dim = arr.shape[0]
        out = arr if dim <= self._target_dim else arr @ self.projection(dim)
        norm = math.sqrt(float(np.dot(out, out)))
        if norm == 0.0:
            return np.zeros(out.shape[0], dtype=np.float32)
        return (out / norm).astype(np.float32)

    def reduce_batch(self, mat: npt.ArrayLike) -> FloatArray:
        """Return `reduce` applied to each row of a 2-d array (equal up to float rounding)."""
        arr = np.asarray(mat, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"expected a 2-d array with >= 1 column, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("array contains NaN or infinity")
        dim = arr.shape[1]
        out = arr if dim <= self._target_dim else arr @ self.projection(dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0.0] = 1.0
        result: FloatArray = (out / norms).astype(np.float32)
        return result
