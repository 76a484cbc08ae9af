"""Unit tests for the message codec: layouts, validation, checksums, and refusal of bad input."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgpack
import pytest

from mesh.codec import (
    MAX_GOSSIP,
    MAX_NODE_ID,
    MessageError,
    batch_count_of,
    decode_message,
    encode_message,
)
from mesh.frames import (
    HEADER,
    HEADER_SIZE,
    Flags,
    Frame,
    FrameError,
    Limits,
    MsgType,
    Priority,
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

BID = bytes(range(16))
TID = bytes(range(16, 32))
GOSSIP = (
    MemberUpdate("node-a", MemberState.ALIVE, 3, "10.0.0.1:9000"),
    MemberUpdate("node-b", MemberState.DEAD, 2**63),
)

EXAMPLES: list[tuple[Message, MsgType]] = [
    (Hello("a1b2c3d4e5f60718", 7, ("L1", "L3"), "edge", False, "memmesh/9"), MsgType.HELLO),
    (Ping(1, GOSSIP), MsgType.PING),
    (PingReq(2**64 - 1, "target", GOSSIP), MsgType.PING_REQ),
    (PingAck(5, "target"), MsgType.PING_ACK),
    (Digest((("L1", bytes(32)), ("L2", b"\xff" * 32)), reply=True), MsgType.DIGEST),
    (MemorySync(BID, "src", "*", "L2", SyncKind.STEP1, b"\x00\x01"), MsgType.MEMORY_SYNC),
    (
        MemorySync(BID, "src", "dst", "L3", SyncKind.UPDATE, b"abc", 4, Chunk(TID, 1, 3, 9)),
        MsgType.MEMORY_SYNC,
    ),
    (SyncAck(BID, "node"), MsgType.SYNC_ACK),
    (Resume(TID, 12), MsgType.RESUME),
    (MemoryQuery(9, "L3", b"\x00\x00\x80\x3f" * 8, 5, ("id-1", "id-2")), MsgType.MEMORY_QUERY),
    (
        MemoryResponse(9, True, (("id-1", '{"content": "x"}'),), (("id-1", 0.5), ("id-2", -1.0))),
        MsgType.MEMORY_RESPONSE,
    ),
    (MemoryResponse(10, False, error="no such tier"), MsgType.MEMORY_RESPONSE),
    (ErrorReport(400, "bad frame", {"peer": "x", "why": "checksum"}), MsgType.ERROR),
]


def frame_of(msg_type: MsgType, fields: list[Any], **kw: Any) -> bytes:
    """Return a frame whose payload is `[msg_type, *fields]`, built without the codec."""
    payload = msgpack.packb([int(msg_type), *fields], use_bin_type=True)
    return encode_frame(Frame(msg_type, payload, **kw))


def sync_fields(data: bytes = b"body", **over: Any) -> list[Any]:
    """Return valid MEMORY_SYNC fields (after the tag), with overrides by name."""
    fields: dict[str, Any] = {
        "batch_id": BID,
        "source": "src",
        "target": "*",
        "tier": "L1",
        "kind": 2,
        "items": 1,
        "checksum": hashlib.sha256(data).digest(),
        "chunk": None,
        "body": data,
    }
    fields.update(over)
    return list(fields.values())


@pytest.mark.parametrize(("msg", "msg_type"), EXAMPLES)
def test_round_trip(msg: Message, msg_type: MsgType) -> None:
    data = encode_message(msg, priority=Priority.HIGH, timestamp_ns=42)
    frame, back = decode_message(data)
    assert back == msg
    assert type(back) is type(msg)
    assert frame.msg_type is msg_type
    assert frame.priority is Priority.HIGH
    assert frame.timestamp_ns == 42
    assert frame.batch_count == batch_count_of(msg)


def test_batch_counts() -> None:
    assert batch_count_of(Ping(1, GOSSIP)) == 2
    assert batch_count_of(EXAMPLES[5][0]) == 1
    assert batch_count_of(MemoryResponse(1, True, (("a", "{}"),), (("a", 1.0),))) == 2
    assert batch_count_of(SyncAck(BID, "n")) == 0


def test_chunked_flag_follows_the_chunk() -> None:
    plain, chunked = EXAMPLES[5][0], EXAMPLES[6][0]
    frame, _ = decode_message(encode_message(plain, flags=Flags.CHUNKED | Flags.REQUIRES_ACK))
    assert frame.flags == Flags.REQUIRES_ACK
    frame, _ = decode_message(encode_message(chunked))
    assert frame.flags == Flags.CHUNKED


def test_payload_is_an_array_tagged_with_the_msg_type() -> None:
    data = encode_message(SyncAck(BID, "node"))
    assert msgpack.unpackb(data[HEADER_SIZE:]) == [int(MsgType.SYNC_ACK), BID, "node"]


def test_compression_round_trip() -> None:
    msg = MemorySync(BID, "s", "*", "L1", SyncKind.STEP2, b'{"k": "value"}' * 2000, 2000)
    data = encode_message(msg)
    assert len(data) < len(msg.body) // 4
    frame, back = decode_message(data)
    assert frame.flags & Flags.COMPRESSED
    assert back == msg


def test_checksum_mismatch_when_the_body_is_altered() -> None:
    body = os.urandom(200)
    data = bytearray(encode_message(MemorySync(BID, "s", "*", "L1", SyncKind.UPDATE, body)))
    assert data.endswith(body)
    data[-7] ^= 0x10
    with pytest.raises(MessageError, match="checksum mismatch"):
        decode_message(bytes(data))


def test_checksum_field_is_verified() -> None:
    bad = sync_fields(checksum=hashlib.sha256(b"other").digest())
    with pytest.raises(MessageError, match="checksum mismatch"):
        decode_message(frame_of(MsgType.MEMORY_SYNC, bad, batch_count=1))
    decode_message(frame_of(MsgType.MEMORY_SYNC, sync_fields(), batch_count=1))


def test_header_payload_type_mismatch() -> None:
    digest = encode_message(Digest((("L1", bytes(32)),)))
    tampered = bytearray(digest)
    tampered[8:10] = int(MsgType.PING).to_bytes(2, "big")
    with pytest.raises(MessageError, match="does not match"):
        decode_message(bytes(tampered))
    # Same shape (PING_REQ and PING_ACK): the tag still tells them apart.
    ack = bytearray(encode_message(PingAck(1, "t")))
    ack[8:10] = int(MsgType.PING_REQ).to_bytes(2, "big")
    with pytest.raises(MessageError, match="does not match"):
        decode_message(bytes(ack))
    # A Digest's fields under a PING tag and header.
    with pytest.raises(MessageError):
        decode_message(frame_of(MsgType.PING, [[["L1", bytes(32)]], False]))


def test_reserved_msg_types_are_refused() -> None:
    for msg_type in (MsgType.MEMORY_STORE,):
        with pytest.raises(MessageError, match="reserved"):
            decode_message(frame_of(msg_type, []))


def test_envelope_flags_are_refused_both_ways() -> None:
    with pytest.raises(MessageError):
        encode_message(Ping(1), flags=Flags.SIGNED)
    with pytest.raises(MessageError):
        decode_message(frame_of(MsgType.PING, [1, []], flags=Flags.ENCRYPTED))


def test_header_consistency_checks() -> None:
    with pytest.raises(MessageError, match="batch_count"):
        decode_message(frame_of(MsgType.PING, [1, []], batch_count=1))
    with pytest.raises(MessageError, match="CHUNKED"):
        decode_message(frame_of(MsgType.PING, [1, []], flags=Flags.CHUNKED))
    with pytest.raises(MessageError, match="CHUNKED"):
        decode_message(frame_of(MsgType.MEMORY_SYNC, sync_fields(), batch_count=1, flags=32))
    chunked = sync_fields(chunk=[TID, 0, 2, 8])
    with pytest.raises(MessageError, match="CHUNKED"):
        decode_message(frame_of(MsgType.MEMORY_SYNC, chunked, batch_count=1))


BAD_PAYLOADS: list[tuple[MsgType, list[Any]]] = [
    (MsgType.PING, []),  # arity
    (MsgType.PING, [1, [], "extra"]),
    (MsgType.PING, [-1, []]),  # range
    (MsgType.PING, [True, []]),  # bool is not int
    (MsgType.PING, [1.0, []]),
    (MsgType.PING, [1, [["n", 4, 1, ""]]]),  # unknown member state
    (MsgType.PING, [1, [["n", 0, 1]]]),  # short gossip entry
    (MsgType.PING, [1, [["", 0, 1, ""]]]),  # empty node id
    (MsgType.PING, [1, [["n" * (MAX_NODE_ID + 1), 0, 1, ""]]]),
    (MsgType.PING, [1, [["n", 0, 1, ""]] * (MAX_GOSSIP + 1)]),
    (MsgType.PING_REQ, [1, b"target", []]),  # bytes for str
    (MsgType.HELLO, ["n", 1, ["L4"], "p", True, "s"]),  # unknown tier
    (MsgType.HELLO, ["n", 1, ["L1", "L1"], "p", True, "s"]),  # duplicate tier
    (MsgType.HELLO, ["n", 1, ["L1"], "p", 1, "s"]),  # int for bool
    (MsgType.DIGEST, [[["L1", bytes(31)]], False]),  # root size
    (MsgType.DIGEST, [[["L1", bytes(32)], ["L1", bytes(32)]], False]),
    (MsgType.SYNC_ACK, [bytes(15), "n"]),  # batch id size
    (MsgType.SYNC_ACK, [bytes(17), "n"]),
    (MsgType.RESUME, [TID, 2**32]),
    (MsgType.MEMORY_QUERY, [1, "L1", bytes(5), 3, []]),  # vector not float32s
    (MsgType.MEMORY_QUERY, [1, "L1", b"", 3, [""]]),  # empty item id
    (MsgType.MEMORY_QUERY, [1, "L1", b"", 1001, []]),  # k
    (MsgType.MEMORY_RESPONSE, [1, True, [["a"]], [], ""]),
    (MsgType.MEMORY_RESPONSE, [1, True, [], [["a", float("nan")]], ""]),
    (MsgType.MEMORY_RESPONSE, [1, True, [], [["a", 1]], ""]),  # int score
    (MsgType.ERROR, [1, "m", [["k", "a"], ["k", "b"]]]),  # duplicate detail key
    (MsgType.ERROR, [70000, "m", []]),
    (MsgType.MEMORY_SYNC, sync_fields(batch_id=bytes(8))),
    (MsgType.MEMORY_SYNC, sync_fields(tier="l1")),
    (MsgType.MEMORY_SYNC, sync_fields(kind=3)),
    (MsgType.MEMORY_SYNC, sync_fields(target="")),
    (MsgType.MEMORY_SYNC, sync_fields(checksum=bytes(31))),
    (MsgType.MEMORY_SYNC, sync_fields(body="body")),  # str for bytes
    (MsgType.MEMORY_SYNC, sync_fields(chunk=[TID, 2, 2, 8])),  # index >= total
    (MsgType.MEMORY_SYNC, sync_fields(chunk=[TID, 0, 0, 8])),  # total 0
    (MsgType.MEMORY_SYNC, sync_fields(chunk=[TID, 0, 2, 3])),  # piece over total_bytes
    (MsgType.MEMORY_SYNC, sync_fields(chunk=[TID[:8], 0, 2, 8])),
    (MsgType.MEMORY_SYNC, sync_fields(chunk=[TID, 0, 9, 8])),  # more pieces than bytes
]


@pytest.mark.parametrize(("msg_type", "fields"), BAD_PAYLOADS)
def test_bad_fields_raise_message_error(msg_type: MsgType, fields: list[Any]) -> None:
    batch_count = 1 if msg_type is MsgType.MEMORY_SYNC else 0
    if msg_type in (MsgType.PING, MsgType.PING_REQ) and len(fields) >= 2:
        gossip = fields[-1]
        batch_count = len(gossip) if isinstance(gossip, list) else 0
    with pytest.raises(MessageError):
        decode_message(frame_of(msg_type, fields, batch_count=batch_count))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        msgpack.packb([int(MsgType.PING), 1, []]) + b"\x00",  # extra data
        msgpack.packb({"t": int(MsgType.PING)}),  # a map
        msgpack.packb(int(MsgType.PING)),  # not an array
        msgpack.packb([msgpack.ExtType(1, b"x"), 1, []]),  # ext type
        b"\x93\xcd\x01\x02\xa2\xff\xfe\x90",  # invalid UTF-8 string
        b"\x91" * 5000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion elements
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GiB
    ],
)
def test_malformed_payloads_raise_message_error(payload: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(encode_frame(Frame(MsgType.PING, payload)))


def test_frame_errors_come_through_unchanged() -> None:
    data = encode_message(Ping(1))
    with pytest.raises(FrameError, match="magic"):
        decode_message(b"XXXX" + data[4:])
    assert not issubclass(FrameError, MessageError)


def test_limits_shrink_the_caps() -> None:
    msg = MemoryQuery(1, "L1", ids=tuple(f"id{i}" for i in range(20)))
    data = encode_message(msg)
    decode_message(data)
    with pytest.raises(FrameError):
        decode_message(data, Limits(max_batch_count=10))


@pytest.mark.parametrize(
    "msg",
    [
        Hello("n" * (MAX_NODE_ID + 1), 1, ("L1",)),
        Hello("n", -1, ("L1",)),
        Ping(1, GOSSIP * 33),
        SyncAck(b"short", "n"),
        MemorySync(BID, "s", "*", "L9", SyncKind.UPDATE, b""),
        MemoryResponse(1, True, hits=(("a", float("inf")),)),
        ErrorReport(1, "\ud800"),  # lone surrogate: not encodable as UTF-8
    ],
)
def test_encode_refuses_what_a_peer_would_refuse(msg: Message) -> None:
    with pytest.raises(MessageError):
        encode_message(msg)


def test_encode_refuses_frames_over_the_cap() -> None:
    body = os.urandom(64 * 1024)
    msg = MemorySync(BID, "s", "*", "L1", SyncKind.UPDATE, body)
    encode_message(msg)
    with pytest.raises(MessageError, match="chunk the body"):
        encode_message(msg, limits=Limits(max_frame_bytes=32 * 1024))


def test_int_scores_are_sent_as_floats() -> None:
    _, back = decode_message(encode_message(MemoryResponse(1, True, hits=(("a", 3),))))
    assert isinstance(back, MemoryResponse)
    assert back.hits == (("a", 3.0),)
    assert type(back.hits[0][1]) is float


def test_header_is_the_frames_header() -> None:
    data = encode_message(Resume(TID, 3), priority=Priority.CRITICAL, timestamp_ns=99)
    fields = HEADER.unpack_from(data)
    assert fields[2] == Priority.CRITICAL
    assert fields[3] == MsgType.RESUME
    assert fields[6] == len(data) - HEADER_SIZE
    assert fields[7] == 99


@pytest.mark.parametrize(("msg", "msg_type"), EXAMPLES)
def test_deeply_nested_values_in_any_field(msg: Message, msg_type: MsgType) -> None:
    deep = b"\x91" * 1000 + b"\xc0"  # [[[...[nil]...]]], deeper than the recursion limit
    fields = msgpack.unpackb(encode_message(msg, flags=Flags.NONE)[HEADER_SIZE:])
    if not isinstance(fields, list):  # compressed payloads are not part of this test
        return
    for at in range(1, len(fields)):
        parts = [msgpack.packb(x, use_bin_type=True) for x in fields]
        parts[at] = deep
        payload = bytes([0x90 | len(fields)]) + b"".join(parts)
        frame = encode_frame(Frame(msg_type, payload, batch_count=batch_count_of(msg)))
        with pytest.raises(MessageError):
            decode_message(frame)
