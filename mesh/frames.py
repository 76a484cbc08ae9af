"""MEMSHADOW v2 frames: the 32-byte header, priorities, message types, flags, and caps.

Layout (big-endian, `>IHHHHHQQH`): magic u32 "MSHW", version u16 = 2, priority u16,
msg_type u16, flags u16, batch_count u16, payload_len u64, timestamp_ns u64, reserved u16.
Decoding never allocates more than the caps allow and raises only `FrameError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

import zstandard

MAGIC = 0x4D534857  # "MSHW"
VERSION = 2
HEADER = struct.Struct(">IHHHHHQQH")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 32


class FrameError(ValueError):
    """A frame was malformed, over a cap, or failed its integrity check."""


class Priority(IntEnum):
    """Traffic priority; CRITICAL and EMERGENCY go peer to peer at once."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3
    EMERGENCY = 4

    @property
    def urgent(self) -> bool:
        """Return True for CRITICAL and EMERGENCY (flushed at once, sent directly)."""
        return self >= Priority.CRITICAL


class MsgType(IntEnum):
    """Message types: memory 0x03xx (from MEMSHADOW), mesh control 0x01xx, hub 0x02xx."""

    HELLO = 0x0101
    PING = 0x0102
    PING_REQ = 0x0103
    PING_ACK = 0x0104
    DIGEST = 0x0110
    SYNC_ACK = 0x0111
    RESUME = 0x0112
    ERROR = 0x01FF

    HUB_CLAIM = 0x0201
    HUB_RELAY = 0x0202
    STATS_REPORT = 0x0203
    STATS_PUBLISH = 0x0204
    LEASE_REQUEST = 0x0205
    LEASE_GRANT = 0x0206
    LEASE_RELEASE = 0x0207

    MEMORY_STORE = 0x0301
    MEMORY_QUERY = 0x0302
    MEMORY_RESPONSE = 0x0303
    MEMORY_SYNC = 0x0304


# Wire value -> member: a dict lookup, where `MsgType(value)` runs the enum machinery.
_MSG_TYPES: Final = MappingProxyType({int(t): t for t in MsgType})
_PRIORITIES: Final = MappingProxyType({int(p): p for p in Priority})

# Frames whose payload may hold replica contents (records, Yjs updates, state): a node
# holds these back while one of its changes is in memory but its commit failed.
REPLICA_DATA = frozenset(
    {MsgType.MEMORY_STORE, MsgType.MEMORY_RESPONSE, MsgType.MEMORY_SYNC, MsgType.HUB_RELAY}
)
_MSG_TYPE_AT = struct.Struct(">H")
_MSG_TYPE_OFFSET = 8  # after magic u32, version u16, priority u16


def carries_replica_data(frame: bytes) -> bool:
    """Return True if an encoded frame's type may carry replica contents (REPLICA_DATA)."""
    if len(frame) < HEADER_SIZE:
        return False
    return _MSG_TYPE_AT.unpack_from(frame, _MSG_TYPE_OFFSET)[0] in REPLICA_DATA


class Flags:
    """Header flag bits, as plain ints.

    Not an IntFlag: on Python 3.11 each `&` or `|` of IntFlag members builds a new member
    (about 1 µs), and a frame's way through encode, decode and the Node took a dozen.
    """

    NONE: Final = 0
    ENCRYPTED: Final = 0x0001
    COMPRESSED: Final = 0x0002
    BATCHED: Final = 0x0004
    REQUIRES_ACK: Final = 0x0008
    SIGNED: Final = 0x0010
    CHUNKED: Final = 0x0020
    RELAYED: Final = 0x0040
    ACK_ALL: Final = 0x0080  # with REQUIRES_ACK: every receiver acks, not only the origin's links
    ZSTD: Final = 0x0100  # with COMPRESSED: the payload is one zstd frame (else one zlib stream)
    DEFINED: Final = 0x01FF  # every bit above; the others are reserved and sent as 0


# The flags `encode_frame` keeps from a Frame; it sets the compression bits itself.
_FLAGS_KEPT: Final = Flags.DEFINED & ~(Flags.COMPRESSED | Flags.ZSTD)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps checked before any allocation."""

    max_frame_bytes: int = 256 * 1024
    max_decompressed_bytes: int = 16 * 1024 * 1024
    max_batch_count: int = 10_000


DEFAULT_LIMITS = Limits()
COMPRESS_THRESHOLD = 1024
ZSTD_LEVEL = 1


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: header fields plus the (decompressed) payload."""

    msg_type: MsgType
    payload: bytes
    priority: Priority = Priority.NORMAL
    flags: int = Flags.NONE  # Flags bits
    batch_count: int = 0
    timestamp_ns: int = 0


