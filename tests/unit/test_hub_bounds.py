"""Bounds of the hub role, driven by hand (explicit `now`, no event loop, no sleeps).

Regression found in review: a relayed batch too large for one envelope raised out of
`handle(Tick)` and was lost.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from crdt.memory import NewItem, TieredMemory
from hub_role.signing import Ed25519Signer, Ed25519Verifier
from mesh.config import NodeConfig
from mesh.effects import WriteAcked
from mesh.frames import DEFAULT_LIMITS, Priority
from mesh.inputs import AckLevel, WriteRequested
from mesh.node import Node
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
