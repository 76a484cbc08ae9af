"""Memory-core defects found in review: tombstone collection, events, i8 encoding."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import numpy as np

from crdt.config import MemoryConfig
from crdt.events import EventKind
from crdt.memory import Change, NewItem, TieredMemory

TIERS = ("L1", "L2", "L3")


def replica(n: int, config: MemoryConfig | None = None) -> TieredMemory:
    client_ids = {t: 10 * n + i + 1 for i, t in enumerate(TIERS)}
    return TieredMemory(node_id=f"n{n}", client_ids=client_ids, config=config)


def send(change: Change, *to: TieredMemory, now_ms: int = 1_000) -> list[EventKind]:
    return [
        e.kind for t, u in change.updates for r in to for e in r.apply_remote(t, u, now_ms).events
    ]


def short_retention(ms: int) -> MemoryConfig:
    base = MemoryConfig.default()
    tiers = {t: dataclasses.replace(p, tombstone_retention_ms=ms) for t, p in base.tiers.items()}
    return dataclasses.replace(base, tiers=MappingProxyType(tiers))


def test_a_record_this_node_cannot_read_is_not_collected_as_a_tombstone() -> None:
    """Regression: an undecodable record (a newer peer's codec) counted as 'all tombstones'
    and was collected at once, ignoring retention; the deletion replicated."""
    newer, me = replica(1), replica(2)
    send(newer.put(NewItem("L1", "fresh", "x", embedding=[1.0, 2.0]), 1_000_000), me)
    record = json.loads(newer.tier_doc("L1").versions("x")["n1"])
    record["codec"] = "bf16"  # unknown here
    unreadable = newer.tier_doc("L1").write([("x", "n1", json.dumps(record, sort_keys=True))])
    assert unreadable is not None
    me.apply_remote("L1", unreadable, 1_000_000)
    assert me.collect_tombstones(1_000_001).updates == ()


def test_a_collection_that_ends_a_conflict_logs_resolved_on_the_collector_too() -> None:
    config = short_retention(10)
    a, b = replica(1, config), replica(2, config)
    send(a.put(NewItem("L1", "c", "x"), 1_000), b)
    moved, deleted = a.move("x", "L2", 1_001), b.delete("x", 1_001)  # concurrent
    send(moved, b)
    send(deleted, a)
    assert a.conflicted_ids() == b.conflicted_ids() == ["x"]
    collected = a.collect_tombstones(5_000)
    kinds = [e.kind for e in collected.events]
    assert EventKind.RESOLVED in kinds and EventKind.COLLECTED in kinds
    assert a.conflicted_ids() == []


def test_a_remote_delete_event_names_the_newest_version() -> None:
    """Regression: it took the last version in tier order, not the newest."""
    a, b = replica(1), replica(2)
    send(a.put(NewItem("L3", "c", "x"), 1_000), b)
    send(a.move("x", "L1", 1_001), b)
    deletion = b.delete("x", 1_002)
    events = [e for t, u in deletion.updates for e in a.apply_remote(t, u, 1_002).events]
    (delete,) = [e for e in events if e.kind is EventKind.DELETE]
    assert delete.author == "n2"


def test_an_i8_vector_whose_scale_underflows_is_stored_the_same_by_both_put_paths() -> None:
    """Regression: with a subnormal peak the float32 scale underflowed to 0; the general
    path re-encoded what readers see (zeros) and stored other bytes than the fast path."""
    request = NewItem("L3", "c", "x", embedding=np.array([1e-45, 0.0], dtype=np.float32))
    fast, general = replica(1), replica(1)
    fast.put(request, 1_000)
    general._put_new = lambda *args: None  # type: ignore[method-assign,assignment]
    general.put(request, 1_000)
    assert fast.tier_doc("L3").versions("x") == general.tier_doc("L3").versions("x")
    assert fast.digest("L3").root() == general.digest("L3").root()
