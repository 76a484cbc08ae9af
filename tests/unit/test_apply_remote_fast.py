"""`apply_remote` takes a shortcut for ids new to every tier; it must equal the general path."""

from __future__ import annotations

import random

import numpy as np
import pytest

from crdt.memory import NewItem, TieredMemory, _NewLive
from crdt.yslice import plan_slices

IDS = {"L1": 1, "L2": 2, "L3": 3}


def memory(node: str, offset: int) -> TieredMemory:
    return TieredMemory(node_id=node, client_ids={t: c + offset for t, c in IDS.items()})


def history(seed: int) -> tuple[TieredMemory, TieredMemory]:
    """Two writers with puts, overwrites, deletes, moves and concurrent conflicts."""
    rng = random.Random(seed)
    a, b = memory("a", 10), memory("b", 20)
    for step in range(120):
        node = rng.choice((a, b))
        item_id = f"i{rng.randrange(40)}"
        now = 1_000 + step
        roll = rng.random()
        if roll < 0.15 and item_id in node:
            node.delete(item_id, now)
        elif roll < 0.25 and item_id in node:
            node.move(item_id, rng.choice(("L1", "L2", "L3")), now)
        else:
            vector = np.random.default_rng(step).standard_normal(8).astype(np.float32)
            node.put(NewItem(rng.choice(("L1", "L3")), f"c{step}", item_id, vector), now)
        if rng.random() < 0.3:
            other = b if node is a else a
            for tier in IDS:
                diff = node.tier_doc(tier).encode_diff(other.tier_doc(tier).state_vector())
                other.apply_remote(tier, diff, now)
    return a, b


def observe(m: TieredMemory) -> object:
    return (
        [(i.id, i.tier, i.content, i.deleted) for i in m.items()],
        [m.digest(t).root() for t in IDS],
        m.conflicted_ids(),
        {t: sorted(v) for t, v in m._tombstoned.items()},
        [(h.item_id, round(h.score, 5)) for h in m.search(np.ones(8, np.float32), k=50)],
        sorted(m._indexed_tier.items()),
    )


@pytest.mark.parametrize("seed", range(6))
def test_the_shortcut_gives_what_the_general_path_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = history(seed)
    receivers = [memory("r", 30), memory("s", 40)]
    monkeypatch.setattr(receivers[1], "_refresh_new", lambda *args: None)
    monkeypatch.setattr(receivers[1], "_take_new_live", lambda *args: _NewLive([], [], [], []))
    taken = []
    shortcut, bulk = receivers[0]._refresh_new, receivers[0]._take_new_live

    def counted(*args: object) -> object:
        result = shortcut(*args)  # type: ignore[arg-type]
        taken.append(result is not None)
        return result

    def counted_bulk(*args: object) -> _NewLive:
        result = bulk(*args)  # type: ignore[arg-type]
        taken.extend([True] * len(result.positions))
        return result

    monkeypatch.setattr(receivers[0], "_refresh_new", counted)
    monkeypatch.setattr(receivers[0], "_take_new_live", counted_bulk)
    events = []
    for receiver in receivers:
        seen = []
        for source in (a, b):
            for tier in IDS:
                doc = source.tier_doc(tier)
                diff = doc.encode_diff(receiver.tier_doc(tier).state_vector())
                plan = plan_slices(diff, 300)
                for index in range(len(plan)):
                    change = receiver.apply_remote(tier, plan.slice(index), 5_000)
                    seen.extend((e.kind, e.item_id, e.tier) for e in change.events)
        events.append(seen)
    assert sum(taken) > 10, "the shortcut was never taken"
    assert observe(receivers[0]) == observe(receivers[1])
    assert events[0] == events[1]
    assert receivers[0].clock.last == receivers[1].clock.last
