"""WebRTC transport adapter: aiortc data channels to peers, signaled over a small TCP endpoint.

One link per peer. The dialer creates an RTCPeerConnection with two data channels, "sync"
(reliable, ordered: everything) and "urgent" (reliable, ordered, its own SCTP stream: the
CRITICAL/EMERGENCY frames), seals the offer (`mesh.trust.seal`: signed by the node key,
MACed with the mesh secret, fresh, carrying the DTLS fingerprint) and sends it to the
peer's signaling port (`mesh.signaling_server`). The listener verifies it before it creates
anything; a refused offer gets no answer, no peer connection and no byte of data.

Events go to the callbacks given to the constructor: `on_link_up(peer_id, address)` once
both channels are open, `on_link_down(peer_id)` when an open link fails or closes (also
after `disconnect`, never during `close`), `on_frame(peer_id, data)` per message and
`on_refused(address, reason)` per refused signaling attempt.

Glare (both sides dial at once) is broken deterministically: the smaller node id's offer
wins. Reconnecting, with backoff, is the caller's business; a failed `connect` leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError

from mesh import sctp_receive, signaling_server
from mesh.identity import NodeIdentity
from mesh.signaling_server import SignalingServer, Signer, now_ms
from mesh.trust import ANY_RECIPIENT, MeshCredentials, SignalingRefused, SignalingVerifier

log = logging.getLogger(__name__)

MAX_FRAME_BYTES: Final = 256 * 1024  # aiortc's advertised max message size
HIGH_WATER: Final = 1 << 20  # above this many bytes buffered in aiortc, frames wait in our queue
LOW_WATER: Final = 256 * 1024  # bufferedAmountLowThreshold: drain our queue from here
QUEUE_LIMIT_BYTES: Final = 16 << 20  # per peer; beyond it `send` returns False
EARLY_LIMIT: Final = 256  # frames held back when they beat our own LinkUp
CONNECT_TIMEOUT_S: Final = 4.0  # a LAN link is up in ~0.1 s; a dead host must not stall retries
ACCEPT_TIMEOUT_S: Final = 15.0  # an answered offer must become a link within this
GLARE_GRACE_S: Final = 1.0  # the losing side of a glare waits this long for the winner's offer
CLOSED_KEPT: Final = 1024  # LinkInfo of closed links kept for `links()`
MAX_REMEMBERED_SIGNALS: Final = 4096  # peers whose newest signal timestamp is remembered
CHANNELS: Final = ("sync", "urgent")
RECEIVE_BUFFER_BYTES: Final = 4 << 20  # per UDP socket of a link (see _enlarge_receive_buffers)

LinkUpHandler = Callable[[str, str], None]
LinkDownHandler = Callable[[str], None]
FrameHandler = Callable[[str, bytes], None]
RefusedHandler = Callable[[str, str], None]


class ConnectError(ConnectionError):
    """No link to `peer_id`: `reason` says why."""

    def __init__(self, peer_id: str, reason: str) -> None:
        """Record the peer and a human-readable reason."""
        super().__init__(f"link to {peer_id}: {reason}")
        self.peer_id = peer_id
        self.reason = reason


class ConnectRefused(ConnectError):
    """The peer refused our offer (closed unanswered), or we refused its answer."""


class ConnectTimeout(ConnectError, TimeoutError):
    """The link did not come up in time."""


@dataclass(frozen=True)
class LinkInfo:
    """A snapshot of one link; times are wall-clock seconds, rtt from SCTP's smoothed RTT."""

    address: str
    state: str  # "connecting" | "connected" | "closed"
    role: str  # "dial" | "accept"
    bytes_in: int
    bytes_out: int
    frames_in: int
    frames_out: int
    urgent_frames_in: int
    urgent_frames_out: int
    queued_bytes: int
    dropped_frames: int
    connected_since: float | None
    rtt_ms: float | None
    tiers: tuple[str, ...]
    profile: str


