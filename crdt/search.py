"""Incremental cosine-similarity index over float32 vectors keyed by (tier, item_id)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_INITIAL_CAPACITY = 64
_CHUNK_ELEMENTS = 1 << 17  # vector components normalised per numpy pass in upsert_many
_F32_EPS = float(np.finfo(np.float32).eps)

Key: TypeAlias = tuple[str, str]
FloatArray: TypeAlias = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: the key and its cosine similarity to the query."""

    tier: str
    item_id: str
    score: float


def _normalise(vector: npt.ArrayLike, what: str) -> tuple[FloatArray, float]:
    """Return the L2-normalised float32 copy of a finite 1-D vector and its original norm."""
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    # Scaling by the largest component first keeps the norm from overflowing or underflowing.
    scale = float(np.abs(v).max())
    if scale == 0.0:
        return np.zeros(v.shape[0], dtype=np.float32), 0.0
    v = v / scale
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32), norm * scale


def _normalise_rows(matrix: npt.NDArray[np.generic], out: FloatArray | None = None) -> FloatArray:
    """Return `_normalise` of every row of a finite 2-D matrix, bit for bit.

    The same float64 steps per row (a float32 peak is exact, so it is found in float32),
    and the squared norms come from a stacked (1 x d) @ (d x 1) matmul, which numpy
    computes with the same dot kernel as `np.linalg.norm` of one row. With `out` (float32,
    the matrix's shape) the rows are written there, rounded as `astype` would round them.
    """
    if matrix.dtype != np.float32:
        matrix = np.asarray(matrix, dtype=np.float64)
    scale = np.abs(matrix).max(axis=1).astype(np.float64)
    zero = scale == 0.0  # such rows come out as zeros, as in `_normalise`
    any_zero = bool(zero.any())
    if any_zero:
        scale[zero] = 1.0
    v = np.divide(matrix, scale[:, None], dtype=np.float64)
    norms = np.sqrt(np.matmul(v[:, None, :], v[:, :, None])[:, 0, 0])
    if any_zero:
        norms[zero] = 1.0
    if out is None:
        np.divide(v, norms[:, None], out=v)
        out = v.astype(np.float32)
    else:  # the quotient is computed in float64 and rounded once, into `out`
        np.divide(v, norms[:, None], out=out, casting="same_kind")
    if any_zero:
        out[zero] = 0.0  # not -0.0
    return out


