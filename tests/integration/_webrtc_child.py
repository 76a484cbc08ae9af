"""Child process of the WebRTC integration tests: one WebRtcTransport, driven over stdin/stdout.

Usage: python _webrtc_child.py SEED_HEX SECRET_HEX PORT [--tamper]

It binds the signaling server on 0.0.0.0:PORT inside its network namespace and prints one
JSON object per line for everything that happens ("ready", "link_up", "link_down", "frame",
"refused", and the replies to commands). Commands arrive as JSON lines on stdin:

  {"cmd": "connect", "peer": ID, "address": A, "port": P[, "timeout": S]}
                                                           -> "connected" {ms} | "connect_failed"
  {"cmd": "echo", "peer": ID, "count": N, "big": BYTES}    -> "echo" {ok, rtt_ms, big_ms}
  {"cmd": "burst", "peer": ID, "count": N, "size": S}     -> "burst" {ok, in_order, ms, ...}
  {"cmd": "disconnect", "peer": ID}                        -> "disconnected"
  {"cmd": "links"}                                         -> "links" {links, refusals}
  {"cmd": "quit"}                                          -> closes the transport, exits

Frames: the first byte says what a frame is. "S"/"U" ask the receiver to echo the frame on
the "sync"/"urgent" channel, with the first byte lowered ("s"/"u"); the echo completes
the sender's round trip. `--tamper` flips one character inside the SDP of every sealed
offer this process sends (after sealing, as an attacker on the path would).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

from mesh import signaling_server
from mesh.identity import NodeIdentity
from mesh.trust import MeshCredentials
from mesh.webrtc import ConnectError, WebRtcTransport


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line and flush."""
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def tamper(sealed: bytes) -> bytes:
    """Flip the case of one letter inside the SDP of a sealed offer (stays valid JSON)."""
    start = sealed.index(b'"sdp":"') + len(b'"sdp":"')
    data = bytearray(sealed)
    for i in range(start + 40, len(data)):
        if chr(data[i]).isalpha() and data[i - 1] != ord("\\"):  # not an escape like \r
            data[i] ^= 0x20
            return bytes(data)
    raise AssertionError("no letter to flip in the SDP")


