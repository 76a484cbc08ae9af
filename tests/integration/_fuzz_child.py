"""Child process of the frame fuzz test: a mesh member that sends bad frames to a daemon.

Usage: python _fuzz_child.py DATA_DIR ADDRESS PORT PEER_ID SEED COUNT

DATA_DIR was set up by `memmesh init --join TOKEN`, so this process has a valid identity
and the mesh secret and passes signaling. Instead of running a daemon it opens a real
WebRTC link (`mesh.webrtc.WebRtcTransport`) to the daemon PEER_ID at ADDRESS:PORT and
sends COUNT frames generated deterministically from SEED: random bytes, valid frames
(built with `mesh.codec.encode_message`) then mutated (bit flips, truncation, junk
appended, header fields tampered with, huge batch_count), MEMORY_SYNC frames with garbage
Yjs bodies and a correct checksum, wrong checksums, mistyped payloads, deep msgpack
nesting, a zlib bomb, and some valid frames as noise.

Frames go in small rounds. Each round ends with a PING on both channels: its PING_ACK
proves the daemon processed every frame of the round (each channel is ordered, and the
daemon handles frames one at a time). The daemon drops the link after every 20 bad frames
of a peer; the child then reconnects and goes on (an unconfirmed round is not counted).
It answers the daemon's SWIM pings, so it stays a live member meanwhile.

Prints JSON lines: "ready", "linked" (per link), and a final "done" with the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from mesh import messages as m
from mesh.codec import decode_message, encode_message
from mesh.frames import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Flags,
    Frame,
    FrameError,
    MsgType,
    Priority,
    encode_frame,
)
from mesh.joining import load_setup
from mesh.webrtc import MAX_FRAME_BYTES, ConnectError, WebRtcTransport

ROUND_MAX = 8
ACK_TIMEOUT_S = 5.0
CONNECT_ATTEMPTS = 20
TIERS = ("L1", "L2", "L3")


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line and flush."""
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------- frame generation


