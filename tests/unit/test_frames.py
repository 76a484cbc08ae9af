"""Unit tests for the MEMSHADOW v2 frame header, its caps, and payload compression."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
import zstandard

from mesh.frames import (
    COMPRESS_THRESHOLD,
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Flags,
    Frame,
    FrameError,
    Limits,
    MsgType,
    Priority,
    decode_frame,
    encode_frame,
)


def raw(
    payload: bytes = b"hi",
    *,
    magic: int = MAGIC,
    version: int = VERSION,
    priority: int = 1,
    msg_type: int = int(MsgType.PING),
    flags: int = 0,
    batch_count: int = 0,
    payload_len: int | None = None,
    timestamp_ns: int = 0,
) -> bytes:
    """Return a hand-built frame with any header field overridden."""
    length = len(payload) if payload_len is None else payload_len
    header = HEADER.pack(
        magic, version, priority, msg_type, flags, batch_count, length, timestamp_ns, 0
    )
    return header + payload


def test_header_is_exactly_32_bytes() -> None:
    assert HEADER_SIZE == 32
    assert len(encode_frame(Frame(MsgType.PING, b""))) == 32


def test_header_layout_is_big_endian_at_documented_offsets() -> None:
    frame = Frame(MsgType.MEMORY_SYNC, b"xyz", Priority.HIGH, Flags.BATCHED, 7, 123456789)
    data = encode_frame(frame)
    assert data[0:4] == b"MSHW"
    assert struct.unpack_from(">H", data, 4)[0] == 2
    assert struct.unpack_from(">H", data, 6)[0] == Priority.HIGH
    assert struct.unpack_from(">H", data, 8)[0] == 0x0304
    assert struct.unpack_from(">H", data, 10)[0] == Flags.BATCHED
    assert struct.unpack_from(">H", data, 12)[0] == 7
    assert struct.unpack_from(">Q", data, 14)[0] == 3
    assert struct.unpack_from(">Q", data, 22)[0] == 123456789
    assert data[30:32] == b"\0\0"
    assert data[32:] == b"xyz"


def test_round_trip_keeps_every_header_field() -> None:
    frame = Frame(MsgType.DIGEST, b"payload", Priority.EMERGENCY, Flags.RELAYED, 3, 2**63)
    assert decode_frame(encode_frame(frame)) == frame


def test_wrong_magic() -> None:
    with pytest.raises(FrameError, match="magic"):
        decode_frame(raw(magic=0x4D534858))


def test_unknown_version() -> None:
    with pytest.raises(FrameError, match="version"):
        decode_frame(raw(version=3))


def test_shorter_than_header() -> None:
    with pytest.raises(FrameError, match="shorter"):
        decode_frame(raw()[:31])


def test_oversize_frame() -> None:
    limits = Limits(max_frame_bytes=1024)
    with pytest.raises(FrameError, match="over the cap"):
        decode_frame(raw(bytes(1024 - 32 + 1)), limits)
    decode_frame(raw(bytes(1024 - 32)), limits)


@pytest.mark.parametrize("delta", [-2, -1, 1, 2**40])
def test_payload_len_mismatch(delta: int) -> None:
    with pytest.raises(FrameError, match="payload_len"):
        decode_frame(raw(b"hello", payload_len=5 + delta))


def test_unknown_msg_type() -> None:
    with pytest.raises(FrameError, match="msg_type"):
        decode_frame(raw(msg_type=0x0999))


def test_unknown_priority() -> None:
    with pytest.raises(FrameError, match="priority"):
        decode_frame(raw(priority=5))


def test_batch_count_over_cap() -> None:
    with pytest.raises(FrameError, match="batch_count"):
        decode_frame(raw(batch_count=DEFAULT_LIMITS.max_batch_count + 1))
    decode_frame(raw(batch_count=DEFAULT_LIMITS.max_batch_count))


def test_zlib_bomb_over_the_decompressed_cap() -> None:
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < DEFAULT_LIMITS.max_frame_bytes
    with pytest.raises(FrameError, match="over the cap"):
        decode_frame(raw(bomb, flags=Flags.COMPRESSED))


def test_decompressed_cap_is_inclusive() -> None:
    limits = Limits(max_decompressed_bytes=4096)
    packed = zlib.compress(bytes(4096))
    assert decode_frame(raw(packed, flags=Flags.COMPRESSED), limits).payload == bytes(4096)
    with pytest.raises(FrameError, match="over the cap"):
        decode_frame(raw(zlib.compress(bytes(4097)), flags=Flags.COMPRESSED), limits)


def test_corrupt_compressed_data() -> None:
    with pytest.raises(FrameError, match="corrupt"):
        decode_frame(raw(b"\x00\x01not zlib at all", flags=Flags.COMPRESSED))


def test_truncated_compressed_data() -> None:
    packed = zlib.compress(os.urandom(2000))
    with pytest.raises(FrameError, match="truncated"):
        decode_frame(raw(packed[:-10], flags=Flags.COMPRESSED))


def test_trailing_bytes_after_compressed_data() -> None:
    packed = zlib.compress(b"a" * 2000)
    with pytest.raises(FrameError, match="after the compressed payload"):
        decode_frame(raw(packed + b"junk", flags=Flags.COMPRESSED))


def test_compresses_large_compressible_payloads() -> None:
    payload = b"abcd" * 1000
    data = encode_frame(Frame(MsgType.MEMORY_SYNC, payload))
    assert len(data) < len(payload)
    assert data[HEADER_SIZE:].startswith(ZSTD_MAGIC)
    frame = decode_frame(data)
    assert frame.flags & Flags.COMPRESSED and frame.flags & Flags.ZSTD
    assert frame.payload == payload


def test_a_zlib_payload_from_an_earlier_node_still_decodes() -> None:
    payload = b"abcd" * 1000
    assert decode_frame(raw(zlib.compress(payload), flags=Flags.COMPRESSED)).payload == payload


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD = int(Flags.COMPRESSED | Flags.ZSTD)


def zstd(data: bytes, **options: bool) -> bytes:
    return zstandard.ZstdCompressor(level=1, **options).compress(data)


def test_zstd_bomb_over_the_decompressed_cap_is_refused_before_decompressing() -> None:
    bomb = zstd(bytes(64 * 1024 * 1024))  # 64 MiB of zeros in a few KiB
    assert len(bomb) < DEFAULT_LIMITS.max_frame_bytes
    with pytest.raises(FrameError, match="over the cap"):
        decode_frame(raw(bomb, flags=ZSTD))


def test_a_zstd_frame_that_declares_less_than_it_holds_is_refused() -> None:
    honest = zstd(bytes(4096))
    small = zstd(bytes(100))  # its header declares 100 bytes: put it on the 4 KiB blocks
    header = zstandard.frame_header_size(small)
    lying = small[:header] + honest[zstandard.frame_header_size(honest) :]
    with pytest.raises(FrameError):
        decode_frame(raw(lying, flags=ZSTD))


def test_zstd_cap_is_inclusive_and_its_size_must_be_declared() -> None:
    limits = Limits(max_decompressed_bytes=4096)
    assert decode_frame(raw(zstd(bytes(4096)), flags=ZSTD), limits).payload == bytes(4096)
    with pytest.raises(FrameError, match="over the cap"):
        decode_frame(raw(zstd(bytes(4097)), flags=ZSTD), limits)
    with pytest.raises(FrameError, match="declare a size"):
        decode_frame(raw(zstd(bytes(100), write_content_size=False), flags=ZSTD))
    with pytest.raises(FrameError, match="declare a size"):
        decode_frame(raw(zstd(b"") + b"junk", flags=ZSTD))


def test_corrupt_truncated_or_trailing_zstd_data_is_refused() -> None:
    packed = zstd(os.urandom(2000) + bytes(2000))
    for bad, reason in [
        (b"\x00\x01not zstd at all", "corrupt"),
        (packed[:-10], "corrupt"),
        (packed + b"junk", "corrupt"),
        (packed + packed, "corrupt"),
    ]:
        with pytest.raises(FrameError, match=reason):
            decode_frame(raw(bad, flags=ZSTD))


def test_small_or_incompressible_payloads_stay_raw() -> None:
    small = b"a" * (COMPRESS_THRESHOLD - 1)
    noise = os.urandom(4 * COMPRESS_THRESHOLD)
    for payload in (small, noise):
        data = encode_frame(Frame(MsgType.MEMORY_SYNC, payload, flags=Flags.COMPRESSED))
        assert data[HEADER_SIZE:] == payload
        assert not decode_frame(data).flags & Flags.COMPRESSED


def test_compress_can_be_forced_off() -> None:
    payload = b"a" * 4096
    data = encode_frame(Frame(MsgType.MEMORY_SYNC, payload), compress=False)
    assert data[HEADER_SIZE:] == payload


def test_reserved_flag_bits_are_sent_as_zero() -> None:
    for given in (0x8000, 0x0204, -0x12):
        data = encode_frame(Frame(MsgType.PING, b"x", flags=given))
        sent = struct.unpack_from(">H", data, 10)[0]
        assert sent == given & Flags.DEFINED & ~(Flags.COMPRESSED | Flags.ZSTD)


def test_a_bytearray_is_free_again_after_a_bad_compressed_frame() -> None:
    data = bytearray(raw(b"\x28\xb5\x2f\xfd junk", flags=ZSTD))
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    data.extend(b"more")  # resizable while the error is still held
    assert refused.value is not None