class Child:
    """Runs the transport and the command loop."""

    def __init__(self, seed: bytes, secret: bytes, port: int, tampering: bool) -> None:
        self.transport = WebRtcTransport(
            NodeIdentity.from_seed(seed),
            MeshCredentials(secret),
            port=port,
            on_link_up=lambda peer, address: emit("link_up", peer=peer, address=address),
            on_link_down=lambda peer: emit("link_down", peer=peer),
            on_frame=self.frame,
            on_refused=lambda address, reason: emit("refused", address=address, reason=reason),
        )
        self.sent_offers: list[bytes] = []  # as they left, for the `replay` command
        self.transport.outgoing_signal_hook = self.record_offer
        self.tampering = tampering
        self.pending: dict[bytes, asyncio.Future[float]] = {}
        self.burst_arrivals: list[int] = []

    def record_offer(self, sealed: bytes) -> bytes:
        """Keep each sealed offer as sent (tampered with under --tamper)."""
        if self.tampering:
            sealed = tamper(sealed)
        self.sent_offers.append(sealed)
        return sealed

    def frame(self, peer: str, data: bytes) -> None:
        """Echo requests; complete round trips for replies."""
        kind = data[:1]
        if kind in (b"S", b"U"):
            self.transport.send(peer, kind.lower() + data[1:], urgent=kind == b"U")
        elif kind in (b"s", b"u"):
            if data[1:6] == b"burst":
                self.burst_arrivals.append(int.from_bytes(data[6:10], "big"))
            future = self.pending.pop(data[1:], None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
        else:
            emit("frame", peer=peer, size=len(data))

    async def round_trip(self, peer: str, body: bytes, urgent: bool) -> float:
        """Send one echo request and return its round-trip time in ms."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending[body] = future
        start = time.perf_counter()
        if not self.transport.send(peer, (b"U" if urgent else b"S") + body, urgent=urgent):
            raise RuntimeError("send refused: no open link")
        end = await asyncio.wait_for(future, 10.0)
        return (end - start) * 1000.0

    async def echo(self, peer: str, count: int, big: int) -> None:
        """Measure small-frame round trips on both channels, then one big frame on each."""
        rtt: dict[str, list[float]] = {"sync": [], "urgent": []}
        big_ms: dict[str, float] = {}
        try:
            for i in range(count):
                for label in ("sync", "urgent"):
                    body = f"{label}-{i}-".encode() + os.urandom(32)
                    rtt[label].append(await self.round_trip(peer, body, label == "urgent"))
            for label in ("sync", "urgent"):
                body = os.urandom(big - 1)  # plus the kind byte: exactly `big` bytes
                big_ms[label] = await self.round_trip(peer, body, label == "urgent")
        except (TimeoutError, RuntimeError) as exc:
            emit("echo", ok=False, error=repr(exc), rtt_ms=rtt)
            return
        emit("echo", ok=True, rtt_ms=rtt, big_ms=big_ms)

    async def burst(self, peer: str, count: int, size: int) -> None:
        """Send `count` sync echo requests back to back while timing urgent round trips."""
        self.burst_arrivals = []
        futures = []
        max_queued = 0
        start = time.perf_counter()
        for i in range(count):
            body = b"burst" + i.to_bytes(4, "big") + bytes(size - 10)
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            self.pending[body] = future
            futures.append(future)
            if not self.transport.send(peer, b"S" + body):
                emit("burst", ok=False, error=f"send {i} refused")
                return
            max_queued = max(max_queued, self.transport.links()[peer].queued_bytes)
        urgent: list[float] = []
        while not all(f.done() for f in futures) and len(urgent) < 50:
            urgent.append(await self.round_trip(peer, os.urandom(16), True))
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(asyncio.gather(*futures), 60.0)
        except TimeoutError:
            emit("burst", ok=False, error="echoes missing", got=len(self.burst_arrivals))
            return
        elapsed = time.perf_counter() - start
        emit(
            "burst",
            ok=True,
            in_order=self.burst_arrivals == list(range(count)),
            ms=elapsed * 1000.0,
            mbytes_per_s=2 * count * size / elapsed / 1e6,
            max_queued=max_queued,
            urgent_rtt_ms=urgent,
        )

    async def command(self, line: str) -> bool:
        """Run one command; False to quit."""
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "connect":
            start = time.perf_counter()
            try:
                await self.transport.connect(
                    cmd["peer"], cmd["address"], cmd["port"], timeout=cmd.get("timeout", 10.0)
                )
            except (ConnectError, ValueError) as exc:
                emit("connect_failed", peer=cmd["peer"], error=repr(exc))
            else:
                emit("connected", peer=cmd["peer"], ms=(time.perf_counter() - start) * 1000.0)
        elif name == "echo":
            await self.echo(cmd["peer"], cmd["count"], cmd["big"])
        elif name == "burst":
            await self.burst(cmd["peer"], cmd["count"], cmd["size"])
        elif name == "replay":  # send an offer this child sent before, as an attacker would
            try:
                answer = await signaling_server.exchange(
                    cmd["address"], cmd["port"], self.sent_offers[cmd["index"]]
                )
            except (OSError, TimeoutError) as exc:
                emit("replayed", answered=False, error=repr(exc))
            else:
                emit("replayed", answered=answer is not None)
        elif name == "disconnect":
            self.transport.disconnect(cmd["peer"])
            emit("disconnected", peer=cmd["peer"])
        elif name == "links":
            links = {p: dataclasses.asdict(i) for p, i in self.transport.links().items()}
            emit("links", links=links, refusals=self.transport.refusals)
        elif name == "quit":
            return False
        return True

    async def run(self) -> None:
        """Serve until stdin says quit or closes; commands may overlap (e.g. two connects)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        running: set[asyncio.Task[bool]] = set()
        async with self.transport:
            emit("ready", node_id=self.transport.node_id, port=self.transport.port)
            while line := (await reader.readline()).decode():
                if json.loads(line)["cmd"] == "quit":
                    break
                task = asyncio.create_task(self.command(line))
                running.add(task)
                task.add_done_callback(running.discard)
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        emit("closed", leftover_tasks=[repr(t) for t in leftover])


def main() -> None:
    """Parse the arguments and run."""
    logging.basicConfig(level=os.environ.get("MM_LOG", "WARNING"), stream=sys.stderr)
    seed, secret, port = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    asyncio.run(Child(seed, secret, port, "--tamper" in sys.argv[4:]).run())


if __name__ == "__main__":
    main()
