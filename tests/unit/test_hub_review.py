"""Hub-role defects found in review, each driven by hand with signed Nodes (no event loop)."""

from __future__ import annotations

import random

from crdt.config import MemoryConfig
from crdt.memory import NewItem, TieredMemory
from crdt.resolvers import resolver_named
from hub_role.signing import Ed25519Signer, Ed25519Verifier
from mesh.codec import encode_message
from mesh.config import NodeConfig
from mesh.effects import LeaseAnswered, Log, WriteAcked
from mesh.frames import Priority
from mesh.inputs import (
    AckLevel,
    FrameReceived,
    LeaseReleased,
    LeaseRequested,
    Leaving,
    Tick,
    WriteRequested,
)
from mesh.messages import LeaseGrant
from mesh.node import Node
from tests.unit.test_hub_bounds import hub_mesh, hub_node
from tests.unit.test_node import QUIET, TIERS, Net


def test_a_hub_leaving_hands_out_the_batches_it_still_queues() -> None:
    """Regression: the hub acked a LOW batch, queued it, left gracefully and dropped it."""
    net, nodes, hub = hub_mesh("a", "b", "z")
    assert hub == "z"
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "low note", "low-1")], ack=AckLevel.HUB,
                               priority=Priority.LOW))  # fmt: skip
    net.settle()
    while not any(isinstance(e, WriteAcked) for e in net.log["a"]):
        net.advance(net.now + 0.01)
    assert nodes["z"].relay_backlog()["LOW"] == 1  # acked, still queued for a LOW batch
    net.do("z", Leaving())
    net.settle()
    assert sum(nodes["z"].relay_backlog().values()) == 0
    net.muted.add("z")
    assert "low-1" in nodes["b"].memory  # anti-entropy is off (QUIET): the hub sent it


def test_only_the_hub_answers_a_lease_request() -> None:
    """Regression: any member could answer a pending request with a forged grant."""
    net, nodes, hub = hub_mesh("a", "b", "z")
    assert hub == "z"
    nodes["a"].handle(LeaseRequested(7, "X", 30.0), net.now)  # sent to z, not delivered
    lease_id = max(nodes["a"]._hub_router().lease_pending)
    forged = encode_message(LeaseGrant(lease_id, "X", "a", True, 2**63, 2**31, 30_000))
    effects = nodes["a"].handle(FrameReceived("b", forged), net.now)
    assert not [e for e in effects if isinstance(e, LeaseAnswered)]
    assert [e.message for e in effects if isinstance(e, Log)] == [
        "lease answer not from the hub ignored"
    ]
    assert lease_id in nodes["a"]._hub_router().lease_pending  # still waiting for the hub


def test_bad_local_lease_inputs_are_refused_not_raised() -> None:
    net, nodes, _hub = hub_mesh("a", "b", "z")
    follower = nodes["a"]
    for token in (-1, 2**64):
        assert follower.handle(LeaseReleased("X", token), net.now) == []
    assert follower.handle(LeaseReleased("\ud800", 1), net.now) == []
    (answer,) = [
        e
        for e in follower.handle(LeaseRequested(8, "\ud800", 5.0), net.now)
        if isinstance(e, LeaseAnswered)
    ]
    assert not answer.granted and answer.error == "bad lease name or ttl"


def keep_the_most_recent_write_then_the_longest_content_then_the_lowest_node_id(
    *args: object, **kwargs: object
) -> object:
    return resolver_named("lww")(*args, **kwargs)  # type: ignore[arg-type]


def test_a_custom_resolver_with_a_long_name_does_not_break_the_stats() -> None:
    """Regression: a resolver name over 64 characters made every stats Tick raise."""
    config = MemoryConfig.with_resolvers(
        L1=keep_the_most_recent_write_then_the_longest_content_then_the_lowest_node_id
    )
    keyring: dict[str, bytes] = {}

    def node(node_id: str) -> Node:
        rng = random.Random(node_id)
        memory = TieredMemory(
            node_id=node_id, client_ids={t: rng.getrandbits(32) for t in TIERS}, config=config
        )
        signer = Ed25519Signer(node_id.encode().ljust(32, b"\0"))
        keyring[node_id] = signer.public_key
        return Node(memory, NodeConfig.lan(**QUIET), rng, signer=signer,
                    verifier=Ed25519Verifier(keyring))  # fmt: skip

    a, b = node("a"), node("b")
    net = Net(a, b)
    net.link("a", "b")
    net.advance(3.0)
    net.cut.add(frozenset("ab"))
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "from a", "same")]))
    net.do("b", WriteRequested(2, puts=[NewItem("L1", "from b", "same")]))
    net.advance(4.0)
    net.cut.clear()
    net.do("a", Tick())
    net.settle()
    net.advance(30.0)  # stats reports and publishes go out without raising
    stats = a.mesh_stats()
    assert stats is not None
    (name,) = stats.totals()["conflicts"]
    assert (
        name
        == keep_the_most_recent_write_then_the_longest_content_then_the_lowest_node_id.__name__[:64]
    )


def test_a_node_that_cannot_link_to_the_hub_still_gets_relayed_updates_soon() -> None:
    """Regression: the hub fans out over its own links only and receivers do not forward
    relayed frames, so d (no link to the hub) waited for anti-entropy (here: an hour)."""
    keyring: dict[str, bytes] = {}
    nodes = {i: hub_node(i, keyring) for i in ("a", "b", "d", "z")}
    net = Net(*nodes.values())
    net.unlinkable.add(frozenset(("d", "z")))
    for x, y in [("a", "b"), ("a", "d"), ("a", "z"), ("b", "d"), ("b", "z")]:
        net.link(x, y)
    net.advance(5.0)
    assert {n.hub.id for n in nodes.values() if n.hub is not None} == {"z"}
    assert "z" not in nodes["d"].links
    net.do("a", WriteRequested(1, puts=[NewItem("L1", "hello", "w1")], priority=Priority.NORMAL))
    net.advance(net.now + 10.0)
    assert all("w1" in n.memory for n in nodes.values())