def encode_frame(frame: Frame, *, compress: bool | None = None) -> bytes:
    """Return header + payload; payloads over 1 KiB are zstd-compressed when it helps."""
    payload = frame.payload
    flags = frame.flags & _FLAGS_KEPT
    should = len(payload) >= COMPRESS_THRESHOLD if compress is None else compress
    if should:
        # A compressor per call (about 8 µs): they are not thread-safe, and the Node may
        # run on any thread; only payloads of 1 KiB and more get here.
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
        if len(packed) < len(payload):
            payload = packed
            flags |= Flags.COMPRESSED | Flags.ZSTD
    header = HEADER.pack(
        MAGIC,
        VERSION,
        int(frame.priority),
        int(frame.msg_type),
        flags,
        frame.batch_count,
        len(payload),
        frame.timestamp_ns,
        0,
    )
    return header + payload


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Parse and check one frame; raise FrameError (only) on anything wrong."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the 32-byte header")
    if len(data) > limits.max_frame_bytes:
        raise FrameError(f"frame of {len(data)} bytes over the cap of {limits.max_frame_bytes}")
    magic, version, priority, msg_type, flags, batch_count, length, ts, _reserved = (
        HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FrameError(f"bad magic 0x{magic:08x}")
    if version != VERSION:
        raise FrameError(f"unsupported protocol version {version}")
    if length != len(data) - HEADER_SIZE:
        raise FrameError(f"payload_len {length} but {len(data) - HEADER_SIZE} bytes follow")
    if batch_count > limits.max_batch_count:
        raise FrameError(f"batch_count {batch_count} over the cap of {limits.max_batch_count}")
    kind = _MSG_TYPES.get(msg_type)
    level = _PRIORITIES.get(priority)
    if kind is None or level is None:
        raise FrameError(f"unknown msg_type 0x{msg_type:04x} or priority {priority}")
    if flags & Flags.COMPRESSED:
        packed = memoryview(data)[HEADER_SIZE:]  # read in place: no copy of a sync slice's piece
        cap = limits.max_decompressed_bytes
        try:
            payload = _unzstd(packed, cap) if flags & Flags.ZSTD else _inflate(packed, cap)
        finally:
            packed.release()  # a bytearray given in must not stay locked by a FrameError
    else:
        payload = bytes(data[HEADER_SIZE:])
    return Frame(kind, payload, level, flags, batch_count, ts)


def _unzstd(payload: memoryview, cap: int) -> bytes:
    """Return the decompressed payload: one whole zstd frame declaring a size up to `cap`.

    The declared size is checked before anything is allocated, and the output buffer is
    that size: a frame that would decompress to more fails (a bomb cannot get past it).
    """
    try:
        size = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError as exc:
        raise FrameError(f"corrupt compressed payload: {exc}") from None
    if size == zstandard.CONTENTSIZE_UNKNOWN or size == 0:
        # Never sent (only payloads of 1 KiB and more are compressed); an empty frame is
        # also where zstd let trailing bytes through.
        raise FrameError("compressed payload does not declare a size")
    if size > cap:
        raise FrameError(f"decompressed payload over the cap of {cap} bytes")
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise FrameError(f"corrupt compressed payload: {exc}") from None
    if len(out) != size:
        raise FrameError(f"compressed payload of {len(out)} bytes, {size} declared")
    return out


def _inflate(payload: memoryview, cap: int) -> bytes:
    """Return the inflated payload: at most `cap` bytes, one whole zlib stream, nothing after."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, cap + 1)  # one byte over tells "over the cap"
    except zlib.error as exc:
        raise FrameError(f"corrupt compressed payload: {exc}") from None
    if len(out) > cap:
        raise FrameError(f"decompressed payload over the cap of {cap} bytes")
    if not inflater.eof:
        raise FrameError("truncated compressed payload")
    if inflater.unused_data:
        raise FrameError(f"{len(inflater.unused_data)} bytes after the compressed payload")
    return out
