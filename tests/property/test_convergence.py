"""Replicas of the tier documents converge whatever the order, loss-free duplication and
interleaving of their updates: equal content, equal Merkle roots, equal resolved values and
equal conflict sets."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crdt.config import MemoryConfig
from crdt.errors import ItemNotFoundError
from crdt.item import to_record
from crdt.memory import NewItem, TieredMemory

TIERS = ("L1", "L2", "L3")
IDS = ("a", "b", "c", "d")


def make_replicas(n: int, config: MemoryConfig) -> list[TieredMemory]:
    return [
        TieredMemory(
            node_id=f"node{i}",
            client_ids={t: 1000 * (i + 1) + j for j, t in enumerate(TIERS)},
            config=config,
        )
        for i in range(n)
    ]


def snapshot(replica: TieredMemory) -> dict[str, object]:
    """Everything that must be equal across converged replicas."""
    resolved: dict[str, str | None] = {}
    conflicts: dict[str, list[str]] = {}
    versions: dict[str, list[str]] = {}
    for item_id in IDS:
        try:
            resolved[item_id] = to_record(replica.get(item_id)) + replica.get(item_id).tier
        except ItemNotFoundError:
            resolved[item_id] = None
        conflicts[item_id] = sorted(to_record(v) + v.tier for v in replica.conflicts(item_id))
        versions[item_id] = sorted(to_record(v) + v.tier for v in replica.versions(item_id))
    return {
        "roots": {t: replica.digest(t).root() for t in TIERS},
        "resolved": resolved,
        "conflicts": conflicts,
        "versions": versions,
        "counts": {t: replica.count(t) for t in TIERS},
    }


put_op = st.tuples(
    st.just("put"), st.sampled_from(TIERS), st.sampled_from(IDS), st.text(max_size=8)
)
operation = st.one_of(
    put_op,
    put_op,
    st.tuples(st.just("meta"), st.sampled_from(IDS), st.integers(0, 3), st.integers(0, 9)),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
    st.tuples(st.just("move"), st.sampled_from(IDS), st.sampled_from(TIERS)),
    st.tuples(st.just("deliver"), st.integers(0, 50)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 5),
    resolver=st.sampled_from(["lww", "max", "union", "merge", "confidence_vote"]),
    ops=st.lists(st.tuples(st.integers(0, 4), operation), min_size=10, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_replicas_converge(
    n: int, resolver: str, ops: list[tuple[int, tuple[object, ...]]], seed: int
) -> None:
    rng = random.Random(seed)
    config = MemoryConfig.with_resolvers(L1=resolver, L2=resolver, L3=resolver)
    replicas = make_replicas(n, config)
    in_flight: list[tuple[int, str, bytes]] = []  # (destination, tier, update)
    now = 1_000_000

    def broadcast(source: int, updates: tuple[tuple[str, bytes], ...]) -> None:
        for tier, update in updates:
            for dest in range(n):
                if dest != source:
                    in_flight.append((dest, tier, update))
                    if rng.random() < 0.2:
                        in_flight.append((dest, tier, update))  # duplicate

    def deliver(count: int) -> None:
        rng.shuffle(in_flight)
        for _ in range(min(count, len(in_flight))):
            dest, tier, update = in_flight.pop()
            replicas[dest].apply_remote(tier, update, now)

    for who, op in ops:
        now += rng.randint(0, 3)
        source = who % n
        replica = replicas[source]
        kind = op[0]
        if kind == "put":
            _, tier, item_id, text = op
            vec = np.array([rng.uniform(-1, 1) for _ in range(4)], dtype=np.float32)
            change = replica.put(
                NewItem(
                    str(tier),
                    str(text),
                    str(item_id),
                    embedding=vec,
                    tags=[f"t{rng.randint(0, 3)}"],
                    citations=[f"c{rng.randint(0, 3)}"],
                    confidence=rng.random(),
                    metadata={"k": rng.randint(0, 3)},
                ),
                now,
            )
        elif kind == "meta":
            _, item_id, key, value = op
            if str(item_id) not in replica:
                continue
            current = replica.get(str(item_id))
            meta = {**current.metadata, f"m{key}": value}
            change = replica.put(
                NewItem(current.tier, current.content, current.id, metadata=meta), now
            )
        elif kind == "delete":
            if str(op[1]) not in replica:
                continue
            change = replica.delete(str(op[1]), now)
        elif kind == "move":
            if str(op[1]) not in replica:
                continue
            change = replica.move(str(op[1]), str(op[2]), now)
        else:
            deliver(int(str(op[1])))
            continue
        broadcast(source, change.updates)

    # Heal: every remaining update arrives (in random order, duplicates included).
    deliver(len(in_flight))
    expected = snapshot(replicas[0])
    conflicted = sum(1 for versions in expected["conflicts"].values() if versions)  # type: ignore[attr-defined]
    event(f"items in conflict at the end: {min(conflicted, 2)}+")
    event(f"live items at the end: {min(sum(expected['counts'].values()), 3)}+")  # type: ignore[attr-defined]
    for replica in replicas[1:]:
        assert snapshot(replica) == expected
