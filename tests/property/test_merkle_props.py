"""Property tests: the Merkle root depends only on the item_id -> content_hash map."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdt.merkle import FANOUT, MerkleDigest, bucket_of

ids = st.text(min_size=0, max_size=12)
hashes = st.binary(min_size=32, max_size=32)
maps = st.dictionaries(ids, hashes, max_size=40)


def build(items: dict[str, bytes]) -> MerkleDigest:
    """Return a digest holding exactly the given map."""
    d = MerkleDigest()
    for k, v in items.items():
        d.set(k, v)
    return d


def walk(a: MerkleDigest, b: MerkleDigest) -> list[int]:
    """Return the differing buckets found by the wire-style two-level walk."""
    return [
        bucket
        for i in a.differing_interior(b.interior())
        for bucket in a.differing_leaves(i, b.leaves(i))
    ]


@given(items=maps, noise=maps, data=st.data())
def test_order_and_interleaved_removals_do_not_matter(
    items: dict[str, bytes], noise: dict[str, bytes], data: st.DataObject
) -> None:
    a = MerkleDigest()
    for k, v in items.items():
        a.set(k, v)

    # Second replica: a random permutation, with stale hashes and transient items interleaved.
    b = MerkleDigest()
    ops: list[tuple[str, bytes | None]] = []
    for k, v in noise.items():
        ops.append((k, v))
    for k, v in items.items():
        ops.append((k, v[::-1] if v != v[::-1] else bytes(32)))
    ops = data.draw(st.permutations(ops))
    for k, maybe in ops:
        b.set(k, maybe)
    for k in data.draw(st.permutations(sorted(set(noise) | set(items)))):
        b.set(k, items.get(k))

    assert a.root() == b.root()
    assert a.interior() == b.interior()
    assert a.differing_buckets(b) == []
    assert len(a) == len(b) == len(items)


@given(items=maps, data=st.data())
def test_single_change_alters_root_and_is_located(
    items: dict[str, bytes], data: st.DataObject
) -> None:
    a = build(items)
    b = build(items)
    choices = ["extra"] + (["missing", "different"] if items else [])
    change = data.draw(st.sampled_from(choices))
    if change == "extra":
        target = data.draw(ids.filter(lambda k: k not in items))
        b.set(target, data.draw(hashes))
    else:
        target = data.draw(st.sampled_from(sorted(items)))
        if change == "missing":
            b.set(target, None)
        else:
            b.set(target, data.draw(hashes.filter(lambda v: v != items[target])))

    assert a.root() != b.root()
    assert a.differing_buckets(b) == [bucket_of(target)]
    assert walk(a, b) == [bucket_of(target)]
    assert a.differing_interior(b.interior()) == [bucket_of(target) // FANOUT]


@given(x=maps, y=maps)
def test_tree_walk_agrees_with_differing_buckets(x: dict[str, bytes], y: dict[str, bytes]) -> None:
    a, b = build(x), build(y)
    expected = a.differing_buckets(b)
    assert walk(a, b) == expected == b.differing_buckets(a)
    changed = {k for k in set(x) | set(y) if x.get(k) != y.get(k)}
    # Every changed item's bucket differs unless XOR contributions cancel, which needs a SHA-256
    # collision; every differing bucket must contain a changed item.
    assert set(expected) == {bucket_of(k) for k in changed}
    assert (a.root() == b.root()) == (not changed)
