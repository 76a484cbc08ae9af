"""The codec bounds the objects a payload may declare, so a small frame cannot stall a node.

A 28 KiB compressed frame inflates to 15 MiB of nested empty MessagePack arrays; unpacked,
that is 16 million Python lists (1.15 GB, 6 s) before any field check could refuse it.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mesh import codec
from mesh.codec import MAX_PAYLOAD_OBJECTS, U16, MessageError, decode_message, encode_message
from mesh.frames import (
    DEFAULT_LIMITS,
    HEADER,
    MAGIC,
    VERSION,
    Flags,
    FrameError,
    Limits,
    MsgType,
    decode_frame,
)
from mesh.messages import (
    MemoryResponse,
    MemorySync,
    Message,
    StatsPublish,
    StatsReport,
    SyncKind,
    TierStats,
)

OUTER = 9999  # arrays in the bomb's payload array, after the tag
EMPTY = {"array": b"\x90", "map": b"\x80", "str": b"\xa0", "nil": b"\xc0"}


def _array(n: int) -> bytes:
    """Return a MessagePack array header for `n` elements."""
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 1 << 16 else (b"\xdd" + n.to_bytes(4, "big"))


def _compressed_frame(msg_type: MsgType, payload: bytes) -> bytes:
    """Return a frame carrying `payload` compressed, bypassing the encoder's checks."""
    packed = zlib.compress(payload, 9)
    flags = int(Flags.COMPRESSED)
    return HEADER.pack(MAGIC, VERSION, 1, int(msg_type), flags, 0, len(packed), 0, 0) + packed


def _bomb(element: bytes, inner: int = 1600, msg_type: MsgType = MsgType.HELLO) -> bytes:
    """Return `[tag, 9999 x [inner x element]]`, compressed (the reported frame)."""
    payload = _array(OUTER + 1) + b"\xcd" + int(msg_type).to_bytes(2, "big")
    payload += (_array(inner) + element * inner) * OUTER
    return _compressed_frame(msg_type, payload)


