"""Unit tests for splitting bodies into chunks and reassembling them within a memory bound."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.chunking import FRAME_OVERHEAD, Reassembler, max_chunk_for, split_body
from mesh.codec import MAX_NODE_ID, MessageError, decode_message, encode_message
from mesh.frames import DEFAULT_LIMITS, Limits
from mesh.messages import Chunk, MemorySync, SyncKind

TID = bytes(range(16))
TID2 = bytes(range(1, 17))


def pieces(body: bytes, max_chunk: int, tid: bytes = TID) -> list[tuple[Chunk, bytes]]:
    """Return split_body's pieces."""
    return split_body(body, max_chunk=max_chunk, transfer_id=tid)


def feed(r: Reassembler, parts: list[tuple[Chunk, bytes]], peer: str = "p") -> list[bytes]:
    """Add every piece; return the bodies completed."""
    done = [r.add(peer, chunk, piece) for chunk, piece in parts]
    return [body for body in done if body is not None]


def test_split_covers_the_body_in_order() -> None:
    body = os.urandom(1000)
    parts = pieces(body, 300)
    assert [c.index for c, _ in parts] == [0, 1, 2, 3]
    assert {(c.total, c.total_bytes, c.transfer_id) for c, _ in parts} == {(4, 1000, TID)}
    assert [len(p) for _, p in parts] == [300, 300, 300, 100]
    assert b"".join(p for _, p in parts) == body


@pytest.mark.parametrize(("size", "count"), [(0, 1), (1, 1), (299, 1), (300, 1), (301, 2)])
def test_split_piece_counts(size: int, count: int) -> None:
    assert len(pieces(bytes(size), 300)) == count


def test_split_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        split_body(b"x", max_chunk=0, transfer_id=TID)
    with pytest.raises(ValueError):
        split_body(b"x", max_chunk=10, transfer_id=b"short")


def test_max_chunk_keeps_a_worst_case_frame_under_the_cap() -> None:
    size = max_chunk_for(DEFAULT_LIMITS)
    assert size == DEFAULT_LIMITS.max_frame_bytes - FRAME_OVERHEAD
    widest = "\U0001f600" * MAX_NODE_ID  # 64 characters of 4 UTF-8 bytes each
    chunk = Chunk(TID, 2**32 - 2, 2**32 - 1, 2**64 - 1)
    msg = MemorySync(TID, widest, widest, "L1", SyncKind.UPDATE, os.urandom(size), 2**32 - 1, chunk)
    frame = encode_message(msg)
    assert len(frame) <= DEFAULT_LIMITS.max_frame_bytes
    assert decode_message(frame)[1] == msg
    with pytest.raises(ValueError):
        max_chunk_for(Limits(max_frame_bytes=FRAME_OVERHEAD))


@given(st.binary(max_size=5000), st.integers(1, 700), st.randoms(use_true_random=False))
def test_round_trip_out_of_order_with_duplicates(
    body: bytes, max_chunk: int, rng: random.Random
) -> None:
    parts = pieces(body, max_chunk)
    order = rng.sample(parts, k=len(parts))
    r = Reassembler(max_bytes=10_000)
    for i, (chunk, piece) in enumerate(order[:-1]):
        assert r.add("p", chunk, piece) is None
        assert r.add("p", *rng.choice(order[: i + 1])) is None  # a duplicate
    assert r.add("p", *order[-1]) == body
    assert len(r) == 0


def test_completion_forgets_the_transfer() -> None:
    r = Reassembler()
    body = os.urandom(1000)
    assert feed(r, pieces(body, 100)) == [body]
    assert len(r) == 0
    assert r.buffered_bytes == 0
    assert r.progress("p", TID) == (0, 0)


def test_duplicates_are_ignored() -> None:
    r = Reassembler()
    parts = pieces(bytes(range(250)), 100)
    assert r.add("p", *parts[0]) is None
    assert r.add("p", *parts[0]) is None
    assert r.progress("p", TID) == (100, 250)
    assert r.buffered_bytes == 100
    assert r.add("p", *parts[2]) is None
    assert r.add("p", *parts[1]) == bytes(range(250))


def test_next_missing_and_progress_out_of_order() -> None:
    r = Reassembler()
    parts = pieces(os.urandom(1000), 100)
    assert r.next_missing("p", TID) == 0
    for i in (0, 1, 3, 4):
        r.add("p", *parts[i])
    assert r.next_missing("p", TID) == 2
    assert r.progress("p", TID) == (400, 1000)
    r.add("p", *parts[2])
    assert r.next_missing("p", TID) == 5


def test_resume_sends_only_what_is_missing() -> None:
    body = os.urandom(1000)
    parts = pieces(body, 100)
    r = Reassembler()
    assert feed(r, parts[:4]) == []  # the link drops here
    resume_at = r.next_missing("p", TID)
    assert resume_at == 4
    assert feed(r, split_body(body, max_chunk=100, transfer_id=TID)[resume_at:]) == [body]


def test_transfers_are_keyed_by_peer_and_transfer_id() -> None:
    r = Reassembler()
    a, b = os.urandom(300), os.urandom(300)
    pa, pb = pieces(a, 100), pieces(b, 100, TID2)
    pc = pieces(b, 100)  # same transfer id as `a`, other peer
    assert r.add("p", *pa[0]) is None
    assert r.add("p", *pb[0]) is None
    assert r.add("q", *pc[0]) is None
    assert len(r) == 3
    assert feed(r, pa[1:]) == [a]
    assert feed(r, pc[1:], "q") == [b]
    assert feed(r, pb[1:]) == [b]


