"""Real mDNS between network namespaces: peers of one mesh find each other, others are ignored."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from tests import netlab
except ModuleNotFoundError:  # tests/ is not a package: import netlab.py from its folder
    sys.path.insert(0, str(Path(__file__).parents[1]))
    import netlab  # type: ignore[no-redef, import-not-found, unused-ignore]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(50)]

CHILD = Path(__file__).with_name("_mdns_child.py")
MESH = "00112233aabbccdd"
OTHER_MESH = "ffeeddccbbaa9988"
WAIT_S = 10.0


def node_id(i: int) -> str:
    """Return a fixed 16-hex node id for host number `i`."""
    return f"{i:02x}" * 8


@pytest.fixture
def lab_factory() -> Iterator[Callable[[int], netlab.Netlab]]:
    """Yield a function that opens a lab of N hosts, closed after the test whatever happens."""
    reason = netlab.available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mDNS integration test cannot run in CI: {reason}")
        pytest.skip(f"mDNS integration test needs network namespaces: {reason}")
    labs: list[netlab.Netlab] = []

    def make(hosts: int) -> netlab.Netlab:
        net = netlab.Netlab().__enter__()
        labs.append(net)
        for _ in range(hosts):
            net.add_host()
        return net

    try:
        yield make
    finally:
        for net in labs:
            net.close()


class Child:
    """One `_mdns_child.py` in a namespace, with its JSON event lines collected by a thread."""

    def __init__(self, net: netlab.Netlab, index: int, mesh: str, port: int, tiers: str) -> None:
        """Start the child on host `index` (0-based) of `net`."""
        self.host = net.hosts[index]
        self.node_id = node_id(index + 1)
        self.port = port
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        argv = [sys.executable, str(CHILD), self.node_id, mesh, self.host.address, str(port), tiers]
        self.proc = net.spawn(
            self.host,
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(Path(__file__).parents[2]),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Queue every JSON line the child prints."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self._lines.put(json.loads(line))

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        """Collect events until `predicate(events)` holds; fail after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while not predicate(self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self._lines.empty()):
                self.fail(what)
            with contextlib.suppress(queue.Empty):
                self.events.append(self._lines.get(timeout=max(0.01, min(remaining, 0.2))))

    def drain(self) -> None:
        """Collect the events printed so far without waiting."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.append(self._lines.get_nowait())

    def fail(self, what: str) -> None:
        """Fail the test with the child's events and stderr."""
        stderr = b""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read()
        pytest.fail(
            f"{self.host.name} ({self.node_id}): timed out waiting for {what}\n"
            f"events: {self.events}\nstderr: {stderr.decode(errors='replace')}"
        )

    def found(self) -> dict[str, dict[str, Any]]:
        """Return the latest found record per node id, minus nodes reported lost since."""
        return _found_in(self.events)

    def time_of(self, event: str, **match: Any) -> float:
        """Return the time of the first `event` whose fields include `match`."""
        for e in self.events:
            if e["event"] == event and all(_get(e, k) == v for k, v in match.items()):
                return float(e["t"])
        raise AssertionError(f"no {event} {match} in {self.events}")

    def stop(self) -> None:
        """Close the child gracefully (SIGTERM: goodbye packets) and wait for it."""
        self.proc.send_signal(signal.SIGTERM)
        self.wait(lambda evs: any(e["event"] == "closed" for e in evs), "graceful close")
        self.proc.wait(timeout=WAIT_S)


def _get(event: dict[str, Any], key: str) -> Any:
    """Look up `key` in an event or in its record."""
    return event.get(key, event.get("record", {}).get(key))


