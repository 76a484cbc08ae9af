"""Child of the net benchmark: a bare `WebRtcTransport` peer, the raw data-channel baseline.

Usage (inside a netlab namespace): ``python -m bench._net_raw DATA_DIR ADDRESS``

DATA_DIR holds a node key and the mesh file (`mesh.joining.init_node`), so the transport
signals exactly as a daemon does (sealed offers, same aiortc channels), but nothing sits on
top of it: no Node, no store, no codec. On start it prints one JSON line
``{"node_id", "port", "started_at"}``; then it reads one JSON command per stdin line and
answers each with one JSON line on stdout:

- ``{"op": "connect", "peer", "address", "port"}`` -> ``{"seconds"}``
- ``{"op": "echo", "peer", "count", "size", "urgent", "gap_s"}`` -> ``{"rtt_s": [...]}``: one
  frame out, the peer echoes it back, the next frame leaves only when the echo is in and
  `gap_s` (default 0) has passed.
- ``{"op": "stream", "peer", "bytes", "frame"}`` -> ``{"seconds", "bytes"}``: frames of
  `frame` bytes, back to back, until the peer confirms it received every byte.
- ``{"op": "burst", "peer", "count", "size"}`` -> ``{"seconds"}``: `count` small frames,
  time until the peer confirms it got them all.
- ``{"op": "links"}`` -> ``{peer: LinkInfo fields}``;  ``{"op": "quit"}`` ends the process.

Every peer also answers the other side's probes: it echoes ``E`` frames and confirms ``F``
(end of stream / burst) frames with the byte and frame counts received since the last one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from mesh.joining import load_setup
from mesh.webrtc import WebRtcTransport

ECHO, ECHOED, DATA, FINISH, FINISHED = b"E", b"e", b"D", b"F", b"f"
PACE_QUEUED_BYTES = 4 << 20  # the sender waits while the transport queues more than this


class RawPeer:
    """One bare transport plus the probe protocol above."""

    def __init__(self, data_dir: Path, address: str) -> None:
        """Load the identity and mesh credentials of `data_dir`."""
        setup = load_setup(data_dir)
        self.transport = WebRtcTransport(
            setup.identity, setup.credentials, host=address, on_frame=self._frame
        )
        self._waiters: dict[bytes, asyncio.Future[bytes]] = {}
        self._received_bytes = 0
        self._received_frames = 0

    def _frame(self, peer_id: str, data: bytes) -> None:
        kind = data[:1]
        if kind == ECHO:
            self.transport.send(peer_id, ECHOED + data[2:], urgent=data[1:2] == b"U")
        elif kind == DATA:
            self._received_bytes += len(data)
            self._received_frames += 1
        elif kind == FINISH:
            report = json.dumps(
                {"bytes": self._received_bytes, "frames": self._received_frames}
            ).encode()
            self._received_bytes = self._received_frames = 0
            self.transport.send(peer_id, FINISHED + data[1:9] + report)
        elif kind in (ECHOED, FINISHED):
            waiter = self._waiters.pop(data[1:9], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(data[9:])

    def _expect(self, tag: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[tag] = future
        return future

    async def _paced_send(self, peer: str, frame: bytes) -> None:
        while True:
            info = self.transport.links().get(peer)
            if info is None or info.state != "connected":
                raise ConnectionError(f"no link to {peer}")
            if info.queued_bytes < PACE_QUEUED_BYTES and self.transport.send(peer, frame):
                return
            await asyncio.sleep(0.0005)

    async def command(self, request: dict[str, Any]) -> Any:
        """Run one command and return its JSON-able result."""
        op = request["op"]
        if op == "connect":
            began = time.perf_counter()
            await self.transport.connect(
                request["peer"], request["address"], int(request["port"]), timeout=10.0
            )
            return {"seconds": time.perf_counter() - began, "at": time.time()}
        if op == "echo":
            peer, urgent = request["peer"], bool(request.get("urgent"))
            pad = b"U" if urgent else b"N"
            size = max(10, int(request["size"]))
            gap_s = float(request.get("gap_s", 0.0))  # quiet before each frame
            rtts = []
            for i in range(int(request["count"])):
                if gap_s:
                    await asyncio.sleep(gap_s)
                tag = i.to_bytes(8, "big")
                future = self._expect(tag)
                began = time.perf_counter()
                self.transport.send(peer, ECHO + pad + tag + bytes(size - 10), urgent=urgent)
                await asyncio.wait_for(future, 5.0)
                rtts.append(time.perf_counter() - began)
            return {"rtt_s": rtts}
        if op in ("stream", "burst"):
            peer = request["peer"]
            if op == "stream":
                size, total = int(request["frame"]), int(request["bytes"])
                count = max(1, total // size)
            else:
                size, count = int(request["size"]), int(request["count"])
            body = DATA + os.urandom(size - 1)
            tag = os.urandom(8)
            future = self._expect(tag)
            began = time.perf_counter()
            for _ in range(count):
                await self._paced_send(peer, body)
            await self._paced_send(peer, FINISH + tag)
            report = json.loads(await asyncio.wait_for(future, 300.0))
            seconds = time.perf_counter() - began
            return {"seconds": seconds, "frames": count, "frame_bytes": size, **report}
        if op == "links":
            return {p: dataclasses.asdict(i) for p, i in self.transport.links().items()}
        raise ValueError(f"unknown op {op!r}")


async def main(data_dir: Path, address: str) -> None:
    """Serve commands from stdin until `quit` or end of input."""
    started = time.time()
    peer = RawPeer(data_dir, address)
    loop = asyncio.get_running_loop()
    async with peer.transport:
        ready = {"node_id": peer.transport.node_id, "port": peer.transport.port}
        print(json.dumps({**ready, "started_at": started}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                if not line:
                    return
                continue
            request = json.loads(line)
            if request.get("op") == "quit":
                return
            try:
                reply = {"ok": True, "result": await peer.command(request)}
            except Exception as exc:  # reported to the parent, which decides
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MM_LOG", "WARNING"), stream=sys.stderr)
    logging.getLogger("aioice").setLevel(logging.WARNING)
    profile_to = os.environ.get("MM_BENCH_PROFILE")
    if profile_to:  # cProfile of the whole child, dumped for the parent to summarise
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
        finally:
            profiler.disable()
            profiler.dump_stats(profile_to)
    else:
        asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