class Generator:
    """Deterministic bad (and some good) frames from one seeded random generator."""

    def __init__(self, seed: int, node_id: str, peer_id: str) -> None:
        """Seed the generator; `node_id` is ours, `peer_id` the daemon's."""
        self.rng = random.Random(seed)
        self.me = node_id
        self.peer = peer_id

    def blob(self, lo: int, hi: int) -> bytes:
        """Return random bytes, lo..hi long."""
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def fake_id(self) -> str:
        """Return a random 16-hex node id (never a real node's)."""
        return self.rng.randbytes(8).hex()

    def gossip(self) -> tuple[m.MemberUpdate, ...]:
        """Return 0-2 updates about made-up members."""
        return tuple(
            m.MemberUpdate(
                self.fake_id(),
                self.rng.choice(list(m.MemberState)),
                self.rng.randint(0, 5),
                f"10.99.0.{self.rng.randint(1, 254)}:7600",
            )
            for _ in range(self.rng.randint(0, 2))
        )

    def sync(self, body: bytes | None = None) -> m.MemorySync:
        """Return a MEMORY_SYNC carrying `body` (random garbage by default)."""
        kind = self.rng.choice(list(m.SyncKind))
        return m.MemorySync(
            self.rng.randbytes(16),
            self.me,
            self.rng.choice(["*", self.peer]),
            self.rng.choice(TIERS),
            kind,
            self.blob(0, 300) if body is None else body,
            self.rng.randint(0, 50),
        )

    def message(self) -> m.Message:
        """Return a random valid message."""
        rng = self.rng
        choices: list[Callable[[], m.Message]] = [
            lambda: m.Hello(self.me, rng.randint(0, 3), ("L1", "L2", "L3"), "standard"),
            lambda: m.Ping(rng.randint(1 << 40, 1 << 50), self.gossip()),
            lambda: m.PingReq(rng.randint(1 << 40, 1 << 50), self.fake_id(), self.gossip()),
            lambda: m.PingAck(rng.randint(1 << 40, 1 << 50), self.fake_id(), self.gossip()),
            lambda: m.Digest(tuple((t, rng.randbytes(32)) for t in TIERS), rng.random() < 0.5),
            self.sync,
            lambda: m.SyncAck(rng.randbytes(16), self.me),
            lambda: m.Resume(rng.randbytes(16), rng.randint(0, 9)),
            lambda: m.MemoryQuery(
                rng.randint(1, 1 << 30),
                rng.choice(TIERS),
                rng.choice([b"", struct.pack("<4f", *(rng.uniform(-1, 1) for _ in range(4)))]),
                rng.randint(0, 50),
                tuple(self.fake_id() for _ in range(rng.randint(0, 3))),
            ),
            lambda: m.MemoryResponse(rng.randint(1, 1 << 30), True, (), (("x", 0.5),)),
            lambda: m.ErrorReport(rng.randint(0, 999), "fuzz", {"k": "v"}),
        ]
        return rng.choice(choices)()

    def valid(self) -> bytes:
        """Return a valid frame of a random valid message."""
        priority = self.rng.choice(list(Priority))
        return encode_message(self.message(), priority=priority, timestamp_ns=time.time_ns())

    def frame(self) -> tuple[str, bytes]:
        """Return (kind of mutation, frame bytes)."""
        rng = self.rng
        kind = rng.choices(
            [
                "random",
                "magic+random",
                "bitflip",
                "truncate",
                "append",
                "header",
                "batch_count",
                "sync_garbage",
                "sync_checksum",
                "mistyped",
                "deep_nesting",
                "zlib_bomb",
                "query_nan",
                "valid",
            ],
            weights=[10, 6, 14, 8, 4, 14, 6, 14, 5, 6, 2, 1, 3, 5],
        )[0]
        data = getattr(self, "_" + kind.replace("+", "_"))()
        return kind, data[:MAX_FRAME_BYTES]

    def _random(self) -> bytes:
        return self.blob(0, self.rng.choice([31, 32, 64, 2000]))

    def _magic_random(self) -> bytes:
        tail = self.blob(0, 200)
        header = HEADER.pack(
            MAGIC,
            VERSION,
            self.rng.randint(0, 4),
            self.rng.choice(list(MsgType)),
            self.rng.randint(0, 0x7F),
            self.rng.randint(0, 20),
            len(tail),
            time.time_ns(),
            0,
        )
        return header + tail

    def _bitflip(self) -> bytes:
        data = bytearray(self.valid())
        for _ in range(self.rng.randint(1, 4)):
            bit = self.rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    def _truncate(self) -> bytes:
        data = self.valid()
        return data[: self.rng.randrange(len(data))]

    def _append(self) -> bytes:
        return self.valid() + self.blob(1, 64)

    def _header(self) -> bytes:
        data = self.valid()
        fields = list(HEADER.unpack_from(data))
        index = self.rng.randrange(len(fields))
        width = [32, 16, 16, 16, 16, 16, 64, 64, 16][index]
        fields[index] = self.rng.choice(
            [0, 1, fields[index] + 1, max(0, fields[index] - 1), (1 << width) - 1]
        ) & ((1 << width) - 1)
        return HEADER.pack(*fields) + data[HEADER_SIZE:]

    def _batch_count(self) -> bytes:
        data = self.valid()
        fields = list(HEADER.unpack_from(data))
        fields[5] = self.rng.choice([10_001, 0xFFFF, fields[5] + 1, fields[5] + 7])
        return HEADER.pack(*fields) + data[HEADER_SIZE:]

    def _sync_garbage(self) -> bytes:
        # encode_message computes the correct SHA-256 of the garbage body.
        return encode_message(self.sync(), priority=self.rng.choice(list(Priority)))

    def _sync_checksum(self) -> bytes:
        msg = self.sync(self.blob(1, 200))
        checksum = bytearray(hashlib.sha256(msg.body).digest())
        checksum[self.rng.randrange(32)] ^= 0x01
        fields = [int(MsgType.MEMORY_SYNC), msg.batch_id, msg.source, msg.target, msg.tier]
        fields += [int(msg.kind), msg.items, bytes(checksum), None, msg.body]
        payload = msgpack.packb(fields, use_bin_type=True)
        return encode_frame(Frame(MsgType.MEMORY_SYNC, payload, batch_count=1))

    def _mistyped(self) -> bytes:
        msg_type = self.rng.choice(list(MsgType))
        junk: list[Any] = [
            None,
            True,
            -1,
            2**64 - 1,
            1.5,
            float("nan"),
            "x" * 70,
            b"\x00" * 17,
            [],
            [[1, 2]],
            "L9",
        ]
        fields = [self.rng.choice(junk) for _ in range(self.rng.randint(0, 10))]
        payload = msgpack.packb([int(msg_type), *fields], use_bin_type=True)
        return encode_frame(Frame(msg_type, payload, batch_count=self.rng.randint(0, 3)))

    def _deep_nesting(self) -> bytes:
        depth = self.rng.choice([1_000, 100_000])
        payload = b"\x91" * depth + b"\xc0"
        return encode_frame(Frame(MsgType.PING, payload), compress=True)

    def _zlib_bomb(self) -> bytes:
        size = DEFAULT_LIMITS.max_decompressed_bytes + 1024
        payload = zlib.compress(b"\x00" * size, 9)
        header = HEADER.pack(
            MAGIC,
            VERSION,
            int(Priority.NORMAL),
            int(MsgType.MEMORY_SYNC),
            int(Flags.COMPRESSED),
            1,
            len(payload),
            0,
            0,
        )
        return header + payload

    def _query_nan(self) -> bytes:
        nan = struct.pack("<4f", float("nan"), float("inf"), -0.0, 1e38)
        query = m.MemoryQuery(self.rng.randint(1, 1 << 30), self.rng.choice(TIERS), nan, 1000)
        return encode_message(query)

    def _valid(self) -> bytes:
        return self.valid()


