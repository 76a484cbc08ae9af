"""Unit tests for the Merkle digest of a tier's content."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from crdt.merkle import BUCKETS, FANOUT, INTERIOR_NODES, MerkleDigest, bucket_of


def h(text: str) -> bytes:
    """Return a 32-byte content hash derived from text."""
    return hashlib.sha256(text.encode()).digest()


def ids_in_same_bucket(count: int) -> tuple[int, list[str]]:
    """Return a bucket and `count` distinct ids that all hash into it."""
    seen: dict[int, list[str]] = {}
    n = 0
    while True:
        item_id = f"item-{n}"
        n += 1
        group = seen.setdefault(bucket_of(item_id), [])
        group.append(item_id)
        if len(group) == count:
            return bucket_of(item_id), group


def test_bucket_is_first_12_bits_of_sha256() -> None:
    for item_id in ["", "a", "memory/42", "ünïcødé"]:
        digest = hashlib.sha256(item_id.encode("utf-8")).digest()
        assert bucket_of(item_id) == int.from_bytes(digest[:2], "big") >> 4
        assert 0 <= bucket_of(item_id) < BUCKETS


def test_empty_root_is_hash_of_all_zero_leaves() -> None:
    interior = hashlib.sha256(bytes(32 * FANOUT)).digest()
    expected = hashlib.sha256(interior * INTERIOR_NODES).digest()
    d = MerkleDigest()
    assert d.root() == expected
    assert d.interior() == (interior,) * INTERIOR_NODES
    assert len(d) == 0
    assert MerkleDigest().root() == expected


def test_leaf_is_xor_of_item_contributions() -> None:
    bucket, (a, b) = ids_in_same_bucket(2)
    d = MerkleDigest()
    d.set(a, h("A"))
    d.set(b, h("B"))
    ca = int.from_bytes(hashlib.sha256(a.encode() + b"\0" + h("A")).digest(), "big")
    cb = int.from_bytes(hashlib.sha256(b.encode() + b"\0" + h("B")).digest(), "big")
    assert d.leaf(bucket) == (ca ^ cb).to_bytes(32, "big")
    assert d.items_in_bucket(bucket) == sorted([a, b])


def test_tree_structure_matches_spec() -> None:
    d = MerkleDigest()
    for i in range(300):
        d.set(f"k{i}", h(str(i)))
    interior = d.interior()
    assert len(interior) == INTERIOR_NODES
    for i in range(INTERIOR_NODES):
        leaves = d.leaves(i)
        assert len(leaves) == FANOUT
        assert leaves == tuple(d.leaf(i * FANOUT + j) for j in range(FANOUT))
        assert interior[i] == hashlib.sha256(b"".join(leaves)).digest()
    assert d.root() == hashlib.sha256(b"".join(interior)).digest()
    assert len(d.root()) == 32


def test_insertion_order_and_removals_do_not_matter() -> None:
    items = {f"id{i}": h(f"v{i}") for i in range(200)}
    a = MerkleDigest()
    for k, v in items.items():
        a.set(k, v)
    b = MerkleDigest()
    for k in reversed(list(items)):
        b.set(k, h("stale"))
        b.set("transient-" + k, h("x"))
    for k in items:
        b.set("transient-" + k, None)
        b.set(k, items[k])
    assert a.root() == b.root()
    assert a.differing_buckets(b) == []
    assert len(a) == len(b) == 200


def test_removing_everything_returns_to_empty_root() -> None:
    empty = MerkleDigest().root()
    d = MerkleDigest()
    d.set("x", h("1"))
    d.set("y", h("2"))
    assert d.root() != empty
    d.set("x", None)
    d.set("y", None)
    assert d.root() == empty
    assert len(d) == 0
    assert d.items_in_bucket(bucket_of("x")) == []


def test_set_same_hash_twice_and_remove_absent_are_noops() -> None:
    d = MerkleDigest()
    d.set("x", h("1"))
    before = d.root()
    d.set("x", h("1"))
    d.set("missing", None)
    assert d.root() == before
    assert len(d) == 1
    assert d.get("x") == h("1")
    assert d.get("missing") is None
    assert "x" in d
    assert "missing" not in d


@pytest.mark.parametrize("change", ["extra", "missing", "different"])
def test_single_difference_changes_root_and_is_located(change: str) -> None:
    base = {f"id{i}": h(f"v{i}") for i in range(50)}
    a, b = MerkleDigest(), MerkleDigest()
    for k, v in base.items():
        a.set(k, v)
        b.set(k, v)
    target = {"extra": "new-item", "missing": "id7", "different": "id13"}[change]
    b.set(target, None if change == "missing" else h("changed"))
    assert a.root() != b.root()
    assert a.differing_buckets(b) == [bucket_of(target)]
    assert b.differing_buckets(a) == [bucket_of(target)]


def test_tree_walk_finds_differing_buckets() -> None:
    a, b = MerkleDigest(), MerkleDigest()
    for i in range(500):
        a.set(f"id{i}", h(str(i)))
        b.set(f"id{i}", h(str(i)))
    for k in ["id3", "id250", "only-in-b"]:
        b.set(k, h("other"))
    expected = sorted({bucket_of(k) for k in ["id3", "id250", "only-in-b"]})
    nodes = a.differing_interior(b.interior())
    assert nodes == sorted({bucket // FANOUT for bucket in expected})
    found = [bucket for i in nodes for bucket in a.differing_leaves(i, b.leaves(i))]
    assert found == expected == a.differing_buckets(b)


def test_hash_collision_of_buckets_still_detected() -> None:
    bucket, (x, y) = ids_in_same_bucket(2)
    a, b = MerkleDigest(), MerkleDigest()
    a.set(x, h("1"))
    b.set(y, h("1"))
    assert a.root() != b.root()
    assert a.differing_buckets(b) == [bucket]


def test_root_only_rehashes_dirty_interior_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    d = MerkleDigest()
    for i in range(1000):
        d.set(f"id{i}", h(str(i)))
    d.root()
    real: Callable[..., Any] = hashlib.sha256
    calls: list[int] = []

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    # Two items whose buckets lie under different interior nodes.
    first = "id0"
    second = next(
        f"id{i}" for i in range(1000) if bucket_of(f"id{i}") // FANOUT != bucket_of(first) // FANOUT
    )
    d.set(first, h("new"))
    d.set(second, h("new"))
    monkeypatch.setattr(hashlib, "sha256", counting)
    d.root()
    assert len(calls) == 3  # two interior nodes + the root
    calls.clear()
    d.root()
    d.interior()
    assert calls == []


def test_argument_validation() -> None:
    d = MerkleDigest()
    with pytest.raises(ValueError, match="bucket"):
        d.leaf(BUCKETS)
    with pytest.raises(ValueError, match="bucket"):
        d.items_in_bucket(-1)
    with pytest.raises(ValueError, match="interior index"):
        d.leaves(INTERIOR_NODES)
    with pytest.raises(ValueError, match="expected 64 interior"):
        d.differing_interior(d.interior()[:-1])
    with pytest.raises(ValueError, match="32 bytes"):
        d.differing_interior([b"short"] * INTERIOR_NODES)
    with pytest.raises(ValueError, match="expected 64 leaf"):
        d.differing_leaves(0, [])
    with pytest.raises(ValueError, match="interior index"):
        d.differing_leaves(-1, d.leaves(0))