class _Link:
    """One peer connection and its bookkeeping (mutable; owned by the transport)."""

    def __init__(self, peer_id: str, address: str, pc: RTCPeerConnection, role: str) -> None:
        self.peer_id, self.address, self.pc, self.role = peer_id, address, pc, role
        self.state = "connecting"
        self.channels: dict[str, RTCDataChannel] = {}
        self.queues: dict[str, deque[bytes]] = {label: deque() for label in CHANNELS}
        self.early: list[tuple[str, bytes]] = []
        self.task: asyncio.Task[None] | None = None
        self.counts: Counter[str] = Counter()
        self.queued_bytes = 0
        self.connected_since: float | None = None
        self.tiers: tuple[str, ...] = ()
        self.profile = ""

    def info(self) -> LinkInfo:
        srtt = getattr(self.pc.sctp, "_srtt", None) if self.state == "connected" else None
        c = self.counts
        return LinkInfo(
            address=self.address,
            state=self.state,
            role=self.role,
            bytes_in=c["bytes_in"],
            bytes_out=c["bytes_out"],
            frames_in=c["frames_in"],
            frames_out=c["frames_out"],
            urgent_frames_in=c["urgent_in"],
            urgent_frames_out=c["urgent_out"],
            queued_bytes=self.queued_bytes,
            dropped_frames=c["dropped"],
            connected_since=self.connected_since,
            rtt_ms=round(srtt * 1000.0, 3) if isinstance(srtt, float) else None,
            tiers=self.tiers,
            profile=self.profile,
        )


def _prioritize(channel: RTCDataChannel) -> None:
    """Move the message just queued on `channel` ahead of other channels' queued messages.

    aiortc keeps one FIFO of whole messages for all channels of a peer connection, so an
    urgent frame would otherwise wait behind every queued "sync" byte. Stream sequence
    numbers are assigned when a message leaves that FIFO, so reordering whole messages of
    different streams is safe; the channel's own messages keep their order.
    """
    queue = getattr(channel.transport, "_data_channel_queue", None)
    if not isinstance(queue, deque) or len(queue) < 2 or queue[-1][0] is not channel:
        return
    position = 0
    for index in range(len(queue) - 2, -1, -1):
        if queue[index][0] is channel:
            position = index + 1
            break
    if position < len(queue) - 1:
        item = queue.pop()
        queue.insert(position, item)


def _enlarge_receive_buffers(pc: RTCPeerConnection) -> int:
    """Ask for RECEIVE_BUFFER_BYTES on the link's UDP sockets; return how many were set.

    aiortc reads datagrams on the event loop; while the loop applies a sync slice, a burst
    overflows the default ~208 KiB socket buffer and every lost packet costs an SCTP
    retransmission (measured: 5% of datagrams dropped during a bulk sync). The kernel caps
    the size at net.core.rmem_max. Reaches into aiortc/aioice internals; does nothing if
    they change.
    """
    sctp = getattr(pc, "sctp", None)
    ice = getattr(getattr(getattr(sctp, "transport", None), "transport", None), "_connection", None)
    done = 0
    for protocol in getattr(ice, "_protocols", ()):
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError:
            continue
        done += 1
    return done


