"""WebRTC transport between real processes in two network namespaces.

Loopback is not an ICE host candidate, so each endpoint runs as its own process
(`_webrtc_child.py`) in its own namespace of a `tests.netlab` LAN (10.77.0.N). The test
drives the children over stdin and reads their JSON event lines.

Link loss: a SIGKILLed peer sends nothing, so the survivor learns of it only when ICE
consent freshness expires (aioice: a check every ~5 s, six failures in a row: ~30 s).
That wait is tested once (`test_link_down_when_peer_is_killed`); a peer that closes its
transport sends an SCTP ABORT and is reported down at once
(`test_disconnect_reconnect_and_peer_close`); a restarted peer replaces its stale link.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.identity import NodeIdentity
from tests import netlab

pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("_webrtc_child.py")
ROOT = Path(__file__).resolve().parents[2]
PORT = 7400
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
BIG = 200 * 1024
STARTUP_S = 30.0
NOISE = ("Traceback", "never retrieved", "destroyed but it is pending", "Error")
CONSENT_EXPIRY_S = 45.0  # ~30 s of failed consent checks plus scheduling slack


def _require_netlab() -> None:
    reason = netlab.available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"network namespaces are required in CI: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


class Peer:
    """One child process: send it commands, wait for its events."""

    def __init__(
        self, net: netlab.Netlab, host: netlab.Host, seed: int, secret: bytes, *extra: str
    ) -> None:
        self.host = host
        self.node_id = NodeIdentity.from_seed(bytes([seed]) * 32).node_id
        argv = [
            sys.executable,
            str(CHILD),
            (bytes([seed]) * 32).hex(),
            secret.hex(),
            str(PORT),
            *extra,
        ]
        self.proc = net.spawn(
            host,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []  # every event, in order
        self.backlog: list[dict[str, Any]] = []  # events no `expect` has claimed yet
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    def send(self, **cmd: Any) -> None:
        """Write one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        """Return the oldest unclaimed event named `event`, waiting up to `timeout` for it."""
        for got in self.backlog:
            if got["event"] == event:
                self.backlog.remove(got)
                return got
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"{self.host.name}: no {event!r} in {timeout:g} s; seen "
                    f"{[e['event'] for e in self.seen]}; stderr {self.stderr[-20:]}"
                )
            self.seen.append(got)
            if got["event"] == event:
                return got
            self.backlog.append(got)
            if got["event"] == "eof":
                pytest.fail(
                    f"{self.host.name} exited waiting for {event!r}: stderr {self.stderr[-20:]}"
                )

    def drain(self) -> list[dict[str, Any]]:
        """Record and return every event already received."""
        while True:
            try:
                got = self.events.get_nowait()
            except queue.Empty:
                return self.seen
            self.seen.append(got)
            self.backlog.append(got)

    def connect(self, other: Peer) -> None:
        """Ask this child to dial `other`."""
        self.send(cmd="connect", peer=other.node_id, address=other.host.address, port=PORT)

    def links(self) -> dict[str, Any]:
        """Return the child's links() and refusals."""
        self.send(cmd="links")
        return self.expect("links")

    def quit(self) -> dict[str, Any]:
        """Close the transport and exit; return the "closed" event (with leftover tasks).

        Also checks that asyncio complained about nothing (pending tasks destroyed,
        exceptions never retrieved, tracebacks).
        """
        self.send(cmd="quit")
        closed = self.expect("closed")
        assert self.proc.wait(timeout=10) == 0
        self._stderr_reader.join(timeout=5)
        noise = [line for line in self.stderr if any(word in line for word in NOISE)]
        assert not noise, noise
        return closed


@pytest.fixture
def lan() -> Iterator[netlab.Netlab]:
    _require_netlab()
    with netlab.lab(2) as net:
        yield net


def _pair(net: netlab.Netlab, *extra_b: str, secret_b: bytes = SECRET) -> tuple[Peer, Peer]:
    a = Peer(net, net.hosts[0], 1, SECRET)
    b = Peer(net, net.hosts[1], 2, secret_b, *extra_b)
    a.expect("ready", STARTUP_S)
    b.expect("ready", STARTUP_S)
    return a, b


def _quit_cleanly(*peers: Peer) -> None:
    for peer in peers:
        assert peer.quit()["leftover_tasks"] == []


