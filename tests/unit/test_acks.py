"""AckTracker: which writes wait for which peers' SyncAcks, until when."""

from __future__ import annotations

import pytest

from crdt.codecs import EmbeddingCodec
from crdt.hlc import Timestamp
from crdt.item import Limits as ItemLimits
from crdt.item import MemoryItem, build_item
from mesh.acks import AckTracker
from mesh.effects import Effect, WriteAcked, WriteFailed
from mesh.inputs import AckLevel

B1, B2, B3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


def item(item_id: str = "x") -> MemoryItem:
    ts = Timestamp(1_000, 0)
    return build_item(
        item_id=item_id,
        tier="L1",
        content="v",
        embedding=None,
        metadata=None,
        tags=(),
        citations=(),
        confidence=1.0,
        created=ts,
        updated=ts,
        author="a",
        codec=EmbeddingCodec.F32,
        limits=ItemLimits(),
    )


ITEMS = (item(),)


def request_ids(effects: list[Effect]) -> list[int]:
    return sorted(e.request_id for e in effects if isinstance(e, WriteAcked | WriteFailed))


def wait(
    tracker: AckTracker,
    request_id: int,
    level: AckLevel,
    batches: tuple[bytes, ...] = (B1,),
    required: tuple[str, ...] = (),
    deadline: float = 10.0,
) -> list[object]:
    return list(
        tracker.wait(
            request_id=request_id,
            level=level,
            batch_ids=batches,
            required=required,
            deadline=deadline,
            items=ITEMS,
        )
    )


@pytest.mark.parametrize("level", [AckLevel.PEER, AckLevel.HUB, AckLevel.ALL])
def test_a_write_without_batches_is_acked_at_once(level: AckLevel) -> None:
    tracker = AckTracker()
    assert wait(tracker, 1, level, batches=(), required=("b",)) == [WriteAcked(1, ITEMS)]
    assert len(tracker) == 0 and tracker.next_deadline() is None


def test_all_with_no_other_live_member_is_acked_at_once() -> None:
    tracker = AckTracker()
    assert wait(tracker, 1, AckLevel.ALL, required=()) == [WriteAcked(1, ITEMS)]
    assert len(tracker) == 0


def test_peer_is_acked_by_the_first_peer_and_only_once() -> None:
    tracker = AckTracker()
    assert wait(tracker, 1, AckLevel.PEER) == []
    assert len(tracker) == 1
    assert tracker.on_ack(B2, "b", None) == []  # another batch
    assert tracker.on_ack(B1, "c", None) == [WriteAcked(1, ITEMS, ("c",))]
    assert tracker.on_ack(B1, "b", None) == []
    assert len(tracker) == 0 and tracker.next_deadline() is None


def test_peer_needs_one_peer_that_committed_every_batch_of_the_write() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.PEER, batches=(B1, B2))
    assert tracker.on_ack(B1, "b", None) == []
    assert tracker.on_ack(B2, "c", None) == []  # b and c each hold only half of it
    assert tracker.on_ack(B2, "b", None) == [WriteAcked(1, ITEMS, ("b",))]


def test_all_waits_for_every_required_peer() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.ALL, required=("b", "c"))
    assert tracker.on_ack(B1, "b", None) == []
    assert tracker.on_ack(B1, "d", None) == []  # not required, does not complete it
    assert tracker.on_ack(B1, "c", None) == [WriteAcked(1, ITEMS, ("b", "c", "d"))]


def test_hub_needs_the_hub_itself() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.HUB)
    assert tracker.on_ack(B1, "b", None) == []
    assert tracker.on_ack(B1, "c", "hub") == []
    assert tracker.on_ack(B1, "hub", "hub") == [WriteAcked(1, ITEMS, ("b", "c", "hub"))]


def test_one_batch_can_complete_several_writes() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.PEER)
    wait(tracker, 2, AckLevel.PEER, batches=(B1, B2))
    wait(tracker, 3, AckLevel.ALL, required=("b",))
    assert request_ids(tracker.on_ack(B1, "b", None)) == [1, 3]
    assert len(tracker) == 1
    assert tracker.on_ack(B2, "b", None) == [WriteAcked(2, ITEMS, ("b",))]
    assert len(tracker) == 0


def test_unknown_batch_is_ignored() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.PEER)
    assert tracker.on_ack(B3, "b", None) == []
    assert len(tracker) == 1


def test_forget_peer_completes_all_writes_that_only_waited_for_it() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.ALL, required=("b", "c"))
    wait(tracker, 2, AckLevel.ALL, required=("b", "c", "d"))
    wait(tracker, 3, AckLevel.PEER, batches=(B2,))
    assert tracker.on_ack(B1, "b", None) == []
    assert tracker.forget_peer("c") == [WriteAcked(1, ITEMS, ("b",))]
    assert len(tracker) == 2  # 2 still waits for d; PEER never waits for a named peer
    assert tracker.forget_peer("zz") == []
    assert tracker.on_ack(B1, "d", None) == [WriteAcked(2, ITEMS, ("b", "d"))]


def test_forget_the_last_required_peer_acks_with_nobody_confirming() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.ALL, required=("c",))
    assert tracker.forget_peer("c") == [WriteAcked(1, ITEMS, ())]
    assert len(tracker) == 0


def test_expire_fails_overdue_writes_which_stay_applied() -> None:
    tracker = AckTracker()
    wait(tracker, 1, AckLevel.ALL, required=("b", "c"), deadline=5.0)
    wait(tracker, 2, AckLevel.PEER, batches=(B2,), deadline=7.0)
    assert tracker.next_deadline() == 5.0
    tracker.on_ack(B1, "b", None)
    assert tracker.expire(4.99) == []
    expired = tracker.expire(5.0)
    assert len(expired) == 1 and isinstance(expired[0], WriteFailed)
    assert (expired[0].request_id, expired[0].applied) == (1, True)
    assert "all" in expired[0].reason and "1 peer(s) confirmed" in expired[0].reason
    assert tracker.next_deadline() == 7.0
    assert tracker.on_ack(B1, "c", None) == []  # too late: already failed
    assert request_ids(tracker.expire(100.0)) == [2]
    assert len(tracker) == 0 and tracker.next_deadline() is None