class WebRtcTransport:
    """Links to peers over aiortc data channels; see the module docstring."""

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        ice_servers: Sequence[str] = (),
        tiers: Sequence[str] = ("L1", "L2", "L3"),
        profile: str = "",
        on_link_up: LinkUpHandler | None = None,
        on_link_down: LinkDownHandler | None = None,
        on_frame: FrameHandler | None = None,
        on_refused: RefusedHandler | None = None,
    ) -> None:
        """Configure; nothing is bound until `start` (or `async with`)."""
        sctp_receive.install()  # aiortc's receive path without needless rescans (guarded)
        self._identity = identity
        self._ice_servers = tuple(ice_servers)
        self._signer = Signer(identity, credentials, tiers=tuple(tiers), profile=profile)
        self._on_link_up = on_link_up
        self._on_link_down = on_link_down
        self._on_frame = on_frame
        self._on_refused = on_refused
        self._verifier = SignalingVerifier(credentials, self_id=identity.node_id)
        self._server = SignalingServer(self._on_offer, self._refuse, host=host, port=port)
        self._links: dict[str, _Link] = {}
        self._closed: dict[str, LinkInfo] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._refusals: Counter[str] = Counter()
        # Per peer, the newest timestamp of its verified offers and answers: an offer signed
        # before one we already acted on is a replay (e.g. captured before our restart, when
        # the verifier's nonce cache was empty), and must not tear down the live link.
        self._newest_signal: dict[str, int] = {}
        self._state = "new"
        # Test hook: rewrites each sealed offer before it is sent (e.g. to tamper with it).
        self.outgoing_signal_hook: Callable[[bytes], bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._identity.node_id

    @property
    def port(self) -> int:
        """The signaling TCP port actually bound (after `start`)."""
        return self._server.port

    @property
    def refusals(self) -> dict[str, int]:
        """Refused signaling attempts by reason: the verifier's, glare and framing ones."""
        merged = dict(self._verifier.refusals)
        for reason, count in self._refusals.items():
            merged[reason] = merged.get(reason, 0) + count
        return merged

    async def start(self) -> None:
        """Start the signaling server."""
        if self._state != "new":
            raise RuntimeError(f"transport is {self._state}, cannot start")
        await self._server.start()
        self._state = "running"

    async def close(self) -> None:
        """Close every link and the server; no callbacks fire from here on."""
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        await self._server.close()
        for link in list(self._links.values()):
            self._drop(link, ConnectError, "transport closed")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*list(self._closers), return_exceptions=True)
        for _ in range(3):  # let aiortc's own fire-and-forget flush tasks finish
            await asyncio.sleep(0)
        self._state = "closed"

    async def __aenter__(self) -> WebRtcTransport:
        """Start and return self."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close."""
        await self.close()

    # ------------------------------------------------------------------ the port

    async def connect(
        self, peer_id: str, address: str, port: int, *, timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        """Return once a link to `peer_id` is up; ConnectError (Refused/Timeout) otherwise.

        Idempotent and safe to call concurrently: calls for the same peer share one attempt,
        and a call returns at once if the link is already up. If the peer dials us at the
        same time and its offer wins the glare, this returns when that link is up.
        """
        if self._state != "running":
            raise ConnectError(peer_id, f"transport is {self._state}")
        if peer_id == self.node_id:
            raise ValueError("cannot connect to self")
        link = self._links.get(peer_id)
        if link is not None and link.state == "connected":
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(peer_id, set()).add(waiter)
        if link is None:
            link = self._new_link(peer_id, address, "dial")
            link.task = self._spawn(self._dial(link, port, timeout))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            current = self._links.get(peer_id)
            if current is not None and current.state == "connecting":
                self._drop(current, ConnectTimeout, f"no link after {timeout:g} s")
            raise ConnectTimeout(peer_id, f"no link after {timeout:g} s") from None
        finally:
            waiters = self._waiters.get(peer_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[peer_id]

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        """Send one frame; False if no open link (or its queue is full). ValueError over 256 KiB.

        Above HIGH_WATER bytes buffered in aiortc, frames wait in a per-peer queue (bounded
        by QUEUE_LIMIT_BYTES) that drains on "bufferedamountlow"; order per channel is kept.
        """
        if len(frame) > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}: chunk it")
        link = self._links.get(peer_id)
        if link is None or link.state != "connected":
            return False
        label = "urgent" if urgent else "sync"
        channel = link.channels.get(label)
        if channel is None or channel.readyState != "open":
            return False
        queue = link.queues[label]
        if queue or channel.bufferedAmount >= HIGH_WATER:
            if link.queued_bytes + len(frame) > QUEUE_LIMIT_BYTES:
                link.counts["dropped"] += 1
                return False
            queue.append(bytes(frame))
            link.queued_bytes += len(frame)
            return True
        return self._transmit(link, channel, label, bytes(frame))

    async def identify(self, address: str, port: int) -> str | None:
        """Return the node id of the mesh member whose signaling endpoint is address:port.

        None if nothing answers there, the answer does not verify, or it is this node.
        Static discovery uses it: bootstrap addresses carry no node id.
        """
        hello = self._signer.seal("hello", ANY_RECIPIENT, "")
        reply = await signaling_server.exchange(address, port, hello)
        if reply is None:
            return None
        try:
            answer = self._verifier.verify(reply, now_ms())
        except SignalingRefused as exc:
            self._refuse(address, exc.reason, counted=True)
            return None
        if answer.kind != "hello" or answer.sender == self.node_id:
            return None
        return answer.sender

    def disconnect(self, peer_id: str) -> None:
        """Close the link to `peer_id` if any (on_link_down fires if it was up)."""
        link = self._links.get(peer_id)
        if link is not None:
            self._drop(link, ConnectError, "disconnected locally")

    def links(self) -> dict[str, LinkInfo]:
        """Snapshot of every current link, plus the last closed one of peers without one."""
        current = {peer: link.info() for peer, link in self._links.items()}
        return {**{p: i for p, i in self._closed.items() if p not in current}, **current}

    # ------------------------------------------------------------------ links

    def _new_link(self, peer_id: str, address: str, role: str) -> _Link:
        servers = [RTCIceServer(urls=url) for url in self._ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        link = _Link(peer_id, address, pc, role)
        self._links[peer_id] = link

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._drop(link, ConnectError, f"connection {pc.connectionState}")

        return link

    def _wire(self, link: _Link, channel: RTCDataChannel) -> None:
        label = channel.label
        if link.state == "closed" or label not in CHANNELS or label in link.channels:
            log.warning("unexpected data channel %r from %s", label, link.peer_id)
            channel.close()
            return
        link.channels[label] = channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("open", lambda: self._maybe_up(link))
        channel.on("message", lambda data: self._received(link, label, data))
        channel.on("close", lambda: self._drop(link, ConnectError, f"{label} channel closed"))
        channel.on("bufferedamountlow", lambda: self._drain(link, label))
        if channel.readyState == "open":
            self._maybe_up(link)

    def _maybe_up(self, link: _Link) -> None:
        if link.state != "connecting" or self._links.get(link.peer_id) is not link:
            return
        for label in CHANNELS:
            channel = link.channels.get(label)
            if channel is None or channel.readyState != "open":
                return
        link.state = "connected"
        link.connected_since = time.time_ns() / 1e9
        _enlarge_receive_buffers(link.pc)
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        link.task = None
        log.info("link up: %s at %s (%s)", link.peer_id, link.address, link.role)
        self._call(self._on_link_up, link.peer_id, link.address)
        for waiter in self._waiters.get(link.peer_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        early, link.early = link.early, []
        for _label, data in early:
            if link.state == "connected":
                self._call(self._on_frame, link.peer_id, data)

    def _received(self, link: _Link, label: str, data: bytes | str) -> None:
        if link.state == "closed":
            return
        if isinstance(data, str):
            log.warning("text message from %s ignored (frames are binary)", link.peer_id)
            return
        link.counts["frames_in"] += 1
        link.counts["bytes_in"] += len(data)
        if label == "urgent":
            link.counts["urgent_in"] += 1
        if link.state == "connected":
            self._call(self._on_frame, link.peer_id, data)
        elif len(link.early) < EARLY_LIMIT:
            link.early.append((label, data))  # the peer saw LinkUp before we did
        else:
            link.counts["dropped"] += 1

    def _transmit(self, link: _Link, channel: RTCDataChannel, label: str, frame: bytes) -> bool:
        try:
            channel.send(frame)
        except InvalidStateError:
            return False
        if label == "urgent":
            link.counts["urgent_out"] += 1
            _prioritize(channel)
        link.counts["frames_out"] += 1
        link.counts["bytes_out"] += len(frame)
        return True

    def _drain(self, link: _Link, label: str) -> None:
        channel, queue = link.channels.get(label), link.queues[label]
        while queue and link.state == "connected" and channel is not None:
            if channel.readyState != "open" or channel.bufferedAmount >= HIGH_WATER:
                return
            frame = queue.popleft()
            link.queued_bytes -= len(frame)
            self._transmit(link, channel, label, frame)

    def _drop(
        self, link: _Link, error: type[ConnectError], reason: str, *, replaced: bool = False
    ) -> None:
        """Close `link` for good; fail pending connects unless a replacement takes over."""
        if link.state == "closed":
            return
        was_up = link.state == "connected"
        link.state = "closed"
        current = self._links.get(link.peer_id) is link
        if current:
            del self._links[link.peer_id]
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        link.task = None
        # Frames `send` accepted but never handed to aiortc are lost with the link: counted.
        link.counts["dropped"] += sum(len(q) for q in link.queues.values()) + len(link.early)
        for queue in link.queues.values():
            queue.clear()
        link.queued_bytes = 0
        link.early.clear()
        self._closed.pop(link.peer_id, None)
        self._closed[link.peer_id] = link.info()
        while len(self._closed) > CLOSED_KEPT:
            del self._closed[next(iter(self._closed))]
        closer = asyncio.ensure_future(self._close_pc(link.pc))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)
        if was_up:
            log.info("link down: %s (%s)", link.peer_id, reason)
            if self._state == "running":
                self._call(self._on_link_down, link.peer_id)
        else:
            log.info("link to %s not established: %s", link.peer_id, reason)
        if current and not replaced:
            for waiter in self._waiters.get(link.peer_id, ()):
                if not waiter.done():
                    waiter.set_exception(error(link.peer_id, reason))

    @staticmethod
    async def _close_pc(pc: RTCPeerConnection) -> None:
        try:
            await pc.close()
        except Exception:  # aiortc teardown of a half-built connection: nothing to save
            log.debug("error closing a peer connection", exc_info=True)

    # ------------------------------------------------------------------ signaling

    async def _dial(self, link: _Link, port: int, budget: float) -> None:
        """Offer, read and verify the answer, then wait out the budget for ICE/DTLS/SCTP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        pc = link.pc
        try:
            self._wire(link, pc.createDataChannel("sync", ordered=True))
            self._wire(link, pc.createDataChannel("urgent", ordered=True))
            await pc.setLocalDescription(await pc.createOffer())
            offer = self._signer.seal("offer", link.peer_id, pc.localDescription.sdp)
            if self.outgoing_signal_hook is not None:
                offer = self.outgoing_signal_hook(offer)
            remaining = max(0.1, min(signaling_server.IO_TIMEOUT_S, deadline - loop.time()))
            reply = await signaling_server.exchange(link.address, port, offer, timeout=remaining)
            if reply is None:
                if self.node_id > link.peer_id:
                    # It may have refused us as the glare winner: its offer then replaces
                    # this link (cancelling this task) within moments.
                    await asyncio.sleep(GLARE_GRACE_S)
                self._drop(link, ConnectRefused, "the peer closed signaling without an answer")
                return
            try:
                answer = self._verifier.verify(reply, now_ms())
            except SignalingRefused as exc:
                self._refuse(link.address, exc.reason, counted=True)
                self._drop(link, ConnectRefused, f"answer refused: {exc.reason}")
                return
            if answer.kind != "answer" or answer.sender != link.peer_id:
                self._refuse(link.address, "unexpected-answer")
                self._drop(link, ConnectRefused, f"answer from {answer.sender}, not the peer")
                return
            self._note_signal(answer.sender, answer.timestamp_ms)
            link.tiers, link.profile = answer.tiers, answer.profile
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unreachable port, bad reply, aiortc refusing the SDP, ...
            self._drop(link, ConnectError, f"signaling failed: {exc!r}")
            return
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        if link.state == "connecting":
            self._drop(link, ConnectTimeout, "ICE/DTLS/SCTP did not complete in time")

    async def _on_offer(self, data: bytes, address: str) -> bytes | None:
        """Verify an offer from `address`; return the sealed answer, or None to refuse."""
        if self._state != "running":
            return None
        try:
            offer = self._verifier.verify(data, now_ms())
        except SignalingRefused as exc:
            self._refuse(address, exc.reason, counted=True)
            return None
        peer_id = offer.sender
        if offer.kind == "hello" and peer_id != self.node_id:
            return self._signer.seal("hello", peer_id, "")
        if offer.kind != "offer" or peer_id == self.node_id:
            self._refuse(address, "unexpected-offer")
            return None
        if offer.timestamp_ms <= self._newest_signal.get(peer_id, -1):
            self._refuse(address, "replay")  # older than a signal of that peer we acted on
            return None
        self._note_signal(peer_id, offer.timestamp_ms)
        existing = self._links.get(peer_id)
        if existing is not None:
            if existing.role == "dial" and existing.state == "connecting":
                if self.node_id < peer_id:
                    self._refuse(address, "glare")  # our own offer wins
                    return None
                log.info("glare with %s: its offer wins, abandoning ours", peer_id)
            self._drop(existing, ConnectError, "superseded by the peer's offer", replaced=True)
        link = self._new_link(peer_id, address, "accept")
        link.tiers, link.profile = offer.tiers, offer.profile
        pc = link.pc
        pc.on("datachannel", lambda channel: self._wire(link, channel))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            if link.state != "connecting":
                return None  # superseded or closed meanwhile
            answer = self._signer.seal("answer", peer_id, pc.localDescription.sdp)
        except asyncio.CancelledError:
            self._drop(link, ConnectError, "signaling cancelled")
            raise
        except Exception as exc:
            if link.state != "closed":
                self._refuse(address, "bad-sdp")
                self._drop(link, ConnectError, f"cannot answer: {exc!r}")
            return None
        link.task = self._spawn(self._expire(link, ACCEPT_TIMEOUT_S))
        return answer

    def _note_signal(self, peer_id: str, timestamp_ms: int) -> None:
        """Remember the newest signed timestamp acted on from `peer_id` (bounded)."""
        self._newest_signal[peer_id] = max(timestamp_ms, self._newest_signal.get(peer_id, -1))
        if len(self._newest_signal) > MAX_REMEMBERED_SIGNALS:
            # Only members with thousands of keys get here: forget the oldest half (an
            # offer older than the verifier's window is refused as stale anyway).
            keep = sorted(self._newest_signal.items(), key=lambda kv: kv[1])
            self._newest_signal = dict(keep[len(keep) // 2 :])

    async def _expire(self, link: _Link, after: float) -> None:
        await asyncio.sleep(after)
        if link.state == "connecting":
            self._drop(link, ConnectTimeout, f"no link {after:g} s after answering")

    def _refuse(self, address: str, reason: str, *, counted: bool = False) -> None:
        """Log, count (unless the verifier already did) and report one refusal."""
        if not counted:
            self._refusals[reason] += 1
        log.debug("refused signaling with %s: %s", address, reason)  # on_refused logs it
        self._call(self._on_refused, address, reason)

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a failing callback must not break aiortc's event dispatch
            log.exception("transport callback %r failed", callback)
