"""Lease tokens past the last one of a term; the counter is injected, no 2**32 grants.

Suspected in review, reproduced here: after 2**32 - 1 grants in one term,
`LeaseTable.request` raised OverflowError. For a peer's LEASE_REQUEST it surfaced inside
`handle(FrameReceived)` and was counted as that honest peer's bad frame (20 disconnect
it) with no answer; for the hub's own `LeaseRequested` it raised out of `Node.handle`.
Leases then stayed unavailable for as long as the hub served that term.
"""

from __future__ import annotations

import pytest

from hub_role.election import MAX_TERM, claim_bytes
from hub_role.leases import MAX_GRANTS_PER_TERM, TERM_SHIFT, LeaseTable, TermExhausted
from mesh.codec import encode_message
from mesh.effects import Disconnect, LeaseAnswered
from mesh.inputs import FrameReceived, LeaseRequested
from mesh.messages import HubClaim
from mesh.node import Node
from mesh.node_hub import LAST_TERM_ERROR
from tests.unit.test_hub_bounds import hub_mesh
from tests.unit.test_node import Net

LAST = MAX_GRANTS_PER_TERM


def test_the_table_grants_the_last_token_of_a_term_then_needs_a_higher_term() -> None:
    table = LeaseTable(term=5, grants=LAST - 1)
    assert not table.exhausted
    ok, last = table.request("a", "n1", 1.0, now=0.0)
    assert ok and last.token == (5 << TERM_SHIFT) | LAST and table.exhausted
    with pytest.raises(TermExhausted):
        table.request("b", "n2", 1.0, now=0.1)  # a new name
    with pytest.raises(TermExhausted):
        table.request("a", "n1", 1.0, now=0.1)  # a renewal takes a token too
    assert table.holder("b", 0.1) is None and table.holder("a", 0.1) == last
    ok, other = table.request("a", "n2", 1.0, now=0.2)
    assert not ok and other == last  # a refusal takes no token
    table.set_term(6)
    ok, fresh = table.request("b", "n2", 1.0, now=0.3)
    assert ok and fresh.token == (6 << TERM_SHIFT) | 1 and fresh.token > last.token


def test_an_injected_counter_is_checked() -> None:
    with pytest.raises(ValueError):
        LeaseTable(term=1, grants=LAST + 1)
    with pytest.raises(ValueError):
        LeaseTable(term=1, grants=-1)


def exhaust(nodes: dict[str, Node], hub: str, left: int) -> int:
    """Leave the hub's table of its term `left` tokens; return the term."""
    node = nodes[hub]
    assert node.hub is not None
    term = node.hub.term
    node._hub_router().leases = LeaseTable(term, grants=LAST - left)
    return term


def lease_answers(net: Net, node_id: str) -> dict[int, LeaseAnswered]:
    return {e.request_id: e for e in net.log[node_id] if isinstance(e, LeaseAnswered)}


def test_peer_requests_past_the_last_token_are_granted_in_the_next_term() -> None:
    net, nodes, hub = hub_mesh("a", "b", "c")
    b, c = sorted(i for i in nodes if i != hub)
    term = exhaust(nodes, hub, left=1)
    # c's request takes the last token of the term; b's arrives after it, so b hears of the
    # new term while its own request is still in flight.
    net.do(c, LeaseRequested(1, "lock-c", ttl_s=5.0))
    net.do(b, LeaseRequested(2, "lock-b", ttl_s=5.0))
    net.settle()
    got_c, got_b = lease_answers(net, c)[1], lease_answers(net, b)[2]
    assert got_c.granted and got_c.term == term and got_c.token == (term << TERM_SHIFT) | LAST
    assert got_b.granted and got_b.term == term + 1, got_b.error
    assert got_b.token == ((term + 1) << TERM_SHIFT) | 1 > got_c.token
    # Same hub, one term higher, everywhere; nobody was penalised for asking.
    assert {(n.hub.id, n.hub.term) for n in nodes.values() if n.hub} == {(hub, term + 1)}
    assert all(n.hub is not None for n in nodes.values()) and nodes[hub].is_hub
    for node_id, node in nodes.items():
        assert node.counters.bad_frames == 0, (node_id, node.counters.bad_frames_by_peer)
        assert not any(isinstance(e, Disconnect) for e in net.log[node_id])
    # c still holds its lease of the old term: fencing tokens keep growing past it.
    net.do(c, LeaseRequested(3, "lock-b", ttl_s=5.0))
    net.settle()
    refused = lease_answers(net, c)[3]
    assert not refused.granted and refused.holder == b
    net.advance(net.now + 3.0)  # heartbeats of the new term keep it
    assert nodes[hub].is_hub and all(n.hub and n.hub.term == term + 1 for n in nodes.values())


