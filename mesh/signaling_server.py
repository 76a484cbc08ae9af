"""WebRTC signaling over TCP: one sealed offer in, one sealed answer back, then close.

Wire format on a signaling connection (the dialer speaks first):

    dialer -> listener   u32 big-endian length, then that many bytes: the sealed offer
    listener -> dialer   u32 big-endian length, then that many bytes: the sealed answer
    both                 close

A listener that refuses the offer closes the connection without writing anything. Lengths
are capped at `MAX_SIGNAL_BYTES` (64 KiB) before anything is read; every read has a deadline,
and the number of connections handled at once is bounded, so an unauthenticated client can
hold at most a few small buffers for a few seconds. Nor can it hold the endpoint: one
address gets at most `MAX_PER_ADDRESS` of the slots, the length prefix must come within
`HEAD_TIMEOUT_S` (a dialer sends it at once), and when every slot is taken a new
connection evicts the oldest one that has not delivered its offer yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from mesh.identity import NodeIdentity
from mesh.trust import MeshCredentials, SignalingMessage, dtls_fingerprints, seal

log = logging.getLogger(__name__)

MAX_SIGNAL_BYTES: Final = 64 * 1024
IO_TIMEOUT_S: Final = 5.0
HEAD_TIMEOUT_S: Final = 1.0  # for the 4-byte length prefix, which a dialer writes at once
MAX_CONCURRENT: Final = 32
MAX_PER_ADDRESS: Final = 4  # connections handled at once from one source address
BUSY_LOG_EVERY: Final = 100  # "busy" refusals: the first, then one line per this many
_LENGTH: Final = struct.Struct(">I")

OfferHandler = Callable[[bytes, str], Awaitable[bytes | None]]
RefusalHandler = Callable[[str, str], None]


class SignalFrameError(ValueError):
    """A signaling message that is truncated, empty or longer than the cap."""

    def __init__(self, reason: str) -> None:
        """Record a short reason code ("oversized", "truncated", "empty")."""
        super().__init__(f"bad signaling frame: {reason}")
        self.reason = reason


def now_ms() -> int:
    """Wall-clock milliseconds: signaling freshness is checked against the peers' clocks."""
    return time.time_ns() // 1_000_000


class Signer:
    """Seals this node's offers and answers (`mesh.trust.seal`) for one peer at a time."""

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        *,
        tiers: tuple[str, ...],
        profile: str,
    ) -> None:
        """Sign as `identity` for the mesh of `credentials`, advertising tiers and profile."""
        self._identity, self._credentials = identity, credentials
        self._mesh_id = credentials.mesh_id
        self._tiers, self._profile = tiers, profile

    def seal(self, kind: str, peer_id: str, sdp: str) -> bytes:
        """Return the sealed `kind` ("offer"/"answer") of the local `sdp` for `peer_id`.

        A "hello" has no SDP (pass ""); its `peer_id` may be `ANY_RECIPIENT`.
        """
        fingerprints = dtls_fingerprints(sdp) if kind != "hello" else [""]
        if not fingerprints:
            raise ValueError("local SDP has no DTLS fingerprint")
        message = SignalingMessage(
            kind=kind,
            sender=self._identity.node_id,
            recipient=peer_id,
            mesh_id=self._mesh_id,
            public_key=self._identity.public_key_hex,
            timestamp_ms=now_ms(),
            nonce=os.urandom(16).hex(),
            sdp=sdp,
            fingerprint=fingerprints[0],
            tiers=self._tiers,
            profile=self._profile,
        )
        return seal(message, self._identity, self._credentials)


def encode_signal(data: bytes) -> bytes:
    """Return `data` with its u32 big-endian length prefix; ValueError if over the cap."""
    if not 0 < len(data) <= MAX_SIGNAL_BYTES:
        raise ValueError(f"signaling message of {len(data)} bytes (allowed 1..{MAX_SIGNAL_BYTES})")
    return _LENGTH.pack(len(data)) + data


