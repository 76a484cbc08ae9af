"""Slicing a Yjs update into bounded updates that apply one after another."""

from __future__ import annotations

import random

import pytest

from crdt.tier import TierDoc
from crdt.yslice import plan_slices
from crdt.ywire import WireFormatError, decode_state_vector


def concurrent_docs(seed: int) -> list[TierDoc]:
    """Three replicas that wrote, overwrote and deleted items, partly seeing each other."""
    rng = random.Random(seed)
    docs = [TierDoc("L3", client_id=c) for c in (11, 22, 33)]
    for _ in range(150):
        doc = rng.choice(docs)
        writes = [
            (
                f"i{rng.randrange(60)}",
                str(doc.client_id),
                None if rng.random() < 0.1 else "x" * rng.randrange(1, 200) + "é😀",
            )
            for _ in range(rng.randrange(1, 12))
        ]
        doc.write(writes)
        if rng.random() < 0.4:
            other = rng.choice(docs)
            if other is not doc:
                other.apply_update(doc.encode_diff(other.state_vector()))
    return docs


def content(doc: TierDoc) -> dict[str, dict[str, str]]:
    return {item_id: dict(doc.versions(item_id)) for item_id in doc.item_ids()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_bytes", [1, 300, 4_000, 1 << 30])
def test_slices_apply_in_order_each_integrating_at_once(seed: int, max_bytes: int) -> None:
    docs = concurrent_docs(seed)
    full = docs[0]
    for other in docs[1:]:
        full.apply_update(other.encode_diff(full.state_vector()))
    receiver = TierDoc("L3", client_id=44)
    receiver.apply_update(docs[1 + seed % 2].encode_diff())  # a receiver that knows some
    diff = full.encode_diff(receiver.state_vector())
    plan = plan_slices(diff, max_bytes, decode_state_vector(receiver.state_vector()))
    assert len(plan) >= 1
    if max_bytes == 1:
        assert len(plan) > 10
    seen = sum(decode_state_vector(receiver.state_vector()).values())
    for index in range(len(plan)):
        receiver.apply_update(plan.slice(index))
        assert receiver.held_updates == 0
        now = sum(decode_state_vector(receiver.state_vector()).values())
        assert now > seen, "a slice did not integrate on its own"
        seen = now
    assert receiver.state_vector() == full.state_vector()
    assert content(receiver) == content(full)


def test_slices_are_bounded_except_for_a_single_large_struct() -> None:
    doc = TierDoc("L3", client_id=5)
    doc.write((f"item-{i}", "w", "r" * 500) for i in range(200))
    doc.write([("huge", "w", "h" * 20_000)])
    plan = plan_slices(doc.encode_diff(), 4_096)
    sizes = [plan.slice_bytes(i) for i in range(len(plan))]
    assert max(sizes) > 20_000  # the large struct, alone
    assert sorted(sizes)[-2] < 4_096 + 600
    assert sum(len(plan.slice(i)) for i in range(len(plan))) < len(doc.encode_diff()) * 1.01
    receiver = TierDoc("L3", client_id=6)
    for index in range(len(plan)):
        receiver.apply_update(plan.slice(index))
    assert content(receiver) == content(doc)


def test_an_empty_diff_is_one_empty_slice() -> None:
    doc = TierDoc("L3", client_id=5)
    doc.write([("a", "w", "x")])
    plan = plan_slices(doc.encode_diff(doc.state_vector()), 100)
    assert len(plan) == 1
    TierDoc("L3", client_id=6).apply_update(plan.slice(0))


@pytest.mark.parametrize("cut", [1, 5, 17, 40])
def test_truncated_or_garbage_updates_raise_wire_format_error(cut: int) -> None:
    doc = TierDoc("L3", client_id=5)
    doc.write([(f"i{i}", "w", "value") for i in range(5)])
    update = doc.encode_diff()
    with pytest.raises(WireFormatError):
        plan_slices(update[:cut], 100)
    with pytest.raises(WireFormatError):
        plan_slices(b"\x01\x01\x05\x00\x1f", 100)  # content ref 31 does not exist