def test_the_hubs_own_request_past_the_last_token_is_granted_in_the_next_term() -> None:
    net, nodes, hub = hub_mesh("a", "b")
    term = exhaust(nodes, hub, left=0)
    effects = net.do(hub, LeaseRequested(1, "own", ttl_s=5.0))
    (answer,) = [e for e in effects if isinstance(e, LeaseAnswered)]
    assert answer.granted and answer.token == ((term + 1) << TERM_SHIFT) | 1
    net.settle()
    assert {(n.hub.id, n.hub.term) for n in nodes.values() if n.hub} == {(hub, term + 1)}


def granted_token(net: Net, node_id: str, request_id: int) -> int:
    (answer,) = [a for rid, a in lease_answers(net, node_id).items() if rid == request_id]
    assert answer.granted, answer
    return answer.token


def test_a_hub_taking_over_a_healed_split_brains_term_grants_larger_tokens() -> None:
    """Regression: the old hub won the other side's term on heal and restarted its token
    counter there, granting a token below the stale holder's."""
    net, nodes, hub = hub_mesh("a", "b", "c", "z")
    assert hub == "z"
    for left in ("a", "z"):
        for right in ("b", "c"):
            net.cut.add(frozenset((left, right)))
    net.advance(20.0)
    assert nodes["b"].hub is not None and nodes["b"].hub.id == "c"  # its side's own hub
    for k in range(5):
        net.do("b", LeaseRequested(10 + k, f"N{k}", 300.0))
        net.settle()
    net.do("b", LeaseRequested(20, "X", 300.0))
    net.settle()
    stale = granted_token(net, "b", 20)
    net.cut.clear()
    net.advance(60.0)
    assert {n.hub.id for n in nodes.values() if n.hub is not None} == {"z"}
    net.do("a", LeaseRequested(30, "X", 300.0))
    net.settle()
    net.advance(61.0)
    assert granted_token(net, "a", 30) > stale


def test_a_claim_beyond_the_last_term_is_refused_and_ticks_go_on() -> None:
    """Regression: a member's claim with term 2**64 - 1 was adopted mesh-wide, then every
    node's campaign overflowed the claim encoding and raised out of handle(Tick)."""
    net, nodes, _hub = hub_mesh("a", "b", "c")
    signer = nodes["a"]._signer
    assert signer is not None
    term, key = MAX_TERM + 1, signer.public_key  # validly signed by a member, past the end
    claim = HubClaim(
        "a", term, 1, 2**32 - 1, key, signer.sign(claim_bytes("a", term, 1, 2**32 - 1, key))
    )
    for node_id in ("b", "c"):
        net.do(node_id, FrameReceived("a", encode_message(claim)))
    assert {nodes[i].hub.term for i in ("b", "c")} == {1}  # type: ignore[union-attr]
    assert nodes["b"]._hub_router().election.rejected.get("bad_term") == 1
    net.advance(net.now + 30.0)  # ticks keep working


def test_no_lease_is_granted_once_a_forged_claim_reached_the_last_term() -> None:
    """Found in review: a claim at exactly MAX_TERM is valid, but no higher term exists to
    leave a contested one, so a later hub restarting its counter there could reuse tokens."""
    net, nodes, hub = hub_mesh("a", "b", "c")
    forger = sorted(i for i in nodes if i != hub)[0]
    signer = nodes[forger]._signer
    assert signer is not None
    key = signer.public_key
    signature = signer.sign(claim_bytes(forger, MAX_TERM, 1, 1, key))
    claim = HubClaim(forger, MAX_TERM, 1, 1, key, signature)
    for node_id in nodes:
        if node_id != forger:
            net.do(node_id, FrameReceived(forger, encode_message(claim)))
    net.settle()
    assert {n.hub.term for n in nodes.values() if n.hub is not None} == {MAX_TERM}
    asker = next(i for i, n in nodes.items() if not n.is_hub)
    net.do(asker, LeaseRequested(1, "X", 5.0))
    net.settle()
    answer = lease_answers(net, asker)[1]
    assert not answer.granted and answer.error == LAST_TERM_ERROR