class _Block:
    """Preallocated rows of one dimension with liveness, tier codes and a free list."""

    __slots__ = (
        "count", "free", "frozen", "keys", "live", "pending", "replaced", "tiers", "used",
        "vectors",
    )  # fmt: skip

    def __init__(self, dim: int) -> None:
        """Allocate an empty block for vectors of `dim` components."""
        self.vectors: FloatArray = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self.live: npt.NDArray[np.bool_] = np.zeros(_INITIAL_CAPACITY, dtype=np.bool_)
        self.tiers: npt.NDArray[np.int32] = np.zeros(_INITIAL_CAPACITY, dtype=np.int32)
        self.keys: list[Key | None] = [None] * _INITIAL_CAPACITY
        self.free: list[int] = []
        self.used = 0  # rows [0, used) have ever been handed out
        self.count = 0  # live rows
        # Rows that `add_many(defer=True)` appended, as (first row, float32 rows as given):
        # every row from the first of them on. `settle` stores them normalised (growing
        # `vectors`, which may be shorter than the other arrays until then) before anything
        # reads, replaces or frees a row or stores another vector.
        self.pending: list[tuple[int, FloatArray]] = []
        # Searches scoring a snapshot of rows [0, used) off the event loop: while any runs,
        # no stored row is written, so the snapshot stays intact. A freed row is not reused
        # meanwhile, and a replaced vector waits in `replaced` (row -> normalised vector),
        # stored when the last search releases the block; `finish_search` scores it from
        # there, also for a plan made while it waits.
        self.frozen = 0
        self.replaced: dict[int, FloatArray] = {}

    def _grow(self, needed: int = 0, *, vectors: bool = True) -> None:
        """Double the capacity (or more, to hold `needed` rows), keeping rows in place.

        With `vectors` False only the per-row bookkeeping grows (rows still pending).
        """
        capacity = max(self.live.shape[0] * 2, needed)
        if vectors:
            self._grow_vectors(capacity)
        live = np.zeros(capacity, dtype=np.bool_)
        live[: self.used] = self.live[: self.used]
        tiers = np.zeros(capacity, dtype=np.int32)
        tiers[: self.used] = self.tiers[: self.used]
        self.live, self.tiers = live, tiers
        self.keys.extend([None] * (capacity - len(self.keys)))

    def _grow_vectors(self, capacity: int) -> None:
        """Reallocate `vectors` with `capacity` rows, keeping the stored (settled) rows."""
        stored = self.pending[0][0] if self.pending else self.used
        vectors = np.zeros((capacity, self.vectors.shape[1]), dtype=np.float32)
        vectors[:stored] = self.vectors[:stored]
        self.vectors = vectors

    def add_many(
        self,
        keys: list[Key],
        tier_codes: list[int] | int,
        vectors: FloatArray,
        *,
        defer: bool = False,
    ) -> list[int]:
        """Store the vectors as `add` would one by one (same rows); return the row numbers.

        `tier_codes` is one code per key, or one for all of them. The rows are given as
        they are (`_normalise_rows` makes them what `add` stores); with `defer`, float32
        rows that need no freed row are kept (a copy) for `settle`, all others stored here.
        """
        count = len(keys)
        free = self.free if not self.frozen else []
        lazy = defer and vectors.dtype == np.float32 and len(free) == 0
        if not lazy and self.pending:
            self.settle()
        reused = free[::-1][:count]
        del self.free[len(self.free) - len(reused) :]
        fresh = count - len(reused)
        if self.used + fresh > self.live.shape[0]:
            self._grow(self.used + fresh, vectors=not lazy)
        start = self.used
        if reused:
            rows = [*reused, *range(start, start + fresh)]
            index = np.asarray(rows, dtype=np.intp)
            self.vectors[index] = _normalise_rows(vectors)
            self.live[index] = True
            self.tiers[index] = tier_codes
            for row, key in zip(rows, keys, strict=True):
                self.keys[row] = key
        else:
            rows = list(range(start, start + count))
            if lazy:
                self.pending.append((start, np.array(vectors, dtype=np.float32)))
            else:
                _normalise_rows(vectors, out=self.vectors[start : start + count])
            self.live[start : start + count] = True
            self.tiers[start : start + count] = tier_codes
            self.keys[start : start + count] = keys
        self.used += fresh
        self.count += count
        return rows

    def add(self, key: Key, tier_code: int, vector: FloatArray) -> int:
        """Store the vector in a free row and return the row number."""
        if self.pending:
            self.settle()
        if self.free and not self.frozen:
            row = self.free.pop()
        else:
            if self.used == self.live.shape[0]:
                self._grow()
            row = self.used
            self.used += 1
        self.vectors[row] = vector
        self.live[row] = True
        self.tiers[row] = tier_code
        self.keys[row] = key
        self.count += 1
        return row

    def freeze(self) -> None:
        """Hold every stored row as it is until a matching `thaw` (searches nest)."""
        self.frozen += 1

    def thaw(self) -> None:
        """Release one frozen search; the last one stores the vectors replaced meanwhile."""
        self.frozen -= 1
        if not self.frozen and self.replaced:
            for row, vector in self.replaced.items():
                self.vectors[row] = vector
            self.replaced.clear()

    def settle(self) -> None:
        """Store the pending rows normalised (`_normalise_rows`), a bounded chunk at a time."""
        if not self.pending:
            return
        if self.vectors.shape[0] < self.live.shape[0]:
            self._grow_vectors(self.live.shape[0])
        step = max(1, _CHUNK_ELEMENTS // self.vectors.shape[1])
        for start, rows in self.pending:
            for first in range(0, rows.shape[0], step):
                part = rows[first : first + step]
                _normalise_rows(part, out=self.vectors[start + first : start + first + len(part)])
        self.pending.clear()

    def discard(self, row: int) -> None:
        """Mark the row free for reuse."""
        if self.pending:  # a pending row must not be normalised after its reuse
            self.settle()
        self.replaced.pop(row, None)
        self.live[row] = False
        self.keys[row] = None
        self.free.append(row)
        self.count -= 1


class VectorIndex:
    """Cosine top-k index of (tier, item_id) -> vector; vectors of different dimensions coexist."""

    __slots__ = ("_blocks", "_rows", "_tier_codes")

    def __init__(self) -> None:
        """Create an empty index."""
        self._blocks: dict[int, _Block] = {}
        self._rows: dict[Key, tuple[int, int]] = {}  # key -> (dimension, row)
        # Codes are never reclaimed; the number of distinct tier names is small.
        self._tier_codes: dict[str, int] = {}

    def __len__(self) -> int:
        """Return the number of stored vectors."""
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        """Return whether a (tier, item_id) key is stored."""
        return key in self._rows

    def dimensions(self) -> tuple[int, ...]:
        """Return the sorted dimensions that currently hold at least one vector."""
        return tuple(sorted(self._blocks))

    def upsert(self, tier: str, item_id: str, vector: npt.ArrayLike) -> None:
        """Store the L2-normalised vector under (tier, item_id), replacing any previous one."""
        normalised, _ = _normalise(vector, "vector")
        dim = normalised.shape[0]
        key = (tier, item_id)
        tier_code = self._tier_codes.setdefault(tier, len(self._tier_codes))
        existing = self._rows.get(key)
        if existing is not None:
            old_dim, row = existing
            if old_dim == dim:
                held = self._blocks[dim]
                if held.pending:
                    held.settle()
                if held.frozen:  # a search reads the stored row: store it when released
                    held.replaced[row] = normalised
                else:
                    held.vectors[row] = normalised
                return
            self._discard(old_dim, row)
        block = self._blocks.get(dim)
        if block is None:
            block = self._blocks[dim] = _Block(dim)
        self._rows[key] = (dim, block.add(key, tier_code, normalised))

    def upsert_many(
        self,
        tier: str | Sequence[str],
        item_ids: Sequence[str],
        vectors: npt.ArrayLike,
        *,
        defer: bool = False,
    ) -> None:
        """Upsert row i of a 2-D matrix under (tier, item_ids[i]), as `upsert` per row would.

        `tier` names one tier for every row, or one per row. Raises ValueError, storing
        nothing, if the matrix is not 2-D with one non-empty row per id or is not finite.
        With `defer`, new float32 rows are normalised when the index is next searched or
        changed otherwise (same results; an initial sync's apply does not wait for it).
        """
        matrix = np.asarray(vectors)
        tiers = [tier] * len(item_ids) if isinstance(tier, str) else list(tier)
        if matrix.ndim != 2 or matrix.shape[1] == 0 or matrix.shape[0] != len(item_ids):
            raise ValueError(
                f"vectors must be a 2-D matrix with one non-empty row per id, "
                f"got shape {matrix.shape} for {len(item_ids)} ids"
            )
        if len(tiers) != len(item_ids):
            raise ValueError(f"got {len(tiers)} tiers for {len(item_ids)} ids")
        if not np.isfinite(matrix).all():
            raise ValueError("vector contains NaN or infinite values")
        keys = list(zip(tiers, item_ids, strict=True))
        if not keys:
            return
        if len(set(keys)) != len(keys) or not self._rows.keys().isdisjoint(keys):
            for key, row in zip(keys, matrix, strict=True):  # rare: replacements
                self.upsert(key[0], key[1], row)
            return
        dim = matrix.shape[1]
        codes: list[int] | int
        if isinstance(tier, str):
            codes = self._tier_codes.setdefault(tier, len(self._tier_codes))
        else:
            codes = [self._tier_codes.setdefault(t, len(self._tier_codes)) for t in tiers]
        block = self._blocks.get(dim)
        if block is None:
            block = self._blocks[dim] = _Block(dim)
        step = max(1, _CHUNK_ELEMENTS // dim)  # bounded float64 temporaries
        for start in range(0, len(keys), step):
            stop = start + step
            part = keys[start:stop]
            part_codes = codes if isinstance(codes, int) else codes[start:stop]
            rows = block.add_many(part, part_codes, matrix[start:stop], defer=defer)
            self._rows.update(zip(part, zip(repeat(dim), rows), strict=True))

    def remove(self, tier: str, item_id: str) -> None:
        """Remove the vector stored under (tier, item_id); do nothing if absent."""
        existing = self._rows.pop((tier, item_id), None)
        if existing is not None:
            self._discard(*existing)

    def _discard(self, dim: int, row: int) -> None:
        """Free a row, dropping its block when it becomes empty."""
        block = self._blocks[dim]
        block.discard(row)
        if block.count == 0:
            del self._blocks[dim]

    def search(
        self, query: npt.ArrayLike, k: int = 10, tiers: Collection[str] | None = None
    ) -> list[SearchHit]:
        """Return up to k hits of the query's dimension, best first, ties by (tier, item_id)."""
        plan = self.plan_search(query, k, tiers)
        if plan is None:
            return []
        try:
            return self.finish_search(plan, *plan.score())
        finally:
            plan.release()

    def plan_search(
        self, query: npt.ArrayLike, k: int = 10, tiers: Collection[str] | None = None
    ) -> SearchPlan | None:
        """Check the query and freeze a snapshot to score; None when nothing can match.

        `plan.score()` reads only the snapshot, so it may run on another thread while this
        index changes. Then call `finish_search`, and `plan.release()` after it (never
        between the two: a row freed meanwhile could be reused under another key).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if isinstance(tiers, str):
            raise TypeError("tiers must be a collection of tier names, not a single str")
        q, norm = _normalise(query, "query")
        if norm == 0.0:
            raise ValueError("query vector has zero norm; cosine similarity is undefined")
        block = self._blocks.get(q.shape[0])
        if block is None:
            return None
        if block.pending:
            block.settle()
        used = block.used
        mask = block.live[:used].copy()
        if tiers is not None:
            codes = [self._tier_codes[t] for t in tiers if t in self._tier_codes]
            if not codes:
                return None
            wanted = np.zeros(len(self._tier_codes), dtype=np.bool_)
            wanted[codes] = True
            mask &= wanted[block.tiers[:used]]
        candidates = int(np.count_nonzero(mask))
        if candidates == 0:
            return None
        block.freeze()
        return SearchPlan(block, block.vectors[:used], mask, candidates, q, k)

    def finish_search(
        self, plan: SearchPlan, rows: npt.NDArray[np.intp], scores: FloatArray
    ) -> list[SearchHit]:
        """Return the top k of the plan's rows as they are now (before `plan.release()`).

        A row whose item left meanwhile is skipped, and one whose vector was replaced (now
        or before the plan, while another plan held the block) is scored with its new
        vector; if either touches the plan's rows, the top k is picked again from every
        row's score. Items added after the plan are not among the hits.
        """
        if plan.released:
            raise RuntimeError("finish_search after plan.release(): rows may have been reused")
        block = plan.block
        live, keys, replaced = block.live, block.keys, block.replaced
        used = scores.shape[0]
        changed = [row for row in replaced if row < used and plan.mask[row]]
        if changed or not live[rows].all():  # rare: a change raced the search
            current = plan.mask & live[:used]
            scores = scores.copy()
            np.putmask(scores, ~current, -np.inf)
            for row in changed:
                scores[row] = float(replaced[row] @ plan.query)
            dim = plan.vectors.shape[1]
            rows = _top_rows(scores, current, int(np.count_nonzero(current)), plan.k, dim)
        picked = rows.tolist()  # every one live: checked above, or picked again from live rows
        if not picked:
            return []
        # The hits are ranked on scores computed again in float64, row by row: BLAS's
        # float32 matrix-vector product can differ by an ulp with a row's position in the
        # block, and rows sit in different places on different replicas, so equal vectors
        # could rank differently there (the (tier, item_id) tie-break did not hold).
        vectors = np.stack([replaced.get(row, plan.vectors[row]) for row in picked])
        exact = (vectors.astype(np.float64) * plan.query.astype(np.float64)).sum(axis=1)
        ranked = sorted(zip((-exact).tolist(), (keys[row] for row in picked), strict=True))
        return [SearchHit(key[0], key[1], -neg) for neg, key in ranked[: plan.k]]


def _top_rows(
    scores: FloatArray, mask: npt.NDArray[np.bool_], candidates: int, k: int, dim: int
) -> npt.NDArray[np.intp]:
    """Return the rows of `mask` that can be among the top k scores, ties at the k-th included.

    Rows outside `mask` must score -inf.
    """
    if k >= candidates:
        return np.flatnonzero(mask)
    used = scores.shape[0]
    top = np.argpartition(scores, used - k)[used - k :]
    # argpartition splits ties at the k-th score arbitrarily; take every tied row, and
    # every row whose score may differ from it only by rounding: float32 dot products of
    # equal unit vectors differ by up to about dim * eps with their rows' positions (an
    # absolute bound; near zero that is dozens of ulps), so the (tier, item_id)
    # tie-break after the float64 rescoring is deterministic.
    kth = scores[top].min()
    return np.flatnonzero(scores >= kth - 2 * dim * _F32_EPS)


@dataclass(slots=True)
class SearchPlan:
    """A frozen snapshot of one block's rows to score against a query, off the loop if need be.

    The block stays frozen until `release`.
    """

    block: _Block
    vectors: FloatArray
    mask: npt.NDArray[np.bool_]
    candidates: int
    query: FloatArray
    k: int
    released: bool = False

    def score(self) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Return the rows that can be among the top k (ties included) and every row's score.

        Reads only the snapshot: safe on another thread (numpy's matmul releases the GIL).
        """
        scores: FloatArray = self.vectors @ self.query
        if self.candidates < scores.shape[0]:
            np.putmask(scores, ~self.mask, -np.inf)
        dim = self.vectors.shape[1]
        return _top_rows(scores, self.mask, self.candidates, self.k, dim), scores

    def release(self) -> None:
        """Unfreeze the block (idempotent): its free rows may be reused again."""
        if not self.released:
            self.released = True
            self.block.thaw()
