"""Hub election (hub_role.election), driven by hand with a tiny all-to-all claim bus."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import replace

from hub_role.config import HubConfig
from hub_role.election import Election, claim_bytes
from hub_role.signing import Ed25519Signer, Ed25519Verifier
from mesh.messages import HubClaim

CONFIG = HubConfig()


def signer_for(node_id: str) -> Ed25519Signer:
    return Ed25519Signer(hashlib.sha256(node_id.encode()).digest())


def keyring(ids: list[str]) -> dict[str, bytes]:
    return {i: signer_for(i).public_key for i in ids}


class Bus:
    """Elections that hear each other's claims (within a group), first in, first out."""

    def __init__(self, ids: list[str], *, scores: dict[str, int] | None = None) -> None:
        ring = Ed25519Verifier(keyring([*ids, "x"]))
        self.now = 0.0
        self.nodes = {
            i: Election(i, (scores or {}).get(i, 100), CONFIG, ring, signer_for(i)) for i in ids
        }
        self.group = dict.fromkeys(ids, 0)
        self.queue: deque[tuple[str, HubClaim]] = deque()

    def add(self, node_id: str, score: int = 100) -> None:
        ring = Ed25519Verifier(keyring([*self.nodes, node_id, "x"]))
        self.nodes[node_id] = Election(
            node_id, score, CONFIG, ring, signer_for(node_id), now=self.now
        )
        self.group[node_id] = 0

    def broadcast(self, src: str, claims: list[HubClaim]) -> None:
        self.queue.extend((src, c) for c in claims)

    def deliver(self) -> None:
        while self.queue:
            src, claim = self.queue.popleft()
            for node_id, election in self.nodes.items():
                if node_id != src and self.group[node_id] == self.group[src]:
                    self.broadcast(node_id, election.on_claim(claim, self.now).claims)

    def run(self, until: float, step: float = 0.05) -> None:
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 9)
            for node_id, election in self.nodes.items():
                alive = [
                    p for p in self.nodes if p != node_id and self.group[p] == self.group[node_id]
                ]
                self.broadcast(node_id, election.tick(self.now, alive))
            self.deliver()

    def hubs(self, ids: list[str] | None = None) -> set[str | None]:
        return {
            (e.hub.id if e.hub else None) for i, e in self.nodes.items() if ids is None or i in ids
        }


def test_all_nodes_agree_on_the_best_eligible_node() -> None:
    bus = Bus(["a", "b", "c", "d", "e"])
    bus.run(3.0)
    assert bus.hubs() == {"e"}
    assert bus.nodes["e"].is_hub
    assert all(e.hub is not None and e.hub.term == 1 for e in bus.nodes.values())


def test_score_beats_id_and_ineligible_nodes_never_win() -> None:
    bus = Bus(["a", "b", "c", "z"], scores={"b": 150, "z": 0})
    bus.run(3.0)
    assert bus.hubs() == {"b"}
    assert not bus.nodes["z"].eligible


def test_election_without_signer_is_ineligible() -> None:
    election = Election("solo", 100, CONFIG, Ed25519Verifier(), None)
    assert not election.eligible
    assert election.tick(10.0, []) == []


def test_newcomer_with_a_small_lead_does_not_unseat_a_healthy_hub() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    assert bus.hubs() == {"c"}
    bus.add("x", score=100 + CONFIG.unseat_margin - 1)
    bus.run(8.0)
    assert bus.hubs() == {"c"}
    assert bus.nodes["x"].hub is not None and bus.nodes["x"].hub.term == 1


def test_newcomer_with_a_large_lead_takes_over_in_a_new_term() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    bus.add("x", score=100 + CONFIG.unseat_margin)
    bus.run(8.0)
    assert bus.hubs() == {"x"}
    assert {e.hub.term for e in bus.nodes.values() if e.hub} == {2}


def test_a_silent_hub_is_replaced_in_a_higher_term() -> None:
    bus = Bus(["a", "b", "c", "d"])
    bus.run(3.0)
    assert bus.hubs() == {"d"}
    since = bus.nodes["a"].hub.since  # type: ignore[union-attr]
    del bus.nodes["d"]
    bus.run(3.0 + CONFIG.timeout_s + CONFIG.claim_stagger_s + 0.3)
    assert bus.hubs() == {"c"}
    hub = bus.nodes["a"].hub
    assert hub is not None and hub.term == 2 and hub.since > since


