"""Bounds of the hub role, driven by hand (explicit `now`, no event loop, no sleeps).

Regressions found in review: a relayed batch too large for one envelope raised out of
`handle(Tick)` and was lost; many large STATS_REPORTs made the hub's STATS_PUBLISH go over
the frame cap and raise out of `handle(Tick)`; the lease table kept expired leases and
granted any number of names.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from crdt.memory import NewItem, TieredMemory
from hub_role.leases import MAX_LEASES_PER_HOLDER, LeaseLimitReached, LeaseTable
from hub_role.signing import Ed25519Signer, Ed25519Verifier
from hub_role.stats import MAX_PUBLISHED_CONFLICTS, OTHER_RESOLUTIONS, StatsBoard
from mesh.codec import U64, decode_message, encode_message
from mesh.config import NodeConfig
from mesh.effects import LeaseAnswered, WriteAcked
from mesh.frames import DEFAULT_LIMITS, Priority
from mesh.inputs import AckLevel, FrameReceived, LeaseRequested, WriteRequested
from mesh.messages import StatsPublish, StatsReport, TierStats
from mesh.node import Node
from mesh.node_hub import LEASE_LIMIT_ERROR
from tests.unit.test_node import QUIET, TIERS, Net

CAP = DEFAULT_LIMITS.max_frame_bytes


def hub_node(node_id: str, keyring: dict[str, bytes]) -> Node:
    """A node that can sign, so it can be the hub and relay through one."""
    rng = random.Random(node_id)
    memory = TieredMemory(node_id=node_id, client_ids={t: rng.getrandbits(32) for t in TIERS})
    signer = Ed25519Signer(node_id.encode().ljust(32, b"\0"))
    keyring[node_id] = signer.public_key
    config = NodeConfig.lan(**QUIET)
    return Node(memory, config, rng, signer=signer, verifier=Ed25519Verifier(keyring))


def hub_mesh(*node_ids: str) -> tuple[Net, dict[str, Node], str]:
    """Fully linked signing nodes after the election; returns the net, nodes and hub id."""
    keyring: dict[str, bytes] = {}
    nodes = {i: hub_node(i, keyring) for i in node_ids}
    net = Net(*nodes.values())
    for k, a in enumerate(node_ids):
        for b in node_ids[k + 1 :]:
            net.link(a, b)
    net.advance(5.0)
    hubs = {n.hub.id for n in nodes.values() if n.hub is not None}
    assert len(hubs) == 1 and sum(n.is_hub for n in nodes.values()) == 1
    return net, nodes, hubs.pop()


# ------------------------------------------------------------ 1: oversized relayed batch


def embedded_items(count: int, prefix: str = "big") -> list[NewItem]:
    """Items whose 384-dim embeddings make an incompressible batch of ~330 KB."""
    rng = np.random.default_rng(0)
    return [
        NewItem("L1", f"content {i}", f"{prefix}-{i}", rng.standard_normal(384).astype(np.float32))
        for i in range(count)
    ]


@pytest.mark.parametrize("writer_is_hub", [False, True])
def test_a_batch_too_large_for_one_envelope_is_flooded_and_reaches_every_peer(
    writer_is_hub: bool,
) -> None:
    """Regression: encoding the relayed batch raised MessageError ("frame ... over the
    cap") out of handle(Tick) after the batch had left the outbox, so it was never sent."""
    net, nodes, hub = hub_mesh("a", "b", "c")
    writer = hub if writer_is_hub else next(i for i in sorted(nodes) if i != hub)
    before = nodes[writer].hub_counters
    relayed, p2p = before.relayed_sent, before.p2p_sent
    items = embedded_items(200)
    net.do(
        writer,
        WriteRequested(1, puts=items, ack=AckLevel.PEER, priority=Priority.NORMAL),
    )
    net.advance(net.now + 6.0)  # past the sync interval: the flush must not raise
    for node_id, node in nodes.items():
        missing = [item.id for item in items if item.id not in node.memory]
        assert not missing, (node_id, len(missing))
    acked = [e for e in net.log[writer] if isinstance(e, WriteAcked) and e.request_id == 1]
    assert len(acked) == 1
    counters = nodes[writer].hub_counters
    assert (counters.relayed_sent, counters.p2p_sent) == (relayed, p2p + 1)  # flooded
    assert all(len(send.frame) <= CAP for _src, send in net.sent)


def test_a_large_batch_that_compresses_into_one_envelope_still_goes_through_the_hub() -> None:
    net, nodes, hub = hub_mesh("a", "b", "c")
    writer = next(i for i in sorted(nodes) if i != hub)
    relayed = nodes[writer].hub_counters.relayed_sent
    items = [NewItem("L1", "same words again " * 40 + str(i), f"text-{i}") for i in range(400)]
    net.do(writer, WriteRequested(1, puts=items, ack=AckLevel.PEER, priority=Priority.NORMAL))
    net.advance(net.now + 6.0)
    assert nodes[writer].hub_counters.relayed_sent == relayed + 1
    assert all(item.id in node.memory for node in nodes.values() for item in items)


# ------------------------------------------------------------ 2: STATS_PUBLISH over the cap


def huge_report(node_id: str, salt: int = 0) -> StatsReport:
    """A report as large as the wire allows: 3 tiers, 16 conflict kinds of 64 characters."""
    rng = random.Random(f"{node_id}-{salt}")

    def label() -> str:
        return "".join(chr(rng.randrange(0xA0, 0x100)) for _ in range(64))  # 2 bytes each

    tiers = tuple(
        TierStats(t, 1.5, 2.5, 3.5, 2**40, 2**40, 2**30, tuple((label(), k + 1) for k in range(16)))
        for t in TIERS
    )
    return StatsReport(node_id, tiers)


def test_stats_publish_of_many_huge_reports_stays_one_frame_freshest_first() -> None:
    board = StatsBoard(max_age_s=30.0)
    for i in range(1000):
        board.put(huge_report(f"{i:016x}"), now=i / 100.0)  # later ids are fresher
    publish = board.publish("hub", 1, now=10.0)
    frame = encode_message(publish)  # raised MessageError before: ~3 MB of reports
    assert len(frame) <= CAP
    assert 0 < len(publish.reports) < 1000 and board.left_out == 1000 - len(publish.reports)
    kept = {r.node_id for r in publish.reports}
    assert f"{999:016x}" in kept and f"{0:016x}" not in kept  # the stalest are left out
    assert decode_message(frame)[1] == publish
    # Conflict rows are trimmed per tier, the dropped kinds folded so totals stay exact.
    for report in publish.reports:
        for tier in report.tiers:
            assert len(tier.conflicts) <= MAX_PUBLISHED_CONFLICTS
            assert OTHER_RESOLUTIONS in dict(tier.conflicts)
            assert sum(n for _k, n in tier.conflicts) == sum(range(1, 17))


def test_folded_conflict_counts_stay_within_the_wire_range() -> None:
    tiers = (TierStats("L1", conflicts=tuple((f"r{k:02d}", U64) for k in range(16))),)
    board = StatsBoard(max_age_s=30.0)
    board.put(StatsReport("a", tiers), now=0.0)
    publish = board.publish("hub", 1, now=1.0)
    encode_message(publish)  # a count over u64 would raise
    (report,) = publish.reports
    assert dict(report.tiers[0].conflicts)[OTHER_RESOLUTIONS] == U64


def test_stats_publish_keeps_every_small_report_of_a_full_mesh() -> None:
    board = StatsBoard(max_age_s=30.0)
    for i in range(1024):
        tiers = tuple(
            TierStats(t, 123.4, 5.6, 7.8, 2**40, 2**40, 2**30, (("lww", 2**40),)) for t in TIERS
        )
        board.put(StatsReport(f"{i:016x}", tiers), now=0.0)
    publish = board.publish(f"{0:016x}", 1, now=1.0)
    assert len(publish.reports) == 1024 and board.left_out == 0
    assert len(encode_message(publish)) <= CAP


def test_hub_tick_publishes_under_the_cap_when_many_peers_send_huge_reports() -> None:
    """Regression: ~200 maximum-size STATS_REPORTs (here 1,000) made the hub's
    STATS_PUBLISH ~588 KB; encoding it raised MessageError out of handle(Tick)."""
    net, nodes, hub = hub_mesh("a", "b")
    other = next(i for i in nodes if i != hub)
    # 1,000 peers report to the hub over their links (here: frames from unknown links;
    # the hub keeps any report whose node id is its sender's).
    for i in range(1000):
        peer = f"p{i:03d}"
        net.do(hub, FrameReceived(peer, encode_message(huge_report(peer), priority=Priority.LOW)))
    assert len(nodes[hub]._hub_router().board._reports) >= 1000
    mark = len(net.sent)
    net.advance(net.now + 10.0)  # past at least one stats interval
    publishes = [
        s
        for src, s in net.sent[mark:]
        if src == hub and isinstance(decode_message(s.frame)[1], StatsPublish)
    ]
    assert publishes and all(len(s.frame) <= CAP for s in publishes)
    view = nodes[other].mesh_stats()
    assert view is not None and view.hub_id == hub
    ids = {r.node_id for r in view.reports}
    assert {hub, other} <= ids  # the freshest reports, the real nodes' own, are in
    assert 0 < len(ids) < 1002


# ------------------------------------------------------------ 3: the lease table


def test_expired_leases_are_pruned_and_tokens_keep_growing() -> None:
    table = LeaseTable(term=1)
    tokens = []
    for holder in range(20):
        for k in range(50):
            ok, lease = table.request(f"name-{holder}-{k}", f"n{holder}", 1.0, now=0.0)
            assert ok
            tokens.append(lease.token)
    assert len(table) == 1000
    assert table.prune(0.5) == 0 and len(table) == 1000
    # Long after every lease expired, one request leaves only its own lease.
    ok, lease = table.request("x", "n0", 1.0, now=10_000.0)
    assert ok and len(table) == 1
    tokens.append(lease.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert table.prune(10_002.0) == 1 and len(table) == 0


def test_renewals_do_not_pile_up_expiry_entries() -> None:
    table = LeaseTable(term=1)
    now = 0.0
    for _ in range(10_000):
        table.request("lock", "a", 3600.0, now)  # renewed again and again
        now += 0.01
    assert len(table) == 1
    assert len(table._expiry) <= 2 * len(table) + 65


def test_new_names_past_the_caps_are_refused_renewals_are_not() -> None:
    table = LeaseTable(term=2, max_leases=10, max_per_holder=4)
    tokens = [table.request(f"a{k}", "a", 5.0, 0.0)[1].token for k in range(4)]
    with pytest.raises(LeaseLimitReached, match="limit per node"):
        table.request("a4", "a", 5.0, 0.0)
    tokens += [table.request(f"b{k}", "b", 5.0, 0.0)[1].token for k in range(4)]
    tokens += [table.request(f"c{k}", "c", 5.0, 0.0)[1].token for k in range(2)]
    assert len(table) == 10
    with pytest.raises(LeaseLimitReached, match="its limit"):
        table.request("d0", "d", 5.0, 0.0)
    ok, renewed = table.request("a0", "a", 5.0, 1.0)  # renewal of a held name: granted
    assert ok and renewed.token > max(tokens)
    tokens.append(renewed.token)
    held, other = table.request("a1", "b", 5.0, 1.0)  # held by another: refused as before
    assert not held and other.holder == "a"
    assert table.release("c0", "c", tokens[8])
    ok, fresh = table.request("d0", "d", 5.0, 2.0)  # room again after a release
    assert ok and fresh.token > max(tokens)
    # At 6.0 the leases of t=0 (to 5.0) and the renewal (to 6.0) are over: only d0 is left.
    ok, later = table.request("d1", "d", 5.0, 6.0)
    assert ok and len(table) == 2 and later.token > fresh.token


def test_a_peer_asking_for_unbounded_names_is_capped() -> None:
    """Regression: 100,000 distinct names stayed in the table after they all expired."""
    table = LeaseTable(term=1)
    granted = refused = 0
    for i in range(100_000):
        try:
            ok, _lease = table.request(f"name-{i}", "peer", 1.0, 0.0)
        except LeaseLimitReached:
            refused += 1
        else:
            granted += ok
    assert granted == MAX_LEASES_PER_HOLDER and refused == 100_000 - granted
    table.request("x", "peer", 1.0, 10_000.0)
    assert len(table) == 1


def test_hub_refuses_names_past_the_cap_with_a_reason_and_prunes_on_its_timer() -> None:
    net, nodes, hub = hub_mesh("a", "b")
    peer = next(i for i in nodes if i != hub)
    for k in range(MAX_LEASES_PER_HOLDER + 1):
        net.do(peer, LeaseRequested(k, f"lock-{k}", ttl_s=2.0))
        net.settle()
    answers = {e.request_id: e for e in net.log[peer] if isinstance(e, LeaseAnswered)}
    assert len(answers) == MAX_LEASES_PER_HOLDER + 1
    assert all(answers[k].granted for k in range(MAX_LEASES_PER_HOLDER))
    tokens = [answers[k].token for k in range(MAX_LEASES_PER_HOLDER)]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    refused = answers[MAX_LEASES_PER_HOLDER]
    assert not refused.granted and refused.error == LEASE_LIMIT_ERROR
    table = nodes[hub]._hub_router().leases
    assert len(table) == MAX_LEASES_PER_HOLDER
    # The hub's own leases count against its own id, not the peer's.
    local = nodes[hub].handle(LeaseRequested(1, "hub-lock", ttl_s=2.0), net.now)
    assert [e.granted for e in local if isinstance(e, LeaseAnswered)] == [True]
    # No further request: the hub's timer alone forgets the expired leases.
    net.advance(net.now + 3.0)
    assert len(table) == 0
    net.do(peer, LeaseRequested(9999, "lock-again", ttl_s=2.0))
    net.settle()
    again = [e for e in net.log[peer] if isinstance(e, LeaseAnswered) and e.request_id == 9999]
    assert len(again) == 1 and again[0].granted and again[0].token > max(tokens)
