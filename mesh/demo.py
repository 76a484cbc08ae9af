"""`memmesh demo`: three real nodes on this machine find each other and replicate.

Each node is a separate `memmesh run` process with its own data directory. They discover
each other over mDNS, prove they belong to the same mesh, connect over WebRTC data
channels, elect a hub and replicate memories (with embeddings, searched on another node);
the hub is stopped, the two others elect a new one and go on replicating; then the demo
stops them cleanly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.control import call, daemon_running
from mesh.joining import init_node, token_for
from mesh.profiles import SETTINGS, Profile

NAMES = ("laptop", "phone", "server")
TOY_DIM = 256


def toy_embedding(text: str, dim: int = TOY_DIM) -> npt.NDArray[np.float32]:
    """Return a deterministic bag-of-words vector: a stand-in for a real embedding model."""
    vector = np.zeros(dim, dtype=np.float32)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % dim] += 1.0
    return vector


def _embedding_file(root: Path, name: str, text: str) -> str:
    path = root / f"{name}.npy"
    np.save(path, toy_embedding(text))
    return str(path)


def lan_address() -> str:
    """Return a non-loopback IPv4 address of this machine (WebRTC needs one)."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.") and ip.network_prefix:
                return ip.ip
    raise RuntimeError("no non-loopback IPv4 address: WebRTC host candidates need one")


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _cli(data_dir: Path, *argv: str) -> Any:
    reply = call(
        data_dir, "cli", argv=[argv[0], "--data-dir", str(data_dir), *argv[1:]], cwd=os.getcwd()
    )
    if reply.get("error"):
        raise RuntimeError(reply["error"])
    out = reply["stdout"]
    return json.loads(out) if out.strip().startswith(("{", "[")) else {"text": out}


def _has(data_dir: Path, item_id: str) -> bool:
    reply = call(
        data_dir, "cli", argv=["get", "--data-dir", str(data_dir), item_id, "--json"], cwd="/"
    )
    return reply.get("error") is None


def _wait_hub(dirs: dict[str, Path], names: Sequence[str], old: str | None) -> dict[str, Any]:
    """Wait until every node of `names` follows the same hub, other than `old`; return it."""
    found: list[dict[str, Any]] = []

    def agreed() -> bool:
        hubs = [call(dirs[n], "status")["hub"] for n in names]
        first = hubs[0]
        if first is None or first["id"] == old:
            return False
        if any(h is None or (h["id"], h["term"]) != (first["id"], first["term"]) for h in hubs):
            return False
        found.append(first)
        return True

    _wait("the nodes to agree on a hub", agreed, 20)
    return found[-1]