def test_a_vouched_hub_survives_missing_heartbeats_and_is_lost_without_them() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    assert bus.hubs() == {"c"}
    kept, dropped = bus.nodes["a"], bus.nodes["b"]
    end = bus.now + 3 * CONFIG.timeout_s
    while bus.now < end:  # the hub's heartbeats stop arriving; only a hears of it otherwise
        bus.now = round(bus.now + 0.05, 9)
        kept.vouch(bus.now)
        kept.tick(bus.now, ["b", "c"])
        dropped.tick(bus.now, ["a", "c"])
    assert kept.hub is not None and kept.hub.id == "c"
    assert dropped.hub is None or dropped.hub.id != "c"


def test_a_plain_heartbeat_is_not_forwarded_but_news_is() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    hub = bus.nodes["c"]
    heartbeat = hub.tick(bus.now + CONFIG.heartbeat_s, ["a", "b"])
    assert len(heartbeat) == 1 and heartbeat[0].seq > 2
    outcome = bus.nodes["a"].on_claim(heartbeat[0], bus.now + CONFIG.heartbeat_s)
    assert outcome.accepted and not outcome.forward
    newcomer = Election("d", 100, CONFIG, Ed25519Verifier(keyring(["c", "d"])), signer_for("d"))
    first = newcomer.on_claim(heartbeat[0], bus.now + CONFIG.heartbeat_s)
    assert first.accepted and first.forward  # a hub new to this node is news: pass it on


def test_member_death_loses_the_hub_at_once() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    del bus.nodes["c"]
    for election in bus.nodes.values():
        election.on_member_dead("c", bus.now, [p for p in bus.nodes])
    assert bus.hubs() == {None}
    bus.run(bus.now + CONFIG.claim_stagger_s + 0.1)
    assert bus.hubs() == {"b"}


def test_split_brain_heals_to_the_higher_term_score_and_id() -> None:
    bus = Bus(["a", "b", "c", "d", "e", "f"])
    bus.run(3.0)
    assert bus.hubs() == {"f"}
    for node_id in ("a", "b", "c"):
        bus.group[node_id] = 1
    bus.run(8.0)
    assert bus.hubs(["a", "b", "c"]) == {"c"}
    assert bus.hubs(["d", "e", "f"]) == {"f"}
    for node_id in bus.group:
        bus.group[node_id] = 0
    bus.run(10.0)
    hubs = bus.hubs()
    assert len(hubs) == 1
    winner = hubs.pop()
    # c holds term 2 against f's term 1. f may contest term 2 (it outranks c), but its
    # claim there is fresh and c is established: the hub of the higher term stays.
    assert winner == "c"
    assert sum(e.is_hub for e in bus.nodes.values()) == 1
    assert {e.hub.term for e in bus.nodes.values() if e.hub} == {2}


def forged(claim: HubClaim, **changes: object) -> HubClaim:
    return replace(claim, **changes)  # type: ignore[arg-type]


def test_forged_claims_are_ignored_and_counted() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    victim = bus.nodes["a"]
    before = victim.hub
    mallory = signer_for("mallory")
    # A claim for "z" (outranks everyone) signed with a key not bound to "z".
    data = claim_bytes("z", 9, 1, 999, mallory.public_key)
    wrong_key = HubClaim("z", 9, 1, 999, mallory.public_key, mallory.sign(data))
    # c's real key, but the signature does not cover the claim (score changed after signing).
    real = signer_for("c")
    data = claim_bytes("c", 9, 1, 100, real.public_key)
    bad_sig = HubClaim("c", 9, 1, 999, real.public_key, real.sign(data))
    # A genuine claim of b, in a term below the adopted hub's.
    old = HubClaim("b", 0, 5, 100, signer_for("b").public_key, b"")
    old = forged(old, signature=signer_for("b").sign(claim_bytes("b", 0, 5, 100, old.public_key)))
    outcomes = [victim.on_claim(c, bus.now) for c in (wrong_key, bad_sig, old)]
    assert [o.accepted or o.forward for o in outcomes] == [False, False, False]
    assert victim.rejected == {"key_mismatch": 1, "bad_signature": 1, "stale_term": 1}
    assert victim.hub == before


def test_replayed_heartbeats_do_not_revive_a_lost_hub() -> None:
    bus = Bus(["a", "b", "c"])
    bus.run(3.0)
    last = bus.nodes["c"].tick(bus.now + 1.0, ["a", "b"])[0]
    a = bus.nodes["a"]
    assert a.on_claim(last, bus.now).accepted
    a.on_member_dead("c", bus.now, ["b"])
    assert a.hub is None
    outcome = a.on_claim(last, bus.now)
    assert not outcome.accepted and a.hub is None
