"""Acceptance tests of the real LAN mesh: `memmesh run` daemons in network namespaces.

Every node is a real daemon process in its own namespace of a `tests.netlab` LAN
(10.77.0.N): it discovers the others over mDNS, links to them over WebRTC data channels
and replicates L1/L2/L3. The test drives each daemon through its control socket (the
same path `memmesh put/get/status/peers` take while a daemon runs) and partitions hosts
by taking their bridge port down. Helpers: `tests/integration/lan.py`; daemon logs are
printed when a test fails.

Measured numbers are printed (run with `-s` to see them): convergence after a heal,
CRITICAL time to visible, catch-up after a SIGKILL and restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.control import ControlError
from mesh.trust import JoinToken

try:
    from tests.integration import lan
except ModuleNotFoundError:  # tests/ is not a package: import lan.py from its folder
    sys.path.insert(0, str(Path(__file__).parent))
    import lan  # type: ignore[no-redef, import-not-found, unused-ignore]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

TIERS = ("L1", "L2", "L3")
DIAL_CHILD = Path(__file__).with_name("_dial_child.py")
LINK_S = 60.0  # a full mesh of 5 is usually up within a second of the last daemon starting
SYNC_S = 20.0
HEAL_BUDGET_S = 10.0
DETECT_S = 20.0  # SWIM declares a silent node dead in ~2 s; links close with it


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lan.Cluster]:
    with lan.open_cluster(request, tmp_path) as c:
        yield c


def five(cluster: lan.Cluster) -> list[lan.Daemon]:
    """Start a mesh of five daemons (one creates it, four join) and wait for the full mesh."""
    nodes = cluster.mesh(5)
    took = cluster.wait_linked(nodes, LINK_S)
    print(f"\nfull mesh of 5 linked {took:.2f} s after every daemon answered")
    return nodes


def write(node: lan.Daemon, prefix: str, count: int) -> dict[str, str]:
    """Write `count` items spread over L1/L2/L3 on `node`; return id -> content."""
    items = {}
    for i in range(count):
        item_id = f"{prefix}-{i}"
        content = f"{prefix} item {i} written on {node.name}"
        stored = node.put(TIERS[i % 3], item_id, content)
        assert stored["id"] == item_id and stored["content"] == content
        items[item_id] = content
    return items


def cut_off(cluster: lan.Cluster, node: lan.Daemon, others: list[lan.Daemon]) -> float:
    """Wait until `node` and `others` have no live channel between them any more."""

    def apart() -> bool:
        return not node.connected() and all(node.node_id not in o.connected() for o in others)

    return lan.wait_for(
        f"the links to {node.name} to go down",
        apart,
        DETECT_S,
        context=lambda: cluster.describe([node, *others]),
    )


# --------------------------------------------------------------------- 1. convergence


def test_five_nodes_converge_after_writes_everywhere(cluster: lan.Cluster) -> None:
    nodes = five(cluster)
    items: dict[str, str] = {}
    started = time.monotonic()
    for node in nodes:
        items |= write(node, f"conv-{node.name}", 6)  # two per tier on every node
    took = cluster.wait_items(nodes, items, SYNC_S)
    cluster.wait_converged(nodes, SYNC_S, items=len(items))
    print(f"{len(items)} items written on 5 nodes: everywhere {took:.2f} s after the last write")
    print(f"(first write to convergence: {time.monotonic() - started:.2f} s)")

    # Through the real command line too: `memmesh status --json` goes through the daemon.
    statuses = [
        json.loads(lan.memmesh("status", "--data-dir", n.data_dir, "--json").stdout) for n in nodes
    ]
    for status in statuses:
        assert {t: v["items"] for t, v in status["tiers"].items()} == {t: 10 for t in TIERS}
        assert status["tiers"] == statuses[0]["tiers"]
        assert status["mesh_id"] == statuses[0]["mesh_id"]
        assert status["conflicts"] == 0
    assert len({s["node_id"] for s in statuses}) == 5
    got = nodes[3].get("conv-n1-4")
    assert got is not None and got["tier"] == "L2" and got["author"] == nodes[0].node_id
    cluster.stop_all()
    # Without its daemon, `status --json` keeps the same keys (offline values) for scripts.
    offline = json.loads(lan.memmesh("status", "--data-dir", nodes[0].data_dir, "--json").stdout)
    assert offline["daemon"] is False and statuses[0]["daemon"] is True
    assert offline.keys() == statuses[0].keys()
    assert offline["tiers"] == statuses[0]["tiers"]


# --------------------------------------------------------------------- 2. partition and heal


def test_partitioned_node_keeps_writing_and_converges_within_10s_of_the_heal(
    cluster: lan.Cluster,
) -> None:
    nodes = five(cluster)
    *rest, island = nodes
    items = write(nodes[0], "before", 3)
    cluster.wait_items(nodes, items, SYNC_S)

    cluster.net.cut(island.host)
    detected = cut_off(cluster, island, rest)
    print(f"{island.name} partitioned: links down after {detected:.2f} s")

    # Both sides keep accepting writes; the island's are acknowledged locally.
    island_items = {}
    for i, tier in enumerate(TIERS):
        item_id, content = f"island-{i}", f"written on the island in {tier}"
        stored = island.put(tier, item_id, content, ack="local")
        assert stored["id"] == item_id
        island_items[item_id] = content
    assert not island.missing(island_items)
    mainland_items: dict[str, str] = {}
    for node in rest:
        mainland_items |= write(node, f"mainland-{node.name}", 3)
    cluster.wait_items(rest, mainland_items, SYNC_S)
    assert not any(n.has("island-0") for n in rest)  # nothing crossed the partition
    assert not any(island.has(i) for i in mainland_items)
    # One item written on both sides: concurrent versions, resolved alike everywhere.
    island.put("L1", "both-sides", "the island's version")
    rest[0].put("L1", "both-sides", "the mainland's version")

    everything = {**items, **island_items, **mainland_items}
    total = len(everything) + 1
    cluster.net.restore(island.host)
    healed = time.monotonic()
    converged = cluster.wait_converged(nodes, 3 * HEAL_BUDGET_S, items=total)
    print(f"after the heal: every node converged in {converged:.2f} s")
    assert converged <= HEAL_BUDGET_S, f"converged {converged:.2f} s after the heal"
    cluster.wait_items(nodes, everything, SYNC_S)
    resolved = {json.dumps(n.get("both-sides"), sort_keys=True) for n in nodes}
    assert len(resolved) == 1, resolved
    relinked = cluster.wait_linked(nodes, LINK_S)
    print(
        f"heal -> all items on all nodes {time.monotonic() - healed:.2f} s; "
        f"full mesh again {relinked:.2f} s after that"
    )
    cluster.stop_all()


# --------------------------------------------------------------------- 3. SIGKILL and restart


def test_killed_node_keeps_acknowledged_writes_and_catches_up(cluster: lan.Cluster) -> None:
    nodes = five(cluster)
    victim = nodes[2]
    others = [n for n in nodes if n is not victim]

    # The victim writes as fast as it can; it is SIGKILLed in the middle of that.
    acked: dict[str, str] = {}
    failures: list[str] = []

    def writer() -> None:
        i = 0
        while True:
            item_id, content = f"acked-{i}", f"acknowledged write {i} of the victim"
            try:
                victim.put(TIERS[i % 3], item_id, content)
            except (OSError, ControlError, AssertionError) as exc:
                failures.append(repr(exc))
                return
            acked[item_id] = content
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    lan.wait_for("30 acknowledged writes", lambda: len(acked) >= 30, SYNC_S)
    victim.kill()
    thread.join(timeout=10)
    assert not thread.is_alive() and failures, "the writer did not notice the kill"
    acked = dict(acked)
    print(f"{victim.name} SIGKILLed after {len(acked)} acknowledged writes")

    down = lan.wait_for(
        f"the others to drop {victim.name}",
        lambda: all(victim.node_id not in o.connected() for o in others),
        DETECT_S,
        context=lambda: cluster.describe(others),
    )
    print(f"the others dropped the dead node after {down:.2f} s")
    while_down: dict[str, str] = {}
    for node in others:
        while_down |= write(node, f"down-{node.name}", 3)

    restarted = time.monotonic()
    victim.start()
    victim.wait_up()
    up_s = time.monotonic() - restarted
    # Its own acknowledged writes are there at once, from its own disk.
    lost = victim.missing(acked)
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    # The write in flight at the kill was never acknowledged: it may or may not be there.
    n = len(acked)
    inflight = {f"acked-{n}": f"acknowledged write {n} of the victim"}
    if not victim.missing(inflight):
        print(f"the write in flight at the kill (acked-{n}) was durable too")
        acked |= inflight
    cluster.wait_items([victim], while_down, SYNC_S, "the writes made while down")
    caught_up = time.monotonic() - restarted
    everything = {**acked, **while_down}
    cluster.wait_converged(nodes, SYNC_S, items=len(everything))
    cluster.wait_items(nodes, everything, SYNC_S)
    print(
        f"restart: control socket up {up_s:.2f} s after the spawn; caught up with the "
        f"{len(while_down)} writes made while down {caught_up:.2f} s after the spawn; "
        f"all converged {time.monotonic() - restarted:.2f} s after the restart"
    )
    cluster.wait_linked(nodes, LINK_S)
    cluster.stop_all()


# --------------------------------------------------------------------- 4. other meshes


def dial(
    cluster: lan.Cluster, nodes: list[lan.Daemon], targets: list[lan.Daemon]
) -> dict[str, list[dict[str, str]]]:
    """Run `_dial_child.py` in each node's namespace against `targets` (all at once).

    Return node name -> one result per target.
    """
    procs = {}
    for node in nodes:
        argv = [
            sys.executable,
            str(DIAL_CHILD),
            str(node.data_dir),
            *(f"{t.node_id}@{t.host.address}:{lan.PORT}" for t in targets),
        ]
        procs[node.name] = cluster.net.spawn(
            node.host,
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=lan.ROOT,
            env={**os.environ, "DIAL_HOST": node.host.address, "PYTHONPATH": str(lan.ROOT)},
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode(errors="replace")
        results[name] = [json.loads(line) for line in out.splitlines()]
        assert len(results[name]) == len(targets), (name, results[name])
    return results


def test_nodes_of_another_mesh_or_with_a_wrong_token_are_refused(cluster: lan.Cluster) -> None:
    members = cluster.mesh(3)
    token = members[0].token()

    # A corrupted token is refused by `memmesh init` itself: one line, nothing written.
    corrupt = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    bad_dir = cluster.root / "corrupt"
    proc = lan.memmesh("init", "--data-dir", bad_dir, "--join", corrupt, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("memmesh: error: token is corrupt"), proc.stderr
    assert not (bad_dir / "mesh.json").exists()

    # A node with its own mesh, and one with a well-formed token of the wrong secret.
    own = cluster.add("own-mesh")
    own.init()
    wrong = cluster.add("wrong-token")
    decoded = JoinToken.decode(token)
    wrong.init(JoinToken(bytes([decoded.secret[0] ^ 1]) + decoded.secret[1:]).encode())
    outsiders = [own, wrong]
    for node in outsiders:
        node.start()
    for node in outsiders:
        node.wait_up()
    cluster.wait_linked(members, LINK_S)
    items = write(members[0], "members-only", 3)
    cluster.wait_items(members, items, SYNC_S)

    # They know the members' addresses (as from a bootstrap list) and dial: refused.
    for name, results in dial(cluster, outsiders, members).items():
        for result in results:
            assert not result["ok"], f"{name} got a link to {result['peer']}"
            assert "ConnectRefused" in result["error"], result

    def refusals_logged() -> bool:
        logs = [m.log() for m in members]
        return all(
            f"refused signaling from {o.host.address}: wrong-mesh" in log
            for log in logs
            for o in outsiders
        )

    lan.wait_for("every member to log the refusals", refusals_logged, 10, context=cluster.tails)
    refused = [
        line for line in members[0].log().splitlines() if "refused" in line and "glare" not in line
    ]
    print("\n".join(refused))

    member_ids = {m.node_id for m in members}
    outsider_ids = {o.node_id for o in outsiders}
    for node in outsiders:
        status = node.status()
        assert node.peers() == [] and status["peers"] == 0, node.peers()
        assert all(t["items"] == 0 for t in status["tiers"].values()), status["tiers"]
        assert not any(node.has(i) for i in items)
        assert "link up" not in node.log()
    for member in members:
        rows = member.peers()
        assert {r["id"] for r in rows} == member_ids - {member.node_id}, rows
        assert not outsider_ids & {r["id"] for r in rows}
        assert member.status()["members"] == 2
    cluster.stop_all()


# --------------------------------------------------------------------- 5. CRITICAL


def test_critical_write_reaches_every_node_at_once(cluster: lan.Cluster) -> None:
    nodes = five(cluster)
    writer, *readers = nodes  # `five` waited for the full mesh: direct links to every node
    warm = write(writer, "warm-up", 3)
    cluster.wait_items(nodes, warm, SYNC_S)

    def timed_write(priority: str) -> dict[str, float]:
        """Write on `writer`; return reader -> ms until the item was visible there.

        One thread per reader polls its daemon's L1 item count (`status`: well under a
        millisecond, where a `get` parses a command line), so the readers are watched in
        parallel without loading them; nothing else is written meanwhile.
        """
        item_id = f"{priority}-alert"
        seen: dict[str, float] = {}
        go = threading.Event()
        started = [0.0]
        base = {r.name: r.status()["tiers"]["L1"]["items"] for r in readers}

        def watch(reader: lan.Daemon) -> None:
            go.wait()
            deadline = time.monotonic() + SYNC_S
            while time.monotonic() < deadline:
                if reader.status()["tiers"]["L1"]["items"] > base[reader.name]:
                    seen[reader.name] = (time.monotonic() - started[0]) * 1000.0
                    return
                time.sleep(0.001)

        watchers = [threading.Thread(target=watch, args=(r,), daemon=True) for r in readers]
        for thread in watchers:
            thread.start()
        started[0] = time.monotonic()
        go.set()
        writer.put("L1", item_id, f"a {priority} write", priority=priority)
        for thread in watchers:
            thread.join(timeout=SYNC_S + 5)
        missing = sorted(r.name for r in readers if r.name not in seen)
        assert not missing, f"{item_id} never reached {missing}\n{cluster.describe()}"
        # The count rose because of this item, not another (asserted here: an assert in a
        # watcher thread would only be a warning).
        assert all(r.has(item_id) for r in readers)
        return seen

    timings = {priority: timed_write(priority) for priority in ("critical", "normal")}
    for priority, seen in timings.items():
        print(
            f"{priority.upper():<8} write visible on all 4 others after "
            f"{max(seen.values()):.0f} ms (each: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(seen.items()))
            + ")"
        )

    # With --ack all the write returns once every other node has it durably.
    started = time.monotonic()
    stored = writer.put(
        "L1", "critical-acked", "acknowledged by all", priority="critical", ack="all"
    )
    acked_ms = (time.monotonic() - started) * 1000.0
    assert stored["id"] == "critical-acked"
    assert all(r.has("critical-acked") for r in readers)
    print(f"CRITICAL write with --ack all acknowledged by every node after {acked_ms:.0f} ms")
    cluster.stop_all()


# --------------------------------------------------------------------- 6. peers


def peers_json(node: lan.Daemon, others: list[lan.Daemon]) -> list[dict[str, Any]]:
    """Run `memmesh peers --json` until it lists `others` as connected, alive, with an RTT.

    Polled (one CLI run each time), so a link flapping on a loaded machine is no failure.
    """
    where = {o.node_id: o.host.address for o in others}
    seen: list[list[dict[str, Any]]] = []

    def listed() -> bool:
        rows = json.loads(lan.memmesh("peers", "--data-dir", node.data_dir, "--json").stdout)
        seen.append(rows)
        return sorted(r["id"] for r in rows) == sorted(where) and all(
            r["state"] == "connected"
            and r["member"] == "alive"
            and r["address"].split(":")[0] == where[r["id"]]
            and isinstance(r["rtt_ms"], float)
            and r["rtt_ms"] > 0.0
            for r in rows
        )

    lan.wait_for(f"{node.name}'s peers", listed, SYNC_S, context=lambda: str(seen[-1:]))
    return seen[-1]


def test_peers_json_lists_the_four_others_connected_with_rtt(cluster: lan.Cluster) -> None:
    nodes = five(cluster)
    for node in nodes:
        rows = peers_json(node, [o for o in nodes if o is not node])
        print(f"{node.name}: " + ", ".join(f"{r['id']} {r['rtt_ms']:.1f} ms" for r in rows))
    cluster.stop_all()
