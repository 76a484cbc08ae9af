"""Outbox: local updates wait up to the sync interval, merged per tier; urgent ones don't."""

from __future__ import annotations

from crdt.tier import TierDoc
from mesh.frames import Priority
from mesh.inputs import AckLevel
from mesh.outbox import Outbox, WaitingWrite


def updates(tier: str, count: int, client_id: int = 7) -> tuple[list[bytes], TierDoc]:
    """`count` successive updates of one writer, and the document that produced them."""
    doc = TierDoc(tier, client_id=client_id)
    out = []
    for i in range(count):
        update = doc.write([(f"item-{i}", "a", f'{{"n": {i}}}')])
        assert update is not None
        out.append(update)
    return out, doc


def waiting(request_id: int, tiers: set[str]) -> WaitingWrite:
    return WaitingWrite(request_id, AckLevel.PEER, tiers, 10.0, ())


def test_empty_outbox_is_never_due_and_flushes_nothing() -> None:
    outbox = Outbox(0.5)
    assert outbox.due is None and len(outbox) == 0
    assert outbox.flush() == ([], [])


def test_normal_updates_are_due_one_interval_after_the_first() -> None:
    outbox = Outbox(0.5)
    (u1, u2), _doc = updates("L1", 2)
    assert outbox.add((("L1", u1),), Priority.NORMAL, 10.0) is False
    assert outbox.due == 10.5
    assert outbox.add((("L1", u2),), Priority.LOW, 10.3) is False
    assert outbox.due == 10.5  # a later update does not push the flush back
    assert len(outbox) == 2


def test_urgent_priorities_ask_for_an_immediate_flush() -> None:
    for priority in Priority:
        outbox = Outbox(0.5)
        (u1,), _doc = updates("L1", 1)
        assert outbox.add((("L1", u1),), priority, 0.0) is priority.urgent
    assert [p for p in Priority if p.urgent] == [Priority.CRITICAL, Priority.EMERGENCY]


def test_flush_merges_each_tier_into_one_batch_with_the_highest_priority() -> None:
    outbox = Outbox(0.5)
    l1, l1_doc = updates("L1", 3)
    l3, l3_doc = updates("L3", 1, client_id=8)
    outbox.add((("L1", l1[0]), ("L3", l3[0])), Priority.LOW, 0.0, waiting(1, {"L1", "L3"}))
    outbox.add((("L1", l1[1]),), Priority.HIGH, 0.1)
    outbox.add((("L1", l1[2]),), Priority.NORMAL, 0.2, waiting(2, {"L1"}))
    batches, writes = outbox.flush()
    assert [(b.tier, b.updates, b.priority) for b in batches] == [
        ("L1", 3, Priority.HIGH),
        ("L3", 1, Priority.HIGH),
    ]
    assert batches[1].body == l3[0]  # a single update goes out as it is
    assert [w.request_id for w in writes] == [1, 2]
    # The merged body brings a fresh replica to the writer's state.
    fresh = TierDoc("L1", client_id=99)
    assert fresh.apply_update(batches[0].body) == {"item-0", "item-1", "item-2"}
    assert fresh.state_vector() == l1_doc.state_vector()
    assert l3_doc.state_vector() != fresh.state_vector()


def test_flush_empties_the_outbox_and_resets_priority_and_due() -> None:
    outbox = Outbox(0.5)
    (u1, u2), _doc = updates("L2", 2)
    outbox.add((("L2", u1),), Priority.HIGH, 0.0, waiting(1, {"L2"}))
    outbox.flush()
    assert (outbox.due, len(outbox)) == (None, 0)
    assert outbox.flush() == ([], [])
    outbox.add((("L2", u2),), Priority.LOW, 3.0)
    assert outbox.due == 3.5
    batches, writes = outbox.flush()
    assert [(b.priority, b.updates) for b in batches] == [(Priority.LOW, 1)]
    assert writes == []


def test_a_waiting_write_without_updates_is_kept_for_the_next_flush() -> None:
    outbox = Outbox(0.5)
    outbox.add((), Priority.NORMAL, 0.0, waiting(1, set()))
    assert len(outbox) == 0
    batches, writes = outbox.flush()
    assert batches == [] and [w.request_id for w in writes] == [1]
