"""Property tests for the hub messages (0x02xx): round trips, and only FrameError on damage."""

from __future__ import annotations

import contextlib

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from mesh.codec import KNOWN_TIERS, MAX_NODE_ID, decode_message, encode_message
from mesh.frames import HEADER, Flags, FrameError, MsgType, Priority
from mesh.messages import (
    HubClaim,
    HubRelay,
    LeaseGrant,
    LeaseRelease,
    LeaseRequest,
    Message,
    StatsPublish,
    StatsReport,
    TierStats,
)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
NODE = st.text(min_size=1, max_size=MAX_NODE_ID)
NAME = st.text(min_size=1, max_size=128)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
KEY = st.binary(min_size=32, max_size=32)
SIG = st.binary(min_size=64, max_size=64)
TIER_STATS = st.builds(
    TierStats,
    st.sampled_from(KNOWN_TIERS),
    FINITE,
    FINITE,
    FINITE,
    U64,
    U64,
    U64,
    st.lists(
        st.tuples(st.text(min_size=1, max_size=64), U64), max_size=16, unique_by=lambda c: c[0]
    ).map(tuple),
)
REPORTS = st.builds(
    StatsReport,
    NODE,
    st.lists(TIER_STATS, max_size=3, unique_by=lambda t: t.tier).map(tuple),
)
HUB_MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(HubClaim, NODE, U64, U64, U32, KEY, SIG),
    st.builds(HubRelay, NODE, KEY, SIG, st.binary(min_size=1, max_size=4096)),
    REPORTS,
    st.builds(
        StatsPublish,
        NODE,
        U64,
        st.lists(REPORTS, max_size=8, unique_by=lambda r: r.node_id).map(tuple),
    ),
    st.builds(LeaseRequest, U64, NODE, NAME, U32),
    st.builds(LeaseGrant, U64, NAME, NODE, st.booleans(), U64, U64, U32),
    st.builds(LeaseRelease, NAME, NODE, U64),
)


@given(HUB_MESSAGES, st.sampled_from(Priority), U64, st.sampled_from([Flags.NONE, Flags.RELAYED]))
def test_hub_messages_round_trip(msg: Message, priority: Priority, ts: int, flags: int) -> None:
    frame, back = decode_message(
        encode_message(msg, priority=priority, timestamp_ns=ts, flags=flags)
    )
    assert back == msg
    assert bool(frame.flags & Flags.SIGNED) == isinstance(msg, HubRelay)
    assert frame.flags & Flags.RELAYED == flags


def _values() -> st.SearchStrategy[object]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | FINITE
        | st.text(max_size=70)
        | st.binary(max_size=70),
        lambda inner: st.lists(inner, max_size=9),
        max_leaves=40,
    )


@given(
    st.sampled_from(
        [
            MsgType.HUB_CLAIM,
            MsgType.HUB_RELAY,
            MsgType.STATS_REPORT,
            MsgType.STATS_PUBLISH,
            MsgType.LEASE_REQUEST,
            MsgType.LEASE_GRANT,
            MsgType.LEASE_RELEASE,
        ]
    ),
    st.lists(_values(), max_size=9),
    st.sampled_from([Flags.NONE, Flags.SIGNED]),
    st.integers(0, 5),
)
def test_random_hub_payloads_raise_only_frame_error(
    msg_type: MsgType, fields: list[object], flags: int, batch: int
) -> None:
    payload = msgpack.packb([int(msg_type), *fields], use_bin_type=True)
    header = HEADER.pack(0x4D534857, 2, 1, int(msg_type), flags, batch, len(payload), 0, 0)
    with contextlib.suppress(FrameError):
        decode_message(header + payload)


@given(HUB_MESSAGES, st.data())
def test_bit_flips_in_hub_frames_raise_only_frame_error(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(FrameError):
        decode_message(bytes(frame))


def test_signed_flag_only_on_relay() -> None:
    claim = HubClaim("a", 1, 1, 100, bytes(32), bytes(64))
    data = bytearray(encode_message(claim))
    flags = int.from_bytes(data[10:12], "big") | Flags.SIGNED
    data[10:12] = flags.to_bytes(2, "big")
    try:
        decode_message(bytes(data))
    except FrameError as exc:
        assert "SIGNED" in str(exc)
    else:
        raise AssertionError("SIGNED accepted on HUB_CLAIM")
    relay = bytearray(encode_message(HubRelay("a", bytes(32), bytes(64), b"x")))
    flags = int.from_bytes(relay[10:12], "big") & ~Flags.SIGNED
    relay[10:12] = flags.to_bytes(2, "big")
    try:
        decode_message(bytes(relay))
    except FrameError:
        pass
    else:
        raise AssertionError("unsigned HUB_RELAY accepted")
