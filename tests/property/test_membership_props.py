"""Property tests: merging membership gossip is order-independent (a join-semilattice)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from mesh.membership import Membership, rank
from mesh.messages import MemberState, MemberUpdate
from mesh.swim_config import SwimConfig

NODES = ("a", "b", "c", "me")
updates = st.builds(
    MemberUpdate,
    node_id=st.sampled_from(NODES),
    state=st.sampled_from(MemberState),
    incarnation=st.integers(0, 4),
)
update_lists = st.lists(updates, max_size=30)


def merged(self_id: str, batches: list[list[MemberUpdate]]) -> Membership:
    m = Membership(self_id, SwimConfig.lan(), random.Random(0), incarnation=1)
    for now, batch in enumerate(batches):
        m.apply_gossip(batch, float(now))
    return m


def view(m: Membership) -> dict[str, tuple[MemberState, int]]:
    return {k: (v.state, v.incarnation) for k, v in m.members().items() if k != m.self_id}


def split(items: list[MemberUpdate], cuts: list[int]) -> list[list[MemberUpdate]]:
    bounds = sorted({0, len(items), *(c % (len(items) + 1) for c in cuts)})
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


@given(update_lists, st.randoms(use_true_random=False), st.lists(st.integers(0, 30), max_size=4))
def test_same_updates_in_any_order_give_the_same_view(
    ups: list[MemberUpdate], rnd: random.Random, cuts: list[int]
) -> None:
    shuffled = list(ups)
    rnd.shuffle(shuffled)
    one = merged("me", [ups])
    two = merged("me", split(shuffled, cuts))
    assert view(one) == view(two)
    # Self-refutation is order-independent too: the final incarnation is the same.
    assert one.incarnation == two.incarnation
    assert one.members()["me"].state == MemberState.ALIVE


@given(update_lists)
def test_view_is_the_maximum_by_rank_and_merging_is_idempotent(ups: list[MemberUpdate]) -> None:
    m = merged("me", [ups])
    best: dict[str, tuple[MemberState, int]] = {}
    for u in ups:
        if u.node_id == "me":
            continue
        old = best.get(u.node_id)
        if old is None or rank(u.state, u.incarnation) > rank(*old):
            best[u.node_id] = (u.state, u.incarnation)
    assert view(m) == best
    before = view(m)
    m.changes()
    m.apply_gossip(ups, 99.0)
    assert view(m) == before and m.changes() == []


@given(update_lists, update_lists)
def test_merge_of_two_views_is_commutative(
    left: list[MemberUpdate], right: list[MemberUpdate]
) -> None:
    """Gossiping one node's whole view to another is a join: both directions agree."""
    x, y = merged("p", [left]), merged("q", [right])

    def dump(m: Membership) -> list[MemberUpdate]:
        return [MemberUpdate(k, s, i) for k, (s, i) in view(m).items()]

    x.apply_gossip(dump(y), 5.0)
    y.apply_gossip(dump(x), 5.0)
    assert view(x) == view(y)


@given(update_lists)
def test_refutation_leaves_self_alive_above_every_accusation(ups: list[MemberUpdate]) -> None:
    m = merged("me", [ups])
    about_self = [u for u in ups if u.node_id == "me"]
    assert m.incarnation >= 1 and m.members()["me"].state == MemberState.ALIVE
    for u in about_self:
        if u.state == MemberState.ALIVE:
            assert m.incarnation >= u.incarnation
        elif u.incarnation >= 1:
            assert m.incarnation > u.incarnation
    assert m.refutations <= len(about_self)