def test_connect_and_echo_both_ways_on_both_channels(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    b.connect(a)
    b.connect(a)  # concurrent and idempotent: one attempt, both calls return
    connected = [b.expect("connected"), b.expect("connected")]
    up_b = b.expect("link_up")
    up_a = a.expect("link_up")
    assert up_b["peer"] == a.node_id and up_b["address"] == a.host.address
    assert up_a["peer"] == b.node_id and up_a["address"] == b.host.address

    for first, second in ((b, a), (a, b)):
        first.send(cmd="echo", peer=second.node_id, count=20, big=BIG)
        echo = first.expect("echo", 30)
        assert echo["ok"], echo
        print(
            f"\n{first.host.name}->{second.host.name}: connect {connected[0]['ms']:.1f} ms, "
            f"rtt median sync {sorted(echo['rtt_ms']['sync'])[10]:.2f} ms, "
            f"urgent {sorted(echo['rtt_ms']['urgent'])[10]:.2f} ms, "
            f"200 KiB round trip {echo['big_ms']['sync']:.0f} ms"
        )

    info = b.links()["links"][a.node_id]
    assert info["state"] == "connected" and info["role"] == "dial"
    # 21 requests + 21 echoes per channel and direction.
    assert info["frames_out"] == info["frames_in"] == 84
    assert info["urgent_frames_out"] == info["urgent_frames_in"] == 42
    assert info["bytes_in"] >= 4 * BIG and info["tiers"] == ["L1", "L2", "L3"]
    assert info["rtt_ms"] is not None and info["rtt_ms"] > 0  # measured (figures: bench net)

    # 6 MiB back to back: past the high-water mark, so frames wait in our queue and drain.
    b.send(cmd="burst", peer=a.node_id, count=96, size=64 * 1024)
    burst = b.expect("burst", 60)
    assert burst["ok"] and burst["in_order"], burst
    assert burst["max_queued"] > 0
    print(
        f"burst: {burst['mbytes_per_s']:.1f} MB/s echoed, urgent rtt under load "
        f"{[round(x) for x in burst['urgent_rtt_ms']]} ms, whole burst {burst['ms']:.0f} ms"
    )
    # Urgent frames overtake the queued sync bytes (median well under the burst's duration).
    assert sorted(burst["urgent_rtt_ms"])[len(burst["urgent_rtt_ms"]) // 2] < burst["ms"] / 4

    assert [e["event"] for e in b.drain() + a.drain()].count("link_up") == 2
    _quit_cleanly(a, b)


def test_failed_connects_leave_nothing_behind(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    # Nobody listens on that port: refused at once.
    b.send(cmd="connect", peer=a.node_id, address=a.host.address, port=PORT + 1)
    assert "ConnectError" in b.expect("connect_failed", 5)["error"]
    # Nobody at that address: the attempt times out.
    b.send(cmd="connect", peer="00" * 8, address="10.77.0.99", port=PORT, timeout=1.5)
    assert "ConnectTimeout" in b.expect("connect_failed", 5)["error"]
    links = b.links()["links"]
    assert {info["state"] for info in links.values()} == {"closed"}
    b.connect(a)  # and a good attempt after the failures works
    b.expect("connected")
    _quit_cleanly(a, b)


def test_other_mesh_is_refused(lan: netlab.Netlab) -> None:
    a, b = _pair(lan, secret_b=OTHER_SECRET)
    b.connect(a)
    failed = b.expect("connect_failed")
    assert "refused" in failed["error"].lower() or "without an answer" in failed["error"]
    refused = a.expect("refused")
    assert refused == {**refused, "address": b.host.address, "reason": "wrong-mesh"}
    state = a.links()
    assert state["links"] == {} and state["refusals"]["wrong-mesh"] == 1
    assert b.links()["links"][a.node_id]["state"] == "closed"
    assert not [e for e in a.drain() + b.drain() if e["event"] in ("link_up", "frame")]
    _quit_cleanly(a, b)


def test_tampered_offer_is_refused(lan: netlab.Netlab) -> None:
    a, b = _pair(lan, "--tamper")
    b.connect(a)
    b.expect("connect_failed")
    assert a.expect("refused")["reason"] == "bad-mac"
    state = a.links()
    assert state["links"] == {} and state["refusals"]["bad-mac"] == 1
    assert not [e for e in a.drain() + b.drain() if e["event"] in ("link_up", "frame")]
    _quit_cleanly(a, b)


def test_glare_ends_with_one_link(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    a.connect(b)
    b.connect(a)
    assert a.expect("connected")["peer"] == b.node_id
    assert b.expect("connected")["peer"] == a.node_id
    time.sleep(1.5)  # longer than the glare grace: any second link would show up by now
    winner = min(a, b, key=lambda p: p.node_id)
    for me, other in ((a, b), (b, a)):
        state = me.links()
        assert list(state["links"]) == [other.node_id]
        link = state["links"][other.node_id]
        assert link["state"] == "connected"
        assert link["role"] == ("dial" if me is winner else "accept")
        ups = [e for e in me.drain() if e["event"] == "link_up"]
        assert len(ups) == 1
        assert not [e for e in me.seen if e["event"] in ("link_down", "connect_failed")]
    loser = a if winner is b else b
    # Usually both offers cross and the winner refuses the loser's; if the loser saw the
    # winner's offer before sending its own, it abandoned its attempt before any refusal.
    glare = winner.links()["refusals"].get("glare", 0)
    print(f"\nglare refusals at the winner: {glare}")
    assert glare in (0, 1)
    assert loser.links()["refusals"].get("glare", 0) == 0
    winner.send(cmd="echo", peer=loser.node_id, count=2, big=1024)
    assert winner.expect("echo")["ok"]
    _quit_cleanly(a, b)


def test_disconnect_reconnect_and_peer_close(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    b.connect(a)
    b.expect("connected")
    a.expect("link_up")
    b.send(cmd="disconnect", peer=a.node_id)
    assert b.expect("link_down", 5)["peer"] == a.node_id  # ours, reported too
    assert a.expect("link_down", 5)["peer"] == b.node_id  # theirs: SCTP ABORT
    b.connect(a)
    again = b.expect("connected")
    a.expect("link_up")
    start = time.monotonic()
    a.quit()
    assert b.expect("link_down", 5)["peer"] == a.node_id
    print(
        f"\nreconnect {again['ms']:.0f} ms; link down "
        f"{1000 * (time.monotonic() - start):.0f} ms after the peer closed"
    )


def test_restarted_peer_replaces_its_stale_link(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    b.connect(a)
    b.expect("connected")
    a.expect("link_up")
    b.proc.kill()  # a still believes in the link (consent has ~30 s to expire)
    b.proc.wait()
    b2 = Peer(lan, lan.hosts[1], 2, SECRET)
    b2.expect("ready", STARTUP_S)
    b2.connect(a)
    b2.expect("connected")
    assert a.expect("link_down", 5)["peer"] == b.node_id  # the stale link
    assert a.expect("link_up", 5)["peer"] == b.node_id  # the new one
    b2.send(cmd="echo", peer=a.node_id, count=2, big=1024)
    assert b2.expect("echo")["ok"]
    _quit_cleanly(a, b2)


def test_an_offer_replayed_after_a_restart_leaves_the_live_link_alone(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    b.connect(a)  # offer 0, captured as it left
    b.expect("connected")
    a.expect("link_up")
    a.proc.kill()  # a restarts: its nonce cache is empty again
    a.proc.wait()
    a2 = Peer(lan, lan.hosts[0], 1, SECRET)
    a2.expect("ready", STARTUP_S)
    b.send(cmd="disconnect", peer=a.node_id)
    b.expect("disconnected")
    b.connect(a2)  # offer 1: the live link
    b.expect("connected")
    a2.expect("link_up")
    seen_a, seen_b = len(a2.drain()), len(b.drain())
    b.send(cmd="replay", index=0, address=a2.host.address, port=PORT)
    assert b.expect("replayed")["answered"] is False
    assert a2.expect("refused")["reason"] == "replay"
    b.send(cmd="echo", peer=a2.node_id, count=2, big=1024)
    assert b.expect("echo")["ok"]
    later = a2.drain()[seen_a:] + b.drain()[seen_b:]
    assert not [e for e in later if e["event"] in ("link_down", "link_up")]
    assert a2.links()["refusals"]["replay"] == 1
    _quit_cleanly(a2, b)


def test_link_down_when_peer_is_killed(lan: netlab.Netlab) -> None:
    a, b = _pair(lan)
    b.connect(a)
    b.expect("connected")
    a.expect("link_up")
    start = time.monotonic()
    a.proc.kill()
    assert b.expect("link_down", CONSENT_EXPIRY_S)["peer"] == a.node_id
    print(f"\nlink down {time.monotonic() - start:.1f} s after SIGKILL of the peer")
    assert b.links()["links"][a.node_id]["state"] == "closed"
