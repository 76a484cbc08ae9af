"""Unit tests for crdt.events: ring eviction, retention, queries, globs and subscriptions."""

from __future__ import annotations

import pickle

import pytest

from crdt.events import EventKind, EventLog, EventsMissed, MemoryEvent


def _add(
    log: EventLog,
    item: str = "a",
    *,
    tier: str = "L1",
    wall: int = 0,
    kind: EventKind = EventKind.PUT,
    hlc: str | None = None,
) -> MemoryEvent:
    return log.append(
        hlc=hlc if hlc is not None else f"{wall:015d}.{log.next_seq:06d}",
        wall_ms=wall,
        tier=tier,
        item_id=item,
        kind=kind,
        origin="local",
        author="node-a",
    )


def _seqs(events: list[MemoryEvent]) -> list[int]:
    return [e.seq for e in events]


# -- MemoryEvent ------------------------------------------------------------------------------


def test_event_address_and_json_round_trip() -> None:
    ev = MemoryEvent(
        seq=3,
        hlc="000000000000010.000001",
        wall_ms=10,
        tier="L2",
        item_id="task-1",
        kind=EventKind.MOVE,
        origin="remote",
        author="node-b",
        detail={"from": "L1", "n": 2},
    )
    assert ev.address == "L2/task-1"
    data = ev.to_json()
    assert data["kind"] == "move"
    assert MemoryEvent.from_json(data) == ev
    assert hash(ev) == hash(MemoryEvent.from_json(data))


