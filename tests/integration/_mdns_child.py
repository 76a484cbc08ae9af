"""Child process of the mDNS test: runs MdnsDiscovery and prints one JSON line per event.

Usage: python _mdns_child.py NODE_ID MESH_ID ADDRESS PORT TIERS

Binds mDNS to ADDRESS only. Lines: {"event": "ready"} once registered, "found" (with the
record), "lost" (node id), "ignored" (the other-mesh count when it changes), "closed".
SIGUSR1 re-advertises with PORT + 1; SIGTERM closes gracefully (goodbye packets).
Every line carries "t", the system-wide monotonic clock, so the parent can measure latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from typing import Any

from discovery.mdns import MdnsDiscovery
from discovery.records import PeerRecord


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line and flush."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def main(node_id: str, mesh_id: str, address: str, port: int, tiers: str) -> None:
    """Run discovery until SIGTERM."""
    me = PeerRecord(node_id, mesh_id, address, port, tiers=tuple(tiers.split(",")))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bump = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, bump.set)
    discovery = MdnsDiscovery(
        me,
        interfaces=[address],
        on_found=lambda r: emit("found", record=dataclasses.asdict(r)),
        on_lost=lambda n: emit("lost", node_id=n),
    )
    emit("starting")
    async with discovery:
        emit("ready")
        ignored = 0
        while not stop.is_set():
            if bump.is_set():
                bump.clear()
                await discovery.update(dataclasses.replace(discovery.me, port=port + 1))
                emit("updated", port=port + 1)
            if discovery.ignored_other_mesh != ignored:
                ignored = discovery.ignored_other_mesh
                emit("ignored", count=ignored)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    emit("closed")


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], int(args[3]), args[4]))
