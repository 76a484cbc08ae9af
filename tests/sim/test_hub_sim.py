"""The hub role in the simulated world: election, relay, failover, split brain, priority,
forgeries. Every run is seeded and repeatable."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

from crdt.memory import NewItem
from hub_role.election import claim_bytes
from hub_role.relay import relay_bytes
from hub_role.signing import Ed25519Signer
from mesh.codec import encode_message
from mesh.config import NodeConfig
from mesh.frames import Flags, Priority
from mesh.inputs import AckLevel, FrameReceived
from mesh.membership import SwimConfig
from mesh.messages import HubClaim, HubRelay, MemberState, MemorySync, SyncKind
from simulations.world import World

LAN = NodeConfig.sim(swim=SwimConfig.lan())


def mesh(n: int, seed: int = 1, config: NodeConfig = LAN) -> World:
    world = World(seed, config=config, discovery="burst", hub_role=True)
    for i in range(n):
        world.add_node(f"n{i:03d}")
    return world


def the_hub(world: World) -> str | None:
    hubs = Counter(world.hubs().values())
    if len(hubs) != 1:
        return None
    return next(iter(hubs))


def test_one_hub_is_elected_and_updates_go_through_it() -> None:
    world = mesh(24)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub == "n023"  # equal scores: the highest id
    assert sum(s.node.is_hub for s in world.live()) == 1
    records = [
        world.write(f"n{k:03d}", [NewItem("L1", f"c{k}", f"i{k}")], ack=AckLevel.HUB)
        for k in range(10)
    ]
    world.run_until(4.0)
    assert all(r.acked_at is not None for r in records)
    assert world.holds_everything([f"i{k}" for k in range(10)])
    sent = [world.nodes[f"n{k:03d}"].node.hub_counters for k in range(10)]
    assert all(c.relayed_sent == 1 and c.p2p_sent == 0 for c in sent)
    # Links grow linearly: the hub links to everyone, the others to a few peers.
    degrees = sorted(len(s.node.links) for s in world.live())
    assert degrees[-1] == 23
    assert degrees[-2] <= 12


def test_critical_goes_peer_to_peer_and_the_hub_gets_a_copy() -> None:
    world = mesh(20)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub is not None
    world.write("n004", [NewItem("L2", "urgent", "crit")], priority=Priority.CRITICAL)
    world.run_until(3.5)
    counters = world.nodes["n004"].node.hub_counters
    assert counters.p2p_sent == 1 and counters.relayed_sent == 0 and counters.hub_notified == 1
    assert world.holds_everything(["crit"])
    assert "crit" in world.nodes[hub].node.memory


def test_hub_failover_is_within_3_s_and_loses_no_acked_write() -> None:
    world = mesh(40, seed=7)
    world.run_until(3.0)
    old = the_hub(world)
    assert old is not None
    world.crash(old)
    crashed_at = world.now
    records = []
    new = None
    t = crashed_at
    k = 0
    while t < crashed_at + 6.0:
        t = round(t + 0.1, 6)
        world.run_until(t)
        writer = f"n{k % 39:03d}"
        records.append(world.write(writer, [NewItem("L3", f"c{k}", f"f{k}")], ack=AckLevel.PEER))
        k += 1
        hub = the_hub(world)
        if new is None and hub not in (None, old):
            new = (hub, world.now - crashed_at)
    assert new is not None and new[1] <= 3.0
    hub_node = world.nodes[new[0]].node
    assert hub_node.is_hub and hub_node.hub_counters.fanned_out > 0
    world.run_until(t + 5.0)
    acked = [r for r in records if r.acked_at is not None]
    assert len(acked) >= len(records) - 15  # writes in the failover window may time out
    assert world.holds_everything([i for r in records for i in r.item_ids])


def test_split_brain_heals_to_one_hub_without_loss() -> None:
    world = mesh(12, seed=3)
    world.run_until(3.0)
    assert the_hub(world) == "n011"
    left = [f"n{i:03d}" for i in range(0, 12, 2)]
    right = [f"n{i:03d}" for i in range(1, 12, 2)]
    world.partition([left, right])
    world.run_until(8.0)
    hubs_left = {world.hubs()[n] for n in left}
    hubs_right = {world.hubs()[n] for n in right}
    assert len(hubs_left) == 1 and len(hubs_right) == 1 and hubs_left != hubs_right
    ids = []
    for k, writer in enumerate(left[:3] + right[:3]):
        world.write(writer, [NewItem("L1", f"side {k}", f"s{k}")], ack=AckLevel.PEER)
        ids.append(f"s{k}")
    world.run_until(10.0)
    world.heal()
    world.run_until(20.0)
    assert the_hub(world) is not None
    assert sum(s.node.is_hub for s in world.live()) == 1
    assert world.holds_everything(ids)
    assert world.digests_equal()


def test_a_tampered_relayed_frame_is_refused_and_counted() -> None:
    world = mesh(6)
    world.run_until(3.0)
    seed = hashlib.sha256(b"sim-key-1-n001").digest()  # World's deterministic sim key
    signer = Ed25519Signer(seed)
    assert signer.public_key == world.keyring["n001"]
    update = world.nodes["n001"].node.memory.put(NewItem("L1", "signed", "sig-1"), 1)
    inner = MemorySync(bytes(16), "n001", "*", "L1", SyncKind.UPDATE, update.updates[0][1])
    frame = encode_message(inner, flags=Flags.BATCHED)
    good = HubRelay("n001", signer.public_key, signer.sign(relay_bytes(frame)), frame)
    tampered_frame = bytearray(frame)
    tampered_frame[-1] ^= 0x01  # the hub flips one bit of the body (and fixes nothing else)
    tampered = replace(good, frame=bytes(tampered_frame))
    forged_key = replace(good, public_key=Ed25519Signer(b"\x02" * 32).public_key)
    victim = world.nodes["n002"].node
    for envelope in (tampered, forged_key):
        world._input("n002", FrameReceived("n005", encode_message(envelope)))
    assert victim.hub_counters.relay_rejected == 2
    assert victim.hub_counters.relay_rejected_by_reason == {"bad_signature": 1, "key_mismatch": 1}
    assert "sig-1" not in victim.memory
    world._input("n002", FrameReceived("n005", encode_message(good)))
    assert "sig-1" in victim.memory
    assert victim.hub_counters.relay_rejected == 2


def test_forged_claims_are_ignored_and_counted() -> None:
    world = mesh(6)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub == "n005"
    mallory = Ed25519Signer(b"\x01" * 32)
    data = claim_bytes("n999", 50, 1, 10_000, mallory.public_key)
    unknown = HubClaim("n999", 50, 1, 10_000, mallory.public_key, mallory.sign(data))
    fake_hub = replace(unknown, node_id="n005")  # the real hub's id, mallory's key
    for claim in (unknown, fake_hub):
        for sim in world.live():
            world._input(sim.node_id, FrameReceived("n000", encode_message(claim)))
    world.run_until(5.0)
    assert the_hub(world) == "n005"
    rejected = world.nodes["n001"].node.claims_rejected
    assert rejected.get("key_mismatch", 0) == 2


def test_saturated_hub_delivers_high_before_low_queued_earlier() -> None:
    hub_config = replace(LAN.hub, relay_burst=1, relay_interval_s=0.2, low_batch_s=0.001)
    config = replace(LAN, hub=hub_config, anti_entropy_interval_s=3600.0)
    world = mesh(16, seed=5, config=config)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub == "n015"
    receiver = world.nodes["n000"].node
    lows = [f"low{k}" for k in range(8)]
    highs = [f"high{k}" for k in range(3)]
    for k, item in enumerate(lows):
        world.write(f"n{k + 1:03d}", [NewItem("L1", item, item)], priority=Priority.LOW)
    world.run_until(world.now + 0.3)  # the LOW batches are at the hub, queued
    assert sum(world.nodes[hub].node.relay_backlog().values()) >= 5
    for k, item in enumerate(highs):
        world.write(f"n{k + 10:03d}", [NewItem("L1", item, item)], priority=Priority.HIGH)
    arrived: dict[str, float] = {}
    end = world.now + 5.0
    while world.now < end and len(arrived) < len(lows) + len(highs):
        world.run_until(round(world.now + 0.01, 6))
        for item in lows + highs:
            if item not in arrived and item in receiver.memory:
                arrived[item] = world.now
    assert set(arrived) == set(lows + highs)
    last_high = max(arrived[h] for h in highs)
    late_lows = [low for low in lows if arrived[low] > last_high]
    assert len(late_lows) >= 4  # queued earlier, delivered after every HIGH


def test_every_node_sees_mesh_wide_stats_from_the_hub() -> None:
    config = replace(LAN, hub=replace(LAN.hub, stats_interval_s=1.0))
    world = mesh(12, seed=2, config=config)
    world.run_until(3.0)
    for k in range(6):
        world.write(f"n{k:03d}", [NewItem("L1", f"s{k}", f"st{k}")], ack=AckLevel.HUB)
    world.write("n007", [NewItem("L2", "c", "crit-st")], priority=Priority.CRITICAL)
    world.run_until(7.0)
    hub = the_hub(world)
    for sim in world.live():
        view = sim.node.mesh_stats()
        assert view is not None and view.hub_id == hub
        assert sorted(r.node_id for r in view.reports) == sorted(world.nodes)
    view = world.nodes["n003"].node.mesh_stats()
    assert view is not None
    totals = view.totals()
    assert totals["relayed_batches"] > 0 and totals["p2p_batches"] > 0
    own = next(r for r in view.reports if r.node_id == "n000")
    l1 = next(t for t in own.tiers if t.tier == "L1")
    assert l1.relayed >= 1  # sent one through the hub, received the others relayed


def test_leases_are_exclusive_and_fencing_tokens_grow_across_failover() -> None:
    world = mesh(8, seed=6)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub == "n007"
    first = world.lease("n001", "printer", 10.0)
    world.run_until(3.1)
    grant = world.lease_answers[first]
    assert grant.granted and grant.holder == "n001" and grant.term >= 1
    second = world.lease("n002", "printer", 10.0)
    world.run_until(3.2)
    refused = world.lease_answers[second]
    assert not refused.granted and refused.holder == "n001" and refused.ttl_s > 9.0
    world.release("n001", "printer", grant.token)
    world.run_until(3.25)  # the release reaches the hub first (they would race otherwise)
    third = world.lease("n002", "printer", 10.0)
    world.run_until(3.35)
    after_release = world.lease_answers[third]
    assert after_release.granted and after_release.token > grant.token
    world.crash(hub)
    world.run_until(8.0)
    new_hub = the_hub(world)
    assert new_hub not in (None, hub)
    fourth = world.lease("n003", "printer", 10.0)  # the new hub never saw n002's lease
    world.run_until(8.1)
    fenced = world.lease_answers[fourth]
    assert fenced.granted and fenced.token > after_release.token and fenced.term > grant.term


def test_lease_without_hub_is_refused_at_once() -> None:
    world = World(1, config=LAN, discovery="burst")  # no keys: no hub
    for i in range(3):
        world.add_node(f"n{i}")
    world.run_until(3.0)
    answer = world.lease_answers[world.lease("n0", "x", 1.0)]
    assert not answer.granted and answer.error == "no hub"


def test_a_batch_handed_to_a_dead_hub_is_flooded_peer_to_peer() -> None:
    world = mesh(10, seed=8)
    world.run_until(3.0)
    hub = the_hub(world)
    assert hub == "n009"
    world.crash(hub)  # nobody knows yet: the next batch is handed to the dead hub
    record = world.write("n002", [NewItem("L3", "orphan", "orphan")], ack=AckLevel.PEER)
    world.run_until(world.now + 0.2)
    counters = world.nodes["n002"].node.hub_counters
    assert counters.relayed_sent == 1
    assert not world.holds_everything(["orphan"])
    world.run_until(world.now + 1.5)  # relay_ack_timeout_s, or the hub is declared lost
    assert counters.relay_fallbacks == 1
    assert record.acked_at is not None
    assert world.holds_everything(["orphan"])


def test_a_node_without_a_key_follows_the_hub_and_floods_its_own_updates() -> None:
    world = World(9, config=LAN, discovery="burst", hub_role=True)
    world.keyless.add("n002")  # as a node that cannot sign
    for i in range(6):
        world.add_node(f"n{i:03d}")
    keyless = world.nodes["n002"]
    world.run_until(3.0)
    assert the_hub(world) == "n005"
    world.write("n002", [NewItem("L1", "k", "keyless")], ack=AckLevel.HUB)
    world.run_until(3.5)
    counters = keyless.node.hub_counters
    assert counters.p2p_sent == 1 and counters.relayed_sent == 0
    assert world.holds_everything(["keyless"])


def test_a_higher_ranked_newcomer_learns_of_the_hub_and_follows_it() -> None:
    world = mesh(6, seed=3)
    world.run_until(3.0)
    assert the_hub(world) == "n005"
    terms = {s.node.hub.term for s in world.live() if s.node.hub is not None}
    world.add_node("n900")  # would win an election; must follow the established hub
    world.run_until(8.0)
    assert the_hub(world) == "n005"
    assert {s.node.hub.term for s in world.live() if s.node.hub is not None} == terms
    assert world.nodes["n900"].node.hub is not None


def test_the_hub_fans_a_tier_out_only_to_nodes_that_replicate_it() -> None:
    world = World(5, config=LAN, discovery="burst", hub_role=True)
    world.tiers_of["n000"] = ("L1",)  # a phone keeping only working memory
    for i in range(6):
        world.add_node(f"n{i:03d}")
    world.run_until(3.0)
    assert the_hub(world) == "n005"
    phone = world.nodes["n000"].node
    received: list[int] = []
    handle = phone.handle

    def spy(event: object, now: float) -> list[object]:
        if isinstance(event, FrameReceived) and event.peer_id == "n005":
            received.append(int.from_bytes(event.data[8:10], "big"))
        return handle(event, now)  # type: ignore[arg-type]

    phone.handle = spy  # type: ignore[method-assign]
    world.write("n001", [NewItem("L3", "fact", "l3-fact")], ack=AckLevel.HUB)
    world.run_until(4.0)
    assert "l3-fact" in world.nodes["n002"].node.memory
    assert 0x0202 not in received  # no HUB_RELAY of an L3 batch to a node without L3
    world.write("n001", [NewItem("L1", "note", "l1-note")], ack=AckLevel.HUB)
    world.run_until(5.0)
    assert 0x0202 in received and "l1-note" in phone.memory


def test_a_hub_that_leaves_gracefully_is_replaced_before_its_timeout() -> None:
    world = mesh(40, seed=7)
    world.run_until(3.0)
    old = the_hub(world)
    assert old is not None
    timeout = LAN.hub.timeout_s
    world.leave(old)
    left_at = world.now
    replaced = world.run_until(left_at + timeout, stop=lambda: the_hub(world) not in (None, old))
    assert replaced, f"no new hub within the {timeout} s hub timeout"
    assert world.now - left_at < timeout / 2
    world.run_until(world.now + 1.0)  # gossip carries the news to any goodbye that was late
    survivors = [s.node for s in world.live()]
    assert all(n.membership.state_of(old) is MemberState.LEFT for n in survivors)