def _found_in(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the latest found record per node id in `events`."""
    peers: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["event"] == "found":
            peers[event["record"]["node_id"]] = event["record"]
        elif event["event"] == "lost":
            peers.pop(event["node_id"], None)
    return peers


def has(event: str) -> Callable[[list[dict[str, Any]]], bool]:
    """Return a predicate: some event of this kind was seen."""
    return lambda evs: any(e["event"] == event for e in evs)


def start_mesh(net: netlab.Netlab, meshes: list[str]) -> list[Child]:
    """Start one child per mesh id on hosts 1..N and wait until all registered."""
    tiers = ["L1,L2,L3", "L1", "L2,L3", "L1,L3"]
    children = [
        Child(net, i, mesh, 7000 + i, tiers[i % len(tiers)]) for i, mesh in enumerate(meshes)
    ]
    for child in children:
        child.wait(has("ready"), "registration")
    return children


def test_three_nodes_find_each_other_and_follow_a_port_change(
    lab_factory: Callable[[int], netlab.Netlab],
) -> None:
    net = lab_factory(3)
    a, b, c = nodes = start_mesh(net, [MESH, MESH, MESH])
    for child in nodes:
        child.wait(lambda evs: len(_found_in(evs)) == 2, "both peers")
    for child in nodes:
        peers = child.found()
        assert set(peers) == {o.node_id for o in nodes if o is not child}
        for other in nodes:
            if other is child:
                continue
            record = peers[other.node_id]
            assert record["address"] == other.host.address
            assert record["port"] == other.port
            assert record["mesh_id"] == MESH
            assert record["protocol_version"] == 2
            assert ",".join(record["tiers"]) == ["L1,L2,L3", "L1", "L2,L3"][nodes.index(other)]
    # Discovery latency: registration (probing) time, then peer found after it registered.
    for child in nodes:
        registration = child.time_of("ready") - child.time_of("starting")
        lags = [
            f"{child.time_of('found', node_id=o.node_id) - o.time_of('ready'):+.3f}"
            for o in nodes
            if o is not child
        ]
        print(
            f"\n{child.host.name}: registered in {registration:.3f} s; found peers at "
            f"{', '.join(lags)} s from their registration"
        )
    last_ready = max(child.time_of("ready") for child in nodes)
    assert max(child.time_of("found") for child in nodes) - last_ready < 5.0

    a.proc.send_signal(signal.SIGUSR1)  # a re-advertises on port + 1: an Updated event
    a.wait(has("updated"), "update")
    for child in (b, c):
        child.wait(
            lambda evs: _found_in(evs).get(a.node_id, {}).get("port") == a.port + 1,
            "the new port of a",
        )
        assert child.found()[a.node_id]["address"] == a.host.address
    time.sleep(1.5)  # past the cache-flush window: the stale SRV/TXT must not come back
    for child in (b, c):
        child.drain()
        assert child.found()[a.node_id]["port"] == a.port + 1, child.events
        assert not has("lost")(child.events), child.events
    print(f"port change seen in {b.time_of('found', port=a.port + 1) - a.time_of('updated'):.3f} s")


def test_a_node_of_another_mesh_is_ignored(lab_factory: Callable[[int], netlab.Netlab]) -> None:
    net = lab_factory(4)
    nodes = start_mesh(net, [MESH, MESH, MESH, OTHER_MESH])
    stranger = nodes[3]
    ours = nodes[:3]
    for child in ours:
        child.wait(lambda evs: len(_found_in(evs)) == 2, "both peers")
        child.wait(
            lambda evs: any(e["event"] == "ignored" and e["count"] == 1 for e in evs),
            "the other mesh to be ignored",
        )
        assert stranger.node_id not in child.found()
    stranger.wait(
        lambda evs: any(e["event"] == "ignored" and e["count"] == 3 for e in evs),
        "our three nodes to be ignored",
    )
    assert stranger.found() == {}


def test_a_late_joiner_is_found_and_a_stopped_node_is_lost(
    lab_factory: Callable[[int], netlab.Netlab],
) -> None:
    net = lab_factory(3)
    a, b = start_mesh(net, [MESH, MESH])
    for child in (a, b):
        child.wait(lambda evs: len(_found_in(evs)) == 1, "the other peer")
    c = Child(net, 2, MESH, 7002, "L1,L2,L3")
    c.wait(lambda evs: len(_found_in(evs)) == 2, "the two running peers")
    c.wait(has("ready"), "registration")
    start = c.time_of("starting")
    print(f"\nlate joiner found the running peers {c.time_of('found') - start:.3f} s after start")
    for child in (a, b):
        child.wait(lambda evs: c.node_id in _found_in(evs), "the late joiner")
        lag = child.time_of("found", node_id=c.node_id) - c.time_of("ready")
        print(f"{child.host.name} found the late joiner {lag:+.3f} s from its registration")

    stopped = time.monotonic()
    c.stop()
    for child in (a, b):
        child.wait(
            lambda evs: any(e["event"] == "lost" and e["node_id"] == c.node_id for e in evs),
            "c to be lost",
        )
        assert set(child.found()) == {o.node_id for o in (a, b) if o is not child}
        lost = child.time_of("lost", node_id=c.node_id) - stopped
        print(f"{child.host.name} saw c lost {lost:.3f} s after SIGTERM")
    assert c.proc.returncode == 0
