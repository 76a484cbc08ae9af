"""Property tests for the codec: round trips, and only FrameError on any damaged or random input."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mesh.codec import (
    KNOWN_TIERS,
    MAX_GOSSIP,
    MAX_NODE_ID,
    MessageError,
    decode_message,
    encode_message,
)
from mesh.frames import (
    HEADER,
    HEADER_SIZE,
    Flags,
    FrameError,
    MsgType,
    Priority,
    decode_frame,
    encode_frame,
)
from mesh.messages import (
    Chunk,
    Digest,
    ErrorReport,
    Hello,
    MemberState,
    MemberUpdate,
    MemoryQuery,
    MemoryResponse,
    MemorySync,
    Message,
    Ping,
    PingAck,
    PingReq,
    Resume,
    SyncAck,
    SyncKind,
)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
ID16 = st.binary(min_size=16, max_size=16)
NODE = st.text(min_size=1, max_size=MAX_NODE_ID)
ITEM = st.text(min_size=1, max_size=128)
TIER = st.sampled_from(KNOWN_TIERS)
TIERS = st.lists(TIER, unique=True, max_size=3).map(tuple)
GOSSIP = st.lists(
    st.builds(MemberUpdate, NODE, st.sampled_from(MemberState), U64, st.text(max_size=256)),
    max_size=MAX_GOSSIP,
).map(tuple)


@st.composite
def chunks(draw: st.DrawFn, piece_len: int) -> Chunk | None:
    """Draw no chunk, or a chunk position consistent with a piece of `piece_len` bytes."""
    if draw(st.booleans()):
        return None
    total_bytes = draw(st.integers(max(piece_len, 1), 2**40))
    total = draw(st.integers(1, min(total_bytes, 2**32 - 1)))
    return Chunk(draw(ID16), draw(st.integers(0, total - 1)), total, total_bytes)


@st.composite
def syncs(draw: st.DrawFn, body: st.SearchStrategy[bytes] | None = None) -> MemorySync:
    """Draw a valid MemorySync."""
    data = draw(body if body is not None else st.binary(max_size=2048))
    target = draw(st.one_of(st.just("*"), NODE))
    kind = draw(st.sampled_from(SyncKind))
    return MemorySync(
        draw(ID16), draw(NODE), target, draw(TIER), kind, data, draw(U32), draw(chunks(len(data)))
    )


FINITE = st.floats(allow_nan=False, allow_infinity=False)
MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, NODE, U64, TIERS, st.text(max_size=64), st.booleans(), st.text(max_size=64)),
    st.builds(Ping, U64, GOSSIP),
    st.builds(PingReq, U64, NODE, GOSSIP),
    st.builds(PingAck, U64, NODE, GOSSIP),
    st.builds(
        Digest,
        st.lists(
            st.tuples(TIER, st.binary(min_size=32, max_size=32)),
            max_size=3,
            unique_by=lambda r: r[0],
        ).map(tuple),
        st.booleans(),
    ),
    syncs(),
    st.builds(SyncAck, ID16, NODE),
    st.builds(Resume, ID16, U32),
    st.builds(
        MemoryQuery,
        U64,
        TIER,
        st.lists(st.binary(min_size=4, max_size=4), max_size=64).map(b"".join),
        st.integers(0, 1000),
        st.lists(ITEM, max_size=20).map(tuple),
    ),
    st.builds(
        MemoryResponse,
        U64,
        st.booleans(),
        st.lists(st.tuples(ITEM, st.text(max_size=300)), max_size=10).map(tuple),
        st.lists(st.tuples(ITEM, FINITE), max_size=10).map(tuple),
        st.text(max_size=1024),
    ),
    st.builds(
        ErrorReport,
        st.integers(0, 0xFFFF),
        st.text(max_size=1024),
        st.dictionaries(st.text(max_size=64), st.text(max_size=200), max_size=32),
    ),
)
HEADER_OPTS = st.tuples(
    st.sampled_from(Priority),
    U64,
    st.sampled_from([Flags.NONE, Flags.BATCHED | Flags.REQUIRES_ACK, Flags.RELAYED]),
)


def decodes_or_frame_error(data: bytes) -> Message | None:
    """Return the decoded message, or None if decoding raised FrameError (anything else fails)."""
    try:
        return decode_message(data)[1]
    except FrameError:
        return None


@given(MESSAGES, HEADER_OPTS)
def test_round_trip(msg: Message, opts: tuple[Priority, int, int]) -> None:
    priority, ts, flags = opts
    frame, back = decode_message(
        encode_message(msg, priority=priority, timestamp_ns=ts, flags=flags)
    )
    assert back == msg
    assert (frame.priority, frame.timestamp_ns) == (priority, ts)
    assert frame.flags & ~(Flags.COMPRESSED | Flags.CHUNKED) == flags


@given(syncs(st.text(alphabet='ab{}:,"', min_size=1024, max_size=20_000).map(str.encode)))
def test_compressible_sync_bodies_round_trip_compressed(msg: MemorySync) -> None:
    data = encode_message(msg)
    frame, back = decode_message(data)
    assert back == msg
    assert frame.flags & Flags.COMPRESSED
    assert len(data) < len(msg.body)


@given(syncs(st.binary(min_size=1, max_size=1000)), st.data())
def test_altered_body_is_a_checksum_mismatch(msg: MemorySync, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    assume(not HEADER.unpack_from(frame)[4] & Flags.COMPRESSED)  # the body is the frame's tail
    at = len(frame) - len(msg.body) + data.draw(st.integers(0, len(msg.body) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    try:
        decode_message(bytes(frame))
    except MessageError as exc:
        assert "checksum mismatch" in str(exc)
    else:
        raise AssertionError("an altered body was accepted")


@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    decodes_or_frame_error(data)


@given(
    st.sampled_from(MsgType), st.integers(0, 0xFFFF), st.integers(0, 40), st.binary(max_size=512)
)
def test_arbitrary_payloads_under_a_valid_header(
    msg_type: MsgType, flags: int, batch: int, payload: bytes
) -> None:
    header = HEADER.pack(0x4D534857, 2, 1, int(msg_type), flags, batch, len(payload), 0, 0)
    decodes_or_frame_error(header + payload)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | FINITE
    | st.text(max_size=70)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(st.sampled_from(list(MsgType)), st.lists(MSGPACK_VALUES, max_size=10), st.integers(0, 3))
def test_arbitrary_msgpack_arrays_with_the_right_tag(
    msg_type: MsgType, fields: list[Any], batch: int
) -> None:
    payload = msgpack.packb([int(msg_type), *fields], use_bin_type=True)
    header = HEADER.pack(0x4D534857, 2, 1, int(msg_type), 0, batch, len(payload), 0, 0)
    decodes_or_frame_error(header + payload)


MUTATIONS = st.sampled_from(["flip", "truncate", "extend", "header", "splice"])


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, MUTATIONS, st.data())
def test_damaged_frames(msg: Message, how: str, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            bit = data.draw(st.integers(0, len(frame) * 8 - 1))
            frame[bit // 8] ^= 1 << (bit % 8)
    elif how == "truncate":
        del frame[data.draw(st.integers(0, len(frame) - 1)) :]
    elif how == "extend":
        frame += data.draw(st.binary(min_size=1, max_size=64))
        if data.draw(st.booleans()):  # keep payload_len consistent so the payload is parsed
            struct.pack_into(">Q", frame, 14, len(frame) - HEADER_SIZE)
    elif how == "header":
        offset, fmt = data.draw(
            st.sampled_from(
                [
                    (4, ">H"),
                    (6, ">H"),
                    (8, ">H"),
                    (10, ">H"),
                    (12, ">H"),
                    (14, ">Q"),
                    (22, ">Q"),
                    (30, ">H"),
                ]
            )
        )
        width = struct.calcsize(fmt)
        struct.pack_into(fmt, frame, offset, data.draw(st.integers(0, 2 ** (8 * width) - 1)))
    else:
        start = data.draw(st.integers(HEADER_SIZE, len(frame)))
        frame[start:start] = data.draw(st.binary(max_size=16))
        struct.pack_into(">Q", frame, 14, len(frame) - HEADER_SIZE)
    back = decodes_or_frame_error(bytes(frame))
    if how in ("truncate", "extend"):
        assert back is None, "a truncated or extended frame was accepted"


def _replace_somewhere(value: Any, data: st.DataObject, top: bool = False) -> Any:
    """Return `value` with one element, at a drawn depth inside its arrays, replaced at random."""
    if not isinstance(value, list) or not value or (not top and data.draw(st.booleans())):
        return data.draw(MSGPACK_VALUES)
    at = data.draw(st.integers(0, len(value) - 1))
    return [*value[:at], _replace_somewhere(value[at], data), *value[at + 1 :]]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, st.data())
def test_one_field_replaced_by_any_value(msg: Message, data: st.DataObject) -> None:
    frame = decode_frame(encode_message(msg))
    fields = msgpack.unpackb(frame.payload)
    damaged = [fields[0], *_replace_somewhere(fields[1:], data, top=True)]
    payload = msgpack.packb(damaged, use_bin_type=True)
    decodes_or_frame_error(encode_frame(replace(frame, payload=payload)))