def codec_rejects(data: bytes) -> bool:
    """Return True if the wire codec alone refuses the frame (a sure bad frame)."""
    try:
        decode_message(data, DEFAULT_LIMITS)
    except FrameError:
        return True
    return False


# --------------------------------------------------------------------- the link


class Fuzzer:
    """Holds the transport and the bookkeeping of acknowledged rounds."""

    def __init__(self, data_dir: Path, address: str, port: int, peer: str) -> None:
        """Load the identity and mesh credentials of DATA_DIR."""
        setup = load_setup(data_dir)
        self.me = setup.identity.node_id
        self.address, self.port, self.peer = address, port, peer
        self.transport = WebRtcTransport(
            setup.identity,
            setup.credentials,
            host=os.environ.get("FUZZ_HOST", "0.0.0.0"),
            on_link_up=self._up,
            on_link_down=self._down,
            on_frame=self._frame,
        )
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.link_ups = 0
        self.link_downs = 0
        self.seq = 1
        self.incarnation = 0
        self.pings_answered = 0
        self.frames_received = 0

    def _up(self, peer: str, address: str) -> None:
        self.link_ups += 1
        emit("linked", peer=peer, n=self.link_ups)

    def _down(self, peer: str) -> None:
        self.link_downs += 1
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("link down"))

    def _me_alive(self) -> tuple[m.MemberUpdate, ...]:
        return (m.MemberUpdate(self.me, m.MemberState.ALIVE, self.incarnation),)

    def _refute(self, gossip: tuple[m.MemberUpdate, ...]) -> None:
        for update in gossip:
            if update.node_id == self.me and update.state is not m.MemberState.ALIVE:
                self.incarnation = max(self.incarnation, update.incarnation + 1)

    def _frame(self, peer: str, data: bytes) -> None:
        """Answer the daemon's probes; complete our own round-trip pings."""
        self.frames_received += 1
        try:
            _frame, msg = decode_message(data)
        except FrameError as exc:
            emit("bad_frame_from_daemon", error=str(exc))
            return
        if isinstance(msg, m.Ping | m.PingReq | m.PingAck):
            self._refute(msg.gossip)
        if isinstance(msg, m.Ping) or (isinstance(msg, m.PingReq) and msg.target == self.me):
            self.pings_answered += 1
            ack = m.PingAck(msg.seq, self.me, self._me_alive())
            self.transport.send(peer, encode_message(ack))
        elif isinstance(msg, m.PingAck) and msg.target == peer:
            future = self.pending.pop(msg.seq, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def connect(self) -> None:
        """(Re)connect to the daemon, retrying a while (it may be backing off)."""
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                await self.transport.connect(self.peer, self.address, self.port)
                return
            except ConnectError as exc:
                emit("connect_failed", attempt=attempt, error=str(exc))
                await asyncio.sleep(0.2)
        raise ConnectError(self.peer, f"no link after {CONNECT_ATTEMPTS} attempts")

    async def round_trip(self, urgent: bool) -> None:
        """Ping the daemon on one channel and wait for its ack."""
        seq = (1 << 60) + self.seq
        self.seq += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        ping = encode_message(m.Ping(seq, self._me_alive()))
        if not self.transport.send(self.peer, ping, urgent=urgent):
            self.pending.pop(seq, None)
            raise ConnectionError("send refused: link down")
        try:
            await asyncio.wait_for(future, ACK_TIMEOUT_S)
        finally:
            self.pending.pop(seq, None)


async def run(data_dir: Path, address: str, port: int, peer: str, seed: int, count: int) -> None:
    """Fuzz the daemon with `count` frames; print the summary."""
    fuzzer = Fuzzer(data_dir, address, port, peer)
    generator = Generator(seed, fuzzer.me, peer)
    frames = [generator.frame() for _ in range(count)]
    urgent = [generator.rng.random() < 0.2 for _ in range(count)]
    verdicts = [codec_rejects(data) for _kind, data in frames]
    kinds: dict[str, int] = {}
    for kind, _data in frames:
        kinds[kind] = kinds.get(kind, 0) + 1
    sent = confirmed = confirmed_codec_bad = unsent = rounds_lost = 0
    confirmed_sync_garbage = 0
    async with fuzzer.transport:
        emit("ready", node_id=fuzzer.me, port=fuzzer.transport.port)
        await fuzzer.connect()
        index = 0
        while index < count:
            size = generator.rng.randint(1, ROUND_MAX)
            batch = range(index, min(count, index + size))
            index = batch.stop
            ok = True
            for i in batch:
                if fuzzer.transport.send(peer, frames[i][1], urgent=urgent[i]):
                    sent += 1
                else:
                    unsent += 1
                    ok = False
            try:
                if ok:
                    await fuzzer.round_trip(urgent=False)
                    await fuzzer.round_trip(urgent=True)
            except (ConnectionError, TimeoutError):
                ok = False
            if ok:
                confirmed += len(batch)
                confirmed_codec_bad += sum(verdicts[i] for i in batch)
                confirmed_sync_garbage += sum(
                    not verdicts[i] and frames[i][0] == "sync_garbage" for i in batch
                )
            else:
                rounds_lost += 1
                await fuzzer.connect()
        await fuzzer.round_trip(urgent=False)  # the link works at the end too
        emit(
            "done",
            count=count,
            sent=sent,
            unsent=unsent,
            codec_bad=sum(verdicts),
            confirmed=confirmed,
            confirmed_codec_bad=confirmed_codec_bad,
            confirmed_sync_garbage=confirmed_sync_garbage,
            rounds_lost=rounds_lost,
            link_ups=fuzzer.link_ups,
            link_downs=fuzzer.link_downs,
            pings_answered=fuzzer.pings_answered,
            frames_received=fuzzer.frames_received,
            kinds=kinds,
        )


def main() -> None:
    """Parse the arguments and run."""
    logging.basicConfig(level=os.environ.get("MM_LOG", "WARNING"), stream=sys.stderr)
    data_dir, address, port, peer, seed, count = sys.argv[1:7]
    asyncio.run(run(Path(data_dir), address, int(port), peer, int(seed), int(count)))


if __name__ == "__main__":
    main()