def run_demo(*, keep: bool = False) -> int:
    """Run the demo; return the exit status."""
    root = Path(tempfile.mkdtemp(prefix="memmesh-demo-"))
    dirs = {name: root / name for name in NAMES}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        address = lan_address()
        print(f"memmesh demo: three nodes on this machine ({address}), data in {root}\n")
        print("== 1. Create a mesh on the laptop; the phone and server join with its token")
        first = init_node(dirs["laptop"])
        token = token_for(dirs["laptop"])
        print(f"  laptop {first.identity.node_id} created mesh {first.credentials.mesh_id}")
        for name in NAMES[1:]:
            setup = init_node(dirs[name], join=token)
            print(f"  {name:<6} {setup.identity.node_id} joined with the token")

        print("\n== 2. Start three daemons (separate processes)")
        launched = time.monotonic()
        for name in NAMES:
            log = (root / f"{name}.log").open("wb")
            processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mesh",
                    "run",
                    "--data-dir",
                    str(dirs[name]),
                    "--interface",
                    address,
                    "--log-level",
                    "info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for name in NAMES:
            _wait(f"{name} to start", functools.partial(daemon_running, dirs[name]), 30)
            print(f"  {name} is up (log: {root / (name + '.log')})")

        print("\n== 3. Discovery (mDNS) and WebRTC links")

        def linked(name: str) -> bool:
            peers = call(dirs[name], "peers")
            return sum(1 for p in peers if p["state"] == "connected") >= len(NAMES) - 1

        _wait("every node to link to the two others", lambda: all(map(linked, NAMES)), 60)
        # Timed from the first launch: the links often form while the others still start.
        print(f"  full mesh {time.monotonic() - launched:.1f} s after the first daemon started:")
        for name in NAMES:
            for peer in call(dirs[name], "peers"):
                rtt = "-" if peer["rtt_ms"] is None else f"{peer['rtt_ms']:.1f} ms"
                print(f"    {name:<6} -> {peer['id']} {peer['state']} rtt {rtt}")

        print("\n== 4. The nodes elect a hub (it relays routine traffic and gathers stats)")
        hub = _wait_hub(dirs, NAMES, None)
        names = {call(dirs[n], "status")["node_id"]: n for n in NAMES}
        print(f"  every node follows {names[hub['id']]} ({hub['id']}), term {hub['term']}")

        print("\n== 5. Write memories on the laptop; watch them arrive")
        memories = [
            ("L1", "pref-tea", "the user prefers green tea in the afternoon"),
            ("L2", "ep-review", "design review on tuesday approved the sync plan"),
            ("L3", "fact-yjs", "yjs documents converge without a central server"),
        ]
        print("  (each carries an embedding; a toy bag-of-words one stands in for a model)")
        for tier, item_id, content in memories:
            started = time.monotonic()
            vector = _embedding_file(root, item_id, content)
            _cli(
                dirs["laptop"],
                *("put", "--tier", tier, "--id", item_id, "--content", content),
                *("--embedding-file", vector),
            )
            for name in NAMES[1:]:
                _wait(f"{item_id} on {name}", functools.partial(_has, dirs[name], item_id), 20)
            print(
                f"  {tier}/{item_id} on all nodes after "
                f"{(time.monotonic() - started) * 1000:.0f} ms: {content!r}"
            )

        print("\n== 6. A CRITICAL write from the phone goes peer to peer at once")
        started = time.monotonic()
        _cli(
            dirs["phone"],
            "put",
            "--tier",
            "L1",
            "--id",
            "alert-battery",
            "--content",
            "phone battery at 5%: pause uploads",
            "--priority",
            "critical",
            "--ack",
            "all",
        )
        _wait("alert on server", lambda: _has(dirs["server"], "alert-battery"), 20)
        print(f"  acknowledged by every node after {(time.monotonic() - started) * 1000:.0f} ms")

        print("\n== 7. Every node holds the same memory")
        for name in NAMES:
            status = call(dirs[name], "status")
            counts = ", ".join(f"{t}={v['items']}" for t, v in status["tiers"].items())
            digest = status["tiers"]["L1"]["digest"][:12]
            print(f"  {name:<6} {counts}  L1 digest {digest}")

        question = "which tea does the user like?"
        print(f"\n== 8. Search by meaning on the server: {question!r}")
        profile = Profile(call(dirs["laptop"], "status")["profile"])
        l3_codec = SETTINGS[profile].l3_codec.value
        print(f"  (embeddings replicate in their tier's codec; the laptop's {profile} profile:")
        print(f"   L1 f32, L2 f16, L3 {l3_codec}; the search runs on the server's own copy)")
        query = _embedding_file(root, "query", question)
        hits = _cli(dirs["server"], "search", "--embedding-file", query, "-k", "3", "--json")
        for hit in hits:
            print(f"    {hit['score']:.3f}  {hit['tier']}/{hit['id']}: {hit.get('content', '')!r}")

        old_hub = names[hub["id"]]
        print(f"\n== 9. Failover: stop the hub ({old_hub}); the others elect a new one")
        started = time.monotonic()
        processes[old_hub].send_signal(signal.SIGTERM)
        processes[old_hub].wait(timeout=20)
        rest = [n for n in NAMES if n != old_hub]
        new_hub = _wait_hub(dirs, rest, hub["id"])
        print(
            f"  new hub {names[new_hub['id']]}, term {new_hub['term']}, "
            f"{time.monotonic() - started:.1f} s after the stop"
        )
        started = time.monotonic()
        _cli(
            dirs[rest[0]],
            "put",
            "--tier",
            "L1",
            "--id",
            "after-failover",
            "--content",
            "replication goes on without the old hub",
        )
        _wait("the write on the other node", lambda: _has(dirs[rest[1]], "after-failover"), 20)
        print(
            f"  {rest[0]} -> {rest[1]}: L1/after-failover arrived after "
            f"{(time.monotonic() - started) * 1000:.0f} ms"
        )
        return 0
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"\nmemmesh demo: failed: {exc}", file=sys.stderr)
        for name in processes:
            log_path = root / f"{name}.log"
            if log_path.exists():
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {name}.log:\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        if processes:
            print("\n== 10. Stop the daemons (SIGTERM: flush and close)")
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                code = process.wait(timeout=20)
                print(f"  {name} stopped (exit {code})")
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGUSR2)  # task stacks into its log, for the report
                time.sleep(0.5)
                process.kill()
                print(f"  {name} did not stop in time: killed")
        if keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