async def read_signal(
    reader: asyncio.StreamReader, *, head_timeout: float | None = None
) -> bytes | None:
    """Read one length-prefixed message; None on a clean EOF before any byte.

    With `head_timeout`, the length prefix must arrive within it (TimeoutError).
    """
    try:
        async with asyncio.timeout(head_timeout):
            head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise SignalFrameError("truncated") from exc
    (length,) = _LENGTH.unpack(head)
    if length == 0:
        raise SignalFrameError("empty")
    if length > MAX_SIGNAL_BYTES:
        raise SignalFrameError("oversized")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise SignalFrameError("truncated") from exc


async def exchange(
    address: str, port: int, offer: bytes, *, timeout: float = IO_TIMEOUT_S
) -> bytes | None:
    """Send `offer` to address:port and return the answer, or None if refused (closed unanswered).

    Raises OSError if the listener cannot be reached, TimeoutError if it stays silent, and
    SignalFrameError if its reply is malformed.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address, port)
        try:
            writer.write(encode_signal(offer))
            await writer.drain()
            try:
                return await read_signal(reader)
            except ConnectionResetError:
                return None  # the listener closed with our bytes unread: a refusal too
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class SignalingServer:
    """Accepts signaling connections and hands each offer to `on_offer` (None = refuse)."""

    def __init__(
        self, on_offer: OfferHandler, on_bad_frame: RefusalHandler, *, host: str, port: int
    ) -> None:
        """Serve on host:port (port 0 picks a free one) once `start` is awaited."""
        self._on_offer = on_offer
        self._on_bad_frame = on_bad_frame
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._by_address: Counter[str] = Counter()
        # Connections still reading their offer, oldest first (a dict keeps insertion order).
        self._reading: dict[asyncio.Task[None], None] = {}
        self.busy_refusals = 0

    @property
    def port(self) -> int:
        """The bound TCP port (the requested one before `start`)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting."""
        self._server = await asyncio.start_server(self._accept, self._host, self._port)

    async def close(self) -> None:
        """Stop accepting, cancel the connections being handled, and wait for them."""
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if not self._admit(address):
            self.busy_refusals += 1
            if self.busy_refusals % BUSY_LOG_EVERY == 1:
                log.warning(
                    "signaling: too many connections, dropping %s (%d dropped so far)",
                    address,
                    self.busy_refusals,
                )
            self._on_bad_frame(address, "busy")
            writer.close()
            return
        self._handlers.add(task)
        self._by_address[address] += 1
        self._reading[task] = None
        try:
            await self._serve(reader, writer, address, task)
        except asyncio.CancelledError:
            pass  # closing or evicted: the connection is dropped unanswered
        finally:
            self._handlers.discard(task)
            self._reading.pop(task, None)
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
            writer.close()

    def _admit(self, address: str) -> bool:
        """Return whether a new connection from `address` gets a slot (evicting if need be)."""
        if self._by_address[address] >= MAX_PER_ADDRESS:
            return False
        if len(self._handlers) < MAX_CONCURRENT:
            return True
        # Full: the oldest connection still reading its offer makes room. Honest dialers
        # send theirs at once, so the oldest reader is the likeliest to be holding a slot.
        for oldest in self._reading:
            if not oldest.done():
                self._reading.pop(oldest)
                oldest.cancel()
                return True
        return False  # every slot is busy with a verified offer being answered

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        task: asyncio.Task[None],
    ) -> None:
        try:
            async with asyncio.timeout(IO_TIMEOUT_S):
                offer = await read_signal(reader, head_timeout=HEAD_TIMEOUT_S)
        except SignalFrameError as exc:
            self._on_bad_frame(address, exc.reason)
            return
        except TimeoutError:
            self._on_bad_frame(address, "timeout")
            return
        except OSError:
            return
        self._reading.pop(task, None)  # answering now: no longer a candidate for eviction
        if offer is None:
            return  # a port probe, or a dialer that gave up: nothing to refuse
        answer = await self._on_offer(offer, address)
        if answer is None:
            return
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(IO_TIMEOUT_S):
                writer.write(encode_signal(answer))
                await writer.drain()
