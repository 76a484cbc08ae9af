"""Property tests for crdt.events: subscribers never lose events silently; the ring is exact."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.events import EventKind, EventLog, EventsMissed, MemoryEvent

TIERS = ["L0", "L1", "L2", "L3"]
ITEMS = ["a", "b", "task-1", "task-22"]
PATTERNS = ["*", "L1/*", "*/a", "L?/task-*", "L2/b", "L[13]/*", "nothing"]


@dataclass(frozen=True)
class Append:
    tier: str
    item: str
    wall_step: int


@dataclass(frozen=True)
class Poll:
    max_items: int


@dataclass(frozen=True)
class Pending:
    pass


@dataclass(frozen=True)
class Expire:
    ahead_ms: int


ops_strategy = st.lists(
    st.one_of(
        st.builds(
            Append,
            st.sampled_from(TIERS),
            st.sampled_from(ITEMS),
            st.integers(min_value=-20, max_value=60),
        ),
        st.builds(Poll, st.integers(min_value=1, max_value=5)),
        st.just(Pending()),
        st.builds(Expire, st.integers(min_value=0, max_value=200)),
    ),
    max_size=120,
)


def _matches(pattern: str, address: str) -> bool:
    return re.fullmatch(fnmatch.translate(pattern), address) is not None


def _append(log: EventLog, op: Append, wall: int) -> MemoryEvent:
    return log.append(
        hlc=f"{wall:015d}.{log.next_seq:06d}",
        wall_ms=wall,
        tier=op.tier,
        item_id=op.item,
        kind=EventKind.PUT,
        origin="local",
        author="n",
    )


@settings(max_examples=300, deadline=None)
@given(
    ops=ops_strategy,
    capacity=st.integers(min_value=1, max_value=8),
    retention=st.one_of(st.none(), st.integers(min_value=0, max_value=150)),
    pattern=st.sampled_from(PATTERNS),
    pre=st.integers(min_value=0, max_value=5),
)
def test_subscriber_sees_every_matching_seq_exactly_once(
    ops: list[object], capacity: int, retention: int | None, pattern: str, pre: int
) -> None:
    log = EventLog(capacity=capacity, retention_ms=retention)
    wall = 1_000
    for _ in range(pre):
        _append(log, Append("L1", "a", 0), wall)
    sub = log.subscribe(pattern)
    start = log.next_seq
    appended: list[MemoryEvent] = []
    timeline: list[tuple[int, int]] = []  # (from, to) inclusive; a delivery is (seq, seq)
    delivered: list[MemoryEvent] = []

    def poll(max_items: int) -> None:
        try:
            got = sub.poll(max_items)
        except EventsMissed as err:
            assert err.missed_from_seq <= err.missed_to_seq < err.resume_seq
            assert err.resume_seq == log.first_seq
            timeline.append((err.missed_from_seq, err.missed_to_seq))
            return
        assert len(got) <= max_items
        delivered.extend(got)
        timeline.extend((e.seq, e.seq) for e in got)

    for op in ops:
        if isinstance(op, Append):
            wall = max(0, wall + op.wall_step)
            appended.append(_append(log, op, wall))
        elif isinstance(op, Poll):
            poll(op.max_items)
        elif isinstance(op, Pending):
            lag_before = sub.lag
            if sub.pending():
                poll(1)
            assert sub.lag <= lag_before
        elif isinstance(op, Expire):
            log.evict_expired(wall + op.ahead_ms)
        assert 0 <= sub.lag <= len(log) or sub.cursor < log.first_seq
        assert log.max_lag() == sub.lag

    # drain
    for _ in range(len(appended) + 2):
        poll(1000)
    assert sub.lag == 0 and not sub.pending()

    # every delivered event matches and comes from this log, in order
    assert all(_matches(pattern, e.address) for e in delivered)
    assert all(appended[e.seq - start] is e for e in delivered)
    # the timeline is strictly increasing and non-overlapping
    for (_, prev_to), (nxt_from, _) in pairwise(timeline):
        assert nxt_from > prev_to
    # every matching seq is accounted for exactly once (delivered xor missed)
    matching = [e.seq for e in appended if _matches(pattern, e.address)]
    for seq in matching:
        covering = [span for span in timeline if span[0] <= seq <= span[1]]
        assert len(covering) == 1, (seq, timeline)
    delivered_seqs = {e.seq for e in delivered}
    assert delivered_seqs <= set(matching)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(TIERS), st.integers(min_value=-20, max_value=60)),
        max_size=80,
    ),
    capacity=st.integers(min_value=1, max_value=8),
    retention=st.one_of(st.none(), st.integers(min_value=0, max_value=150)),
)
def test_ring_matches_simple_model(
    steps: list[tuple[str, int]], capacity: int, retention: int | None
) -> None:
    log = EventLog(capacity=capacity, retention_ms=retention)
    model: list[MemoryEvent] = []
    wall, top = 1_000, 0  # top: highest wall_ms of an appended event
    for tier, step in steps:
        wall = max(0, wall + step)
        top = max(top, wall)
        ev = _append(log, Append(tier, "x", 0), wall)
        model.append(ev)
        if len(model) > capacity:
            model.pop(0)
        while retention is not None and len(model) > 1 and model[0].wall_ms < top - retention:
            model.pop(0)
        assert log.query() == model
        assert len(log) == len(model)
        assert log.first_seq == model[0].seq and log.last_seq == model[-1].seq
        for e in model:
            assert log.get(e.seq) is e
        assert log.query(tiers=[tier]) == [e for e in model if e.tier == tier]

    # a restored log holds the same events and continues the numbering
    restored = EventLog(capacity=capacity, retention_ms=retention)
    restored.restore(model)
    assert restored.query() == model
    assert restored.next_seq == (model[-1].seq + 1 if model else 1)
