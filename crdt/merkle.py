"""Merkle digest of a tier's content: 4096 XOR leaves under 64 lazily rehashed interior nodes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

BUCKETS = 4096
FANOUT = 64
INTERIOR_NODES = BUCKETS // FANOUT
HASH_SIZE = 32

_ZERO_LEAF = bytes(HASH_SIZE)
_EMPTY_INTERIOR = hashlib.sha256(bytes(HASH_SIZE * FANOUT)).digest()


def bucket_of(item_id: str) -> int:
    """Return the item's bucket: the first 12 bits of SHA-256 of its UTF-8 id."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:2], "big") >> 4


def _contribution(item_id: str, content_hash: bytes) -> int:
    """Return the leaf contribution of one item as a 256-bit integer."""
    digest = hashlib.sha256(item_id.encode("utf-8") + b"\0" + content_hash).digest()
    return int.from_bytes(digest, "big")


def _leaf_bytes(value: int) -> bytes:
    """Return a leaf value as 32 big-endian bytes."""
    return value.to_bytes(HASH_SIZE, "big")


def _check_bucket(bucket: int) -> None:
    """Raise ValueError unless 0 <= bucket < BUCKETS."""
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"bucket must be in [0, {BUCKETS}), got {bucket}")


def _check_hashes(hashes: Sequence[bytes], count: int, what: str) -> None:
    """Raise ValueError unless there are `count` hashes of HASH_SIZE bytes each."""
    if len(hashes) != count:
        raise ValueError(f"expected {count} {what} hashes, got {len(hashes)}")
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ValueError(f"{what} hashes must be {HASH_SIZE} bytes, got {len(h)}")


def _check_interior(interior_index: int) -> None:
    """Raise ValueError unless 0 <= interior_index < INTERIOR_NODES."""
    if not 0 <= interior_index < INTERIOR_NODES:
        raise ValueError(f"interior index must be in [0, {INTERIOR_NODES}), got {interior_index}")


class MerkleDigest:
    """Order-independent digest of an item_id -> content_hash map; equal maps give equal roots."""

    __slots__ = ("_buckets", "_dirty", "_interior", "_items", "_leaves", "_root")

    def __init__(self) -> None:
        """Create an empty digest."""
        # item_id -> (content_hash, contribution XORed into its bucket's leaf)
        self._items: dict[str, tuple[bytes, int]] = {}
        self._leaves: list[int] = [0] * BUCKETS
        # Only non-empty buckets are present, so an empty digest stays small.
        self._buckets: dict[int, set[str]] = {}
        self._interior: list[bytes] = [_EMPTY_INTERIOR] * INTERIOR_NODES
        self._dirty: set[int] = set()
        self._root: bytes | None = None

    def __len__(self) -> int:
        """Return the number of items recorded."""
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        """Return whether the item is recorded."""
        return item_id in self._items

    def get(self, item_id: str) -> bytes | None:
        """Return the recorded content hash of the item, or None if absent."""
        entry = self._items.get(item_id)
        return None if entry is None else entry[0]

    def set(self, item_id: str, content_hash: bytes | None) -> None:
        """Record the item's content hash, or remove the item when None; O(1), idempotent."""
        old = self._items.get(item_id)
        if old is not None and old[0] == content_hash:
            return
        if old is None and content_hash is None:
            return
        bucket = bucket_of(item_id)
        leaf = self._leaves[bucket]
        if old is not None:
            leaf ^= old[1]
        if content_hash is None:
            del self._items[item_id]
            members = self._buckets[bucket]
            members.discard(item_id)
            if not members:
                del self._buckets[bucket]
        else:
            content_hash = bytes(content_hash)
            contribution = _contribution(item_id, content_hash)
            leaf ^= contribution
            self._items[item_id] = (content_hash, contribution)
            self._buckets.setdefault(bucket, set()).add(item_id)
        self._leaves[bucket] = leaf
        self._dirty.add(bucket // FANOUT)
        self._root = None

    def set_many(self, entries: Iterable[tuple[str, bytes | None]]) -> None:
        """Apply `set` to each `(item_id, content_hash)` in order (quicker for new items)."""
        items, leaves, buckets, dirty = self._items, self._leaves, self._buckets, self._dirty
        sha256 = hashlib.sha256
        for item_id, content_hash in entries:
            if content_hash is None or item_id in items:
                self.set(item_id, content_hash)
                continue
            raw_id = item_id.encode("utf-8")
            bucket = int.from_bytes(sha256(raw_id).digest()[:2], "big") >> 4  # bucket_of
            content_hash = bytes(content_hash)
            contribution = int.from_bytes(sha256(raw_id + b"\0" + content_hash).digest(), "big")
            leaves[bucket] ^= contribution
            items[item_id] = (content_hash, contribution)
            members = buckets.get(bucket)
            if members is None:
                buckets[bucket] = {item_id}
            else:
                members.add(item_id)
            dirty.add(bucket // FANOUT)
            self._root = None

    def _refresh(self) -> bytes:
        """Rehash dirty interior nodes and the root if anything changed; return the root."""
        for index in self._dirty:
            start = index * FANOUT
            block = b"".join(_leaf_bytes(v) for v in self._leaves[start : start + FANOUT])
            self._interior[index] = hashlib.sha256(block).digest()
        self._dirty.clear()
        if self._root is None:
            self._root = hashlib.sha256(b"".join(self._interior)).digest()
        return self._root

    def root(self) -> bytes:
        """Return the 32-byte root hash; costs O(interior nodes changed since the last call)."""
        return self._refresh()

    def interior(self) -> tuple[bytes, ...]:
        """Return the 64 interior node hashes in order."""
        self._refresh()
        return tuple(self._interior)

    def leaves(self, interior_index: int) -> tuple[bytes, ...]:
        """Return the 64 leaf values (32 bytes each) under one interior node."""
        _check_interior(interior_index)
        start = interior_index * FANOUT
        return tuple(_leaf_bytes(v) for v in self._leaves[start : start + FANOUT])

    def leaf(self, bucket: int) -> bytes:
        """Return one bucket's leaf value (32 bytes; all zero when the bucket is empty)."""
        _check_bucket(bucket)
        value = self._leaves[bucket]
        return _ZERO_LEAF if value == 0 else _leaf_bytes(value)

    def items_in_bucket(self, bucket: int) -> list[str]:
        """Return the sorted ids of the items that fall in the bucket."""
        _check_bucket(bucket)
        return sorted(self._buckets.get(bucket, ()))

    def differing_buckets(self, other: MerkleDigest) -> list[int]:
        """Return the sorted bucket numbers whose leaves differ between the two digests."""
        mine, theirs = self._leaves, other._leaves
        return [b for b in range(BUCKETS) if mine[b] != theirs[b]]

    def differing_interior(self, other_interior: Sequence[bytes]) -> list[int]:
        """Return the sorted interior indices whose hash differs from the peer's 64 hashes."""
        _check_hashes(other_interior, INTERIOR_NODES, "interior")
        mine = self.interior()
        return [i for i in range(INTERIOR_NODES) if mine[i] != bytes(other_interior[i])]

    def differing_leaves(self, interior_index: int, other_leaves: Sequence[bytes]) -> list[int]:
        """Return the sorted bucket numbers under the node whose leaf differs from the peer's 64."""
        _check_interior(interior_index)
        _check_hashes(other_leaves, FANOUT, "leaf")
        start = interior_index * FANOUT
        return [
            start + i
            for i, theirs in enumerate(other_leaves)
            if self._leaves[start + i] != int.from_bytes(theirs, "big")
        ]
