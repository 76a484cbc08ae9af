"""Child process of the LAN tests: dial daemons with the identity and mesh of a data dir.

Usage: python _dial_child.py DATA_DIR PEER_ID@ADDRESS:PORT ...   (dialled concurrently)

What a node of another mesh (or one set up with a wrong token) does when it knows a
daemon's address, e.g. from a bootstrap list: it offers a WebRTC link with its own
credentials. mDNS alone would never get it this far (it ignores other meshes' adverts).
Prints one JSON line per target: {"peer", "ok", "error"}; exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from mesh.joining import load_setup
from mesh.webrtc import ConnectError, WebRtcTransport


async def main(data_dir: Path, targets: list[str]) -> None:
    """Try each target once and report."""
    setup = load_setup(data_dir)
    transport = WebRtcTransport(
        setup.identity, setup.credentials, host=os.environ.get("DIAL_HOST", "0.0.0.0")
    )

    async def attempt(target: str) -> None:
        peer, where = target.split("@")
        address, port = where.rsplit(":", 1)
        try:
            await transport.connect(peer, address, int(port), timeout=4.0)
        except ConnectError as exc:
            result = {"peer": peer, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            result = {"peer": peer, "ok": True, "error": None}
        print(json.dumps(result), flush=True)

    async with transport:
        await asyncio.gather(*(attempt(target) for target in targets))


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MM_LOG", "WARNING"), stream=sys.stderr)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