def test_event_validation() -> None:
    base = dict(seq=1, hlc="h", wall_ms=0, tier="L1", item_id="x", origin="local", author="n")
    with pytest.raises(ValueError):
        MemoryEvent(**{**base, "item_id": "a/b"}, kind=EventKind.PUT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryEvent(**{**base, "origin": "elsewhere"}, kind=EventKind.PUT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryEvent(**{**base, "seq": 0}, kind=EventKind.PUT)  # type: ignore[arg-type]
    coerced = MemoryEvent(**base, kind="delete")  # type: ignore[arg-type]
    assert coerced.kind is EventKind.DELETE


def test_from_json_rejects_bad_input() -> None:
    good = _add(EventLog()).to_json()
    for key, bad in [("seq", "1"), ("seq", True), ("hlc", 5), ("kind", "nope"), ("detail", [])]:
        with pytest.raises(ValueError):
            MemoryEvent.from_json({**good, key: bad})
    with pytest.raises(ValueError):
        MemoryEvent.from_json({k: v for k, v in good.items() if k != "author"})


def test_append_copies_detail() -> None:
    log = EventLog()
    detail: dict[str, object] = {"k": 1}
    ev = log.append(
        hlc="h",
        wall_ms=0,
        tier="L1",
        item_id="a",
        kind=EventKind.PUT,
        origin="local",
        author="n",
        detail=detail,
    )
    detail["k"] = 2
    assert ev.detail == {"k": 1}


# -- ring ------------------------------------------------------------------------------------


def test_seqs_start_at_one_and_increase() -> None:
    log = EventLog(capacity=10)
    assert (log.first_seq, log.last_seq, len(log)) == (1, 0, 0)
    assert _seqs([_add(log) for _ in range(3)]) == [1, 2, 3]
    assert (log.first_seq, log.last_seq, log.next_seq, len(log)) == (1, 3, 4, 3)
    assert log.get(2) is not None and log.get(2).seq == 2  # type: ignore[union-attr]
    assert log.get(4) is None


def test_capacity_evicts_oldest() -> None:
    log = EventLog(capacity=3, retention_ms=None)
    for i in range(7):
        _add(log, f"i{i}")
    assert len(log) == 3
    assert (log.first_seq, log.last_seq) == (5, 7)
    assert _seqs(log.query()) == [5, 6, 7]
    assert [e.item_id for e in log.query()] == ["i4", "i5", "i6"]
    assert log.get(4) is None


def test_retention_evicts_old_events() -> None:
    log = EventLog(capacity=100, retention_ms=1000)
    _add(log, wall=0)
    _add(log, wall=500)
    _add(log, wall=1000)
    assert len(log) == 3  # 0 is not < 1000 - 1000
    _add(log, wall=1501)
    assert _seqs(log.query()) == [3, 4]
    assert log.first_seq == 3


def test_retention_evicts_only_from_the_oldest_end() -> None:
    log = EventLog(capacity=100, retention_ms=10)
    _add(log, wall=5)
    _add(log, wall=1000)
    _add(log, wall=6)  # expired on arrival, but the newest event is always kept
    assert _seqs(log.query()) == [2, 3]
    _add(log, wall=1001)  # seq 3 sits behind seq 2, which has not expired
    assert _seqs(log.query()) == [2, 3, 4]
    _add(log, wall=1020)  # 2 expires, then 3 reaches the head and goes too
    assert _seqs(log.query()) == [5]


def test_evict_expired() -> None:
    log = EventLog(capacity=100, retention_ms=100)
    for w in (0, 50, 100):
        _add(log, wall=w)
    assert log.evict_expired(now_ms=160) == 2
    assert _seqs(log.query()) == [3]
    assert log.evict_expired(now_ms=10_000) == 1
    assert len(log) == 0
    assert (log.first_seq, log.last_seq, log.next_seq) == (4, 3, 4)
    assert _add(log).seq == 4
    assert EventLog(retention_ms=None).evict_expired(10**12) == 0


def test_ring_wraps_many_times() -> None:
    log = EventLog(capacity=4, retention_ms=None)
    for i in range(1, 50):
        _add(log, f"i{i}")
        held = log.query()
        assert _seqs(held) == list(range(max(1, i - 3), i + 1))
        assert all(e.item_id == f"i{e.seq}" for e in held)


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        EventLog(capacity=0)
    with pytest.raises(ValueError):
        EventLog(retention_ms=-1)
    with pytest.raises(ValueError):
        EventLog(next_seq=0)


# -- restore ---------------------------------------------------------------------------------


def test_restore_continues_seqs() -> None:
    old = EventLog()
    events = [_add(old, f"i{i}") for i in range(5)]
    log = EventLog()
    log.restore(reversed(events))
    assert _seqs(log.query()) == [1, 2, 3, 4, 5]
    assert _add(log).seq == 6
    assert log.last_seq == 6


def test_restore_truncates_to_capacity_and_honours_next_seq() -> None:
    old = EventLog(capacity=100)
    events = [_add(old, f"i{i}") for i in range(10)]
    log = EventLog(capacity=4, next_seq=12)
    log.restore(events)
    # window is [8, 12): seqs 8..10 kept, 11 is a hole
    assert _seqs(log.query()) == [8, 9, 10]
    assert (log.first_seq, log.last_seq, log.next_seq) == (8, 10, 12)
    assert _add(log).seq == 12
    assert _seqs(log.query()) == [9, 10, 12]


def test_restore_with_gaps_skips_holes() -> None:
    old = EventLog()
    events = [_add(old, f"i{i}") for i in range(6)]
    log = EventLog()
    log.restore([events[0], events[2], events[5]])
    assert _seqs(log.query()) == [1, 3, 6]
    sub = log.subscribe("*", from_seq=1)
    assert _seqs(sub.poll()) == [1, 3, 6]


def test_restore_preconditions() -> None:
    log = EventLog()
    _add(log)
    with pytest.raises(RuntimeError):
        log.restore([])
    fresh = EventLog()
    sub = fresh.subscribe("*")
    with pytest.raises(RuntimeError):
        fresh.restore([])
    sub.close()
    fresh.restore([])
    ev = _add(EventLog())
    with pytest.raises(ValueError):
        EventLog().restore([ev, ev])


# -- query -----------------------------------------------------------------------------------


@pytest.fixture
def mixed() -> EventLog:
    log = EventLog(retention_ms=None)
    _add(log, "task-1", tier="L1", wall=10, kind=EventKind.PUT)
    _add(log, "abc", tier="L1", wall=20, kind=EventKind.DELETE)
    _add(log, "abc", tier="L2", wall=30, kind=EventKind.MOVE)
    _add(log, "task-22", tier="L3", wall=40, kind=EventKind.CONFLICT)
    _add(log, "x", tier="L0", wall=50, kind=EventKind.RESOLVED)
    _add(log, "task-3", tier="L2", wall=60, kind=EventKind.COLLECTED)
    return log


def test_query_by_pattern(mixed: EventLog) -> None:
    assert _seqs(mixed.query(pattern="L1/*")) == [1, 2]
    assert _seqs(mixed.query(pattern="*/abc")) == [2, 3]
    assert _seqs(mixed.query(pattern="L?/task-*")) == [1, 4, 6]
    assert _seqs(mixed.query(pattern="L2/abc")) == [3]
    assert _seqs(mixed.query(pattern="*")) == [1, 2, 3, 4, 5, 6]
    assert _seqs(mixed.query(pattern="L[12]/*")) == [1, 2, 3, 6]
    assert mixed.query(pattern="l1/*") == []  # case-sensitive


def test_glob_star_crosses_slash(mixed: EventLog) -> None:
    # `*` matches any characters including '/', so "L*abc" spans the separator.
    assert _seqs(mixed.query(pattern="L*abc")) == [2, 3]
    assert _seqs(mixed.query(pattern="*1*")) == [1, 2]


def test_query_by_tiers_and_kinds(mixed: EventLog) -> None:
    assert _seqs(mixed.query(tiers={"L2", "L3"})) == [3, 4, 6]
    assert _seqs(mixed.query(kinds=[EventKind.DELETE, EventKind.COLLECTED])) == [2, 6]
    assert _seqs(mixed.query(tiers=["L2"], kinds=[EventKind.MOVE])) == [3]
    assert mixed.query(tiers=[]) == []


def test_query_by_seq_and_hlc(mixed: EventLog) -> None:
    assert _seqs(mixed.query(since_seq=4)) == [5, 6]
    assert _seqs(mixed.query(since_seq=-5)) == [1, 2, 3, 4, 5, 6]
    hlc3 = mixed.query()[2].hlc
    hlc5 = mixed.query()[4].hlc
    assert _seqs(mixed.query(since_hlc=hlc3)) == [3, 4, 5, 6]
    assert _seqs(mixed.query(until_hlc=hlc3)) == [1, 2]
    assert _seqs(mixed.query(since_hlc=hlc3, until_hlc=hlc5)) == [3, 4]


def test_query_limit(mixed: EventLog) -> None:
    assert _seqs(mixed.query(limit=2)) == [1, 2]
    assert _seqs(mixed.query(pattern="L2/*", limit=1)) == [3]
    assert mixed.query(limit=0) == []


# -- subscriptions ---------------------------------------------------------------------------


def test_subscription_gets_only_new_matching_events() -> None:
    log = EventLog()
    _add(log, "before")
    sub = log.subscribe("L1/*")
    assert sub.poll() == []
    _add(log, "a")
    _add(log, "b", tier="L2")
    _add(log, "c")
    assert [e.item_id for e in sub.poll()] == ["a", "c"]
    assert sub.poll() == []


def test_subscription_from_seq_and_max_items() -> None:
    log = EventLog()
    for i in range(5):
        _add(log, f"i{i}")
    sub = log.subscribe("*", from_seq=2)
    assert _seqs(sub.poll(max_items=2)) == [2, 3]
    assert sub.cursor == 4
    assert _seqs(sub.poll(max_items=2)) == [4, 5]
    assert sub.poll() == []
    with pytest.raises(ValueError):
        sub.poll(max_items=0)


def test_overflow_raises_events_missed_and_resumes() -> None:
    log = EventLog(capacity=3, retention_ms=None)
    sub = log.subscribe("L1/*")
    _add(log, "a")  # 1
    assert _seqs(sub.poll()) == [1]
    for i in range(5):  # 2..6, evicting 2 and 3
        _add(log, f"x{i}", tier="L2" if i == 3 else "L1")
    assert sub.lag == 3
    assert sub.pending()
    with pytest.raises(EventsMissed) as info:
        sub.poll()
    err = info.value
    assert (err.missed_from_seq, err.missed_to_seq, err.resume_seq) == (2, 3, 4)
    assert "2..3" in str(err)
    assert sub.cursor == 4
    assert _seqs(sub.poll()) == [4, 6]  # 5 is in L2
    assert sub.poll() == []


def test_events_missed_pickles() -> None:
    err = pickle.loads(pickle.dumps(EventsMissed(1, 2, 3)))
    assert (err.missed_from_seq, err.missed_to_seq, err.resume_seq) == (1, 2, 3)


def test_missed_via_retention() -> None:
    log = EventLog(capacity=100, retention_ms=100)
    sub = log.subscribe("*")
    _add(log, wall=0)
    _add(log, wall=10)
    _add(log, wall=500)
    with pytest.raises(EventsMissed) as info:
        sub.poll()
    assert (info.value.missed_from_seq, info.value.missed_to_seq) == (1, 2)
    assert _seqs(sub.poll()) == [3]


def test_from_seq_before_ring_reports_missed() -> None:
    log = EventLog(next_seq=50)
    sub = log.subscribe("*", from_seq=10)
    with pytest.raises(EventsMissed) as info:
        sub.poll()
    assert (info.value.missed_from_seq, info.value.missed_to_seq, info.value.resume_seq) == (
        10,
        49,
        50,
    )
    assert sub.poll() == []


def test_lag_pending_and_max_lag() -> None:
    log = EventLog(capacity=10)
    fast = log.subscribe("*")
    slow = log.subscribe("L2/*")
    assert log.max_lag() == 0
    assert not slow.pending()
    for _ in range(4):
        _add(log)
    assert fast.lag == slow.lag == 4
    assert log.max_lag() == 4
    fast.poll()
    assert fast.lag == 0
    assert not slow.pending()  # skips the non-matching events
    assert slow.lag == 0
    _add(log, tier="L2")
    _add(log)
    assert slow.pending()
    assert slow.lag == 2  # cursor parked on the match
    assert _seqs(slow.poll()) == [5]
    assert log.max_lag() == 2  # fast has not read 5 and 6


def test_close_and_unsubscribe() -> None:
    log = EventLog()
    a = log.subscribe("*")
    b = log.subscribe("*")
    assert log.subscription_count == 2
    _add(log)
    a.close()
    assert a.closed and a.lag == 0 and not a.pending()
    with pytest.raises(RuntimeError):
        a.poll()
    log.unsubscribe(b)
    assert log.subscription_count == 0
    assert log.max_lag() == 0
    with pytest.raises(ValueError):
        EventLog().unsubscribe(log.subscribe("*"))


def test_dropped_subscription_stops_counting() -> None:
    log = EventLog()
    log.subscribe("*")
    _add(log)
    assert log.subscription_count == 0
    assert log.max_lag() == 0


def test_exact_pattern_subscription() -> None:
    log = EventLog()
    sub = log.subscribe("L1/abc")
    _add(log, "abc")
    _add(log, "abcd")
    _add(log, "abc", tier="L2")
    assert _seqs(sub.poll()) == [1]
    assert sub.pattern == "L1/abc" and sub.log is log


def test_a_peer_record_stamped_days_ahead_does_not_expire_the_other_events() -> None:
    """Found in review: a remote event's wall time drove the retention clock, so one record
    from a peer whose clock ran 8 days ahead expired every event before it."""
    from crdt.memory import NewItem, TieredMemory

    tiers = ("L1", "L2", "L3")
    me = TieredMemory(node_id="n1", client_ids={t: 11 + i for i, t in enumerate(tiers)})
    skewed = TieredMemory(node_id="n2", client_ids={t: 21 + i for i, t in enumerate(tiers)})
    day, now = 86_400_000, 1_700_000_000_000
    for i in range(5):
        me.put(NewItem("L1", "c", f"mine{i}"), now + i)
    far = skewed.put(NewItem("L1", "c", "far"), now + 8 * day)
    me.apply_remote("L1", far.updates[0][1], now + 10)
    me.put(NewItem("L1", "c", "later"), now + 20)
    ids = [e.item_id for e in me.events.query()]
    assert ids == ["mine0", "mine1", "mine2", "mine3", "mine4", "far", "later"]


def test_a_restored_log_counts_retention_from_now_not_from_a_future_stamp() -> None:
    """Found in review: restore() set the retention clock from the newest stored stamp, so
    a peer's record stamped 10 days ahead expired the others again after a restart."""
    from crdt.memory import NewItem, TieredMemory

    day, now = 86_400_000, 1_800_000_000_000
    tiers = ("L1", "L2", "L3")
    peer = TieredMemory(node_id="peer", client_ids={t: 10 + i for i, t in enumerate(tiers)})
    me = TieredMemory(node_id="me", client_ids={t: 20 + i for i, t in enumerate(tiers)})
    for i in range(5):
        me.put(NewItem("L1", f"old{i}", f"x{i}"), now - 1_000 + i)
    future = peer.put(NewItem("L1", "future", "f"), now + 10 * day)
    me.apply_remote("L1", future.updates[0][1], now)
    persisted = me.events.query()
    assert len(persisted) == 6
    restored = EventLog(capacity=1_000, retention_ms=me.config.event_retention_ms)
    with restored.wall_capped(now + me.config.max_clock_drift_ms):  # as Mesh.open does
        restored.restore(persisted)
    assert len(restored.query()) == 6