def _objects(value: Any) -> int:
    """Return how many MessagePack objects `value` packs to (a map counts keys and values)."""
    if isinstance(value, msgpack.ExtType):
        return 1
    if isinstance(value, list | tuple):
        return 1 + sum(_objects(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_objects(k) + _objects(v) for k, v in value.items())
    return 1


class Unpacked(BaseException):
    """Raised (past the codec's `except Exception`) if a payload reaches the unpacker."""


@pytest.fixture
def no_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the codec gets as far as building objects from the payload."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise Unpacked

    monkeypatch.setattr(codec.msgpack, "unpackb", refuse)


@pytest.mark.usefixtures("no_unpacking")
@pytest.mark.parametrize("kind", sorted(EMPTY))
def test_a_bomb_of_tiny_objects_is_refused_before_unpacking(kind: str) -> None:
    data = _bomb(EMPTY[kind])
    payload = decode_frame(data).payload
    assert len(data) < DEFAULT_LIMITS.max_frame_bytes
    assert len(payload) > 15 * 2**20  # 16 million objects: seconds and a GB to unpack
    with pytest.raises(MessageError, match=f"over the cap of {MAX_PAYLOAD_OBJECTS} objects"):
        decode_message(data)


@pytest.mark.usefixtures("no_unpacking")
@pytest.mark.parametrize("msg_type", [MsgType.MEMORY_SYNC, MsgType.MEMORY_RESPONSE])
def test_the_bomb_is_refused_as_any_message_type(msg_type: MsgType) -> None:
    with pytest.raises(FrameError, match="objects"):
        decode_message(_bomb(EMPTY["array"], msg_type=msg_type))


@pytest.mark.usefixtures("no_unpacking")
def test_arrays_left_open_are_refused_before_unpacking() -> None:
    # Each level opens a 10,000-slot array, fills all but one slot, then opens the next:
    # no array closes until the end, so nothing counted at a close would catch it.
    level = b"\xdc\x27\x10" + b"\xc0" * 9999
    payload = b"\x92\xcd\x01\x01" + level * 1000 + b"\x90"
    with pytest.raises(MessageError, match="over the cap"):
        decode_message(_compressed_frame(MsgType.HELLO, payload))


@pytest.mark.usefixtures("no_unpacking")
def test_counts_past_the_end_of_the_payload_are_refused_before_unpacking() -> None:
    body = msgpack.packb(bytes(MAX_PAYLOAD_OBJECTS), use_bin_type=True)
    payload = b"\x93\xcd\x01\x01" + body + b"\xdc\xff\xff"  # 65,535 elements, no bytes
    with pytest.raises(MessageError, match="more objects than it has bytes"):
        decode_message(_compressed_frame(MsgType.HELLO, payload))


def test_a_payload_may_declare_exactly_the_cap() -> None:
    payload = _array(99) + b"\xc0" * 99  # 100 objects with the array
    assert codec._count_objects(payload, 100) == 100
    with pytest.raises(MessageError, match="over the cap of 99 objects"):
        codec._count_objects(payload, 99)


VALUES: list[Any] = [
    [0, 127, -1, -32, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -33, -(2**63)],
    [None, True, False, 1.5, "", "x" * 31, "x" * 32, "x" * 256, "x" * 65536],
    [b"", b"y" * 256, b"y" * 65536, [], [[], [[]]], list(range(20)), list(range(70000))],
    [{}, {"a": 1}, {str(i): [i] for i in range(20)}, {str(i): i for i in range(70000)}],
    [msgpack.ExtType(5, b"z" * n) for n in (1, 2, 4, 8, 16, 3, 256, 65536)],
]


@pytest.mark.parametrize("value", VALUES, ids=["ints", "scalars", "bins", "maps", "exts"])
def test_the_count_agrees_with_the_unpacker(value: Any) -> None:
    for single in (False, True):
        packed = msgpack.packb(value, use_bin_type=True, use_single_float=single)
        assert codec._count_objects(packed, 10**9) == _objects(value)


@given(st.binary(max_size=512))
@example(b"\x92\xd9")  # truncated headers
@example(b"\x91\xdd\x00")
@example(b"\xc1\xc1")
@example(b"\x9f" * 40)
def test_counting_random_bytes_raises_only_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        codec._count_objects(data, 64)


def _roundtrip(msg: Message, limits: Limits = DEFAULT_LIMITS) -> int:
    """Encode and decode `msg`, whose payload is long enough to be counted; return the count."""
    data = encode_message(msg, limits=limits)
    payload = decode_frame(data, limits).payload
    assert len(payload) > MAX_PAYLOAD_OBJECTS
    count = codec._count_objects(payload, MAX_PAYLOAD_OBJECTS)
    assert count == _objects(msgpack.unpackb(payload))
    assert decode_message(data, limits)[1] == msg
    return count


def test_a_large_sync_message_round_trips() -> None:
    text = json.dumps([{"id": f"item-{i}", "text": "memory " * 20} for i in range(6000)])
    body = text.encode()[: 2**20]
    _roundtrip(MemorySync(bytes(16), "node-a", "*", "L1", SyncKind.UPDATE, body, 1000))


def test_a_full_response_round_trips() -> None:
    records = tuple(
        (f"item-{i}", json.dumps({"id": i, "text": "memory " * 8})) for i in range(5000)
    )
    hits = tuple((f"item-{i}", i / 5000) for i in range(5000))
    _roundtrip(MemoryResponse(1, True, records, hits))


def test_the_largest_response_any_limits_allow_round_trips() -> None:
    limits = Limits(max_batch_count=U16)  # batch_count is a u16 in the header
    records = tuple((f"i{i}", "{}") for i in range(U16 // 2))
    hits = tuple((f"i{i}", 0.5) for i in range(U16 - U16 // 2))
    assert _roundtrip(MemoryResponse(1, True, records, hits), limits) == codec._MAX_VALID_OBJECTS


def test_the_largest_stats_publish_round_trips() -> None:
    conflicts = tuple((f"resolution-{k}", k) for k in range(codec.MAX_CONFLICT_KINDS))
    tiers = tuple(TierStats(t, 1.0, 2.0, 3.0, 4, 5, 6, conflicts) for t in codec.KNOWN_TIERS)
    reports = tuple(StatsReport(f"node-{i:04d}", tiers) for i in range(codec.MAX_STATS_NODES))
    assert _roundtrip(StatsPublish("hub", 1, reports)) == 178_181