def test_drop_peer() -> None:
    r = Reassembler()
    r.add("p", *pieces(bytes(300), 100)[0])
    r.add("p", *pieces(bytes(300), 100, TID2)[0])
    r.add("q", *pieces(bytes(300), 100)[0])
    r.drop_peer("p")
    assert len(r) == 1
    assert r.buffered_bytes == 100
    assert r.progress("p", TID) == (0, 0)
    assert r.progress("q", TID) == (100, 300)


def test_memory_bound_evicts_the_least_recently_progressing() -> None:
    r = Reassembler(max_bytes=250)
    old, new = pieces(bytes(200), 50), pieces(bytes(200), 50, TID2)
    r.add("p", *old[0])
    r.add("p", *new[0])
    r.add("p", *old[1])
    r.add("p", *new[1])
    r.add("p", *new[2])  # 250 buffered: at the bound, nothing evicted
    assert (r.buffered_bytes, r.evictions) == (250, 0)
    r.add("p", *old[2])  # 300 > 250: `old` just progressed, so `new` is the stalest
    assert r.evictions == 1
    assert r.progress("p", TID2) == (0, 0)
    assert r.progress("p", TID) == (150, 200)
    assert r.buffered_bytes == 150


def test_transfer_count_bound_evicts_too() -> None:
    r = Reassembler(max_transfers=2)
    ids = [bytes([i]) * 16 for i in range(3)]
    for tid in ids:
        r.add("p", *pieces(bytes(20), 10, tid)[0])
    assert len(r) == 2
    assert r.evictions == 1
    assert r.progress("p", ids[0]) == (0, 0)


def test_a_transfer_larger_than_the_bound_is_refused() -> None:
    r = Reassembler(max_bytes=1000)
    with pytest.raises(MessageError, match="bound"):
        r.add("p", *pieces(bytes(1001), 100)[0])
    assert feed(r, pieces(bytes(1000), 100)) == [bytes(1000)]


def test_single_piece_bodies_pass_straight_through() -> None:
    r = Reassembler()
    assert r.add("p", Chunk(TID, 0, 1, 0), b"") == b""
    assert r.add("p", Chunk(TID, 0, 1, 3), b"abc") == b"abc"
    assert len(r) == 0
    with pytest.raises(MessageError):
        r.add("p", Chunk(TID, 0, 1, 4), b"abc")


def test_pieces_disagreeing_with_declared_totals_are_refused() -> None:
    r = Reassembler()
    r.add("p", Chunk(TID, 0, 3, 30), b"x" * 10)
    with pytest.raises(MessageError, match="disagree"):
        r.add("p", Chunk(TID, 1, 4, 30), b"x" * 10)  # other total
    assert len(r) == 0  # the inconsistent transfer is dropped
    r.add("p", Chunk(TID, 0, 3, 30), b"x" * 10)
    with pytest.raises(MessageError, match="disagree"):
        r.add("p", Chunk(TID, 1, 3, 31), b"x" * 10)  # other total_bytes


@pytest.mark.parametrize(
    "steps",
    [
        [(0, 25), (1, 10)],  # 35 > 30 declared bytes
        [(0, 10), (1, 10), (2, 5)],  # last piece leaves 5 bytes missing
        [(0, 15), (2, 15)],  # all bytes in, piece 1 still to come
        [(2, 29)],  # leaves 1 byte for 2 pieces
    ],
)
def test_piece_sizes_must_add_up(steps: list[tuple[int, int]]) -> None:
    r = Reassembler()
    with pytest.raises(MessageError):
        for index, size in steps:
            r.add("p", Chunk(TID, index, 3, 30), b"x" * size)
    assert len(r) == 0
    assert r.buffered_bytes == 0


@pytest.mark.parametrize(
    ("chunk", "piece"),
    [
        (Chunk(b"short", 0, 2, 10), b"x"),
        (Chunk(TID, 2, 2, 10), b"x"),
        (Chunk(TID, 0, 0, 10), b"x"),
        (Chunk(TID, -1, 2, 10), b"x"),
        (Chunk(TID, 0, 2, 10), b""),  # empty piece of a multi-piece transfer
        (Chunk(TID, 0, 2, 10), b"x" * 11),
        (Chunk(TID, 0, 11, 10), b"x"),
        (Chunk(TID, 0, 2, -1), b"x"),
    ],
)
def test_malformed_chunks_are_refused(chunk: Chunk, piece: bytes) -> None:
    with pytest.raises(MessageError):
        Reassembler().add("p", chunk, piece)


def test_constructor_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        Reassembler(max_bytes=0)
    with pytest.raises(ValueError):
        Reassembler(max_transfers=0)


def test_chunked_frames_end_to_end() -> None:
    body = os.urandom(3 * 1024)
    frames = [
        encode_message(MemorySync(TID, "a", "b", "L2", SyncKind.STEP2, piece, 0, chunk))
        for chunk, piece in split_body(body, max_chunk=1024, transfer_id=TID)
    ]
    r = Reassembler()
    out = []
    for data in reversed(frames):
        _, msg = decode_message(data)
        assert isinstance(msg, MemorySync) and msg.chunk is not None
        out.append(r.add("a", msg.chunk, msg.body))
    assert out[-1] == body and out[:-1] == [None, None]
