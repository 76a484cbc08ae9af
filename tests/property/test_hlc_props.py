"""Property tests for the hybrid logical clock: monotonicity, merging, encoding, restarts."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import ClockDriftError
from crdt.hlc import HybridLogicalClock, Timestamp

LOGICAL_MAX = 999_999

timestamps = st.builds(
    Timestamp,
    wall_ms=st.integers(0, 10**15 - 1),
    logical=st.integers(0, LOGICAL_MAX),
)

# Small ranges so that equal walls, stalls, backward jumps and ceiling crossings all happen.
walls = st.integers(0, 200)
remote_logicals = st.one_of(st.integers(0, 5), st.just(LOGICAL_MAX), st.integers(0, LOGICAL_MAX))
ticks = st.tuples(st.just("tick"), walls)
observes = st.tuples(st.just("observe"), walls, walls, remote_logicals)
restarts = st.tuples(st.just("restart"))
ops = st.lists(st.one_of(ticks, ticks, observes, restarts), max_size=60)


@given(timestamps)
def test_encode_decode_round_trip(ts: Timestamp) -> None:
    text = ts.encode()
    assert len(text) == 22
    assert Timestamp.decode(text) == ts


@given(timestamps, timestamps)
def test_lexicographic_order_equals_timestamp_order(a: Timestamp, b: Timestamp) -> None:
    assert (a.encode() < b.encode()) == (a < b)
    assert (a.encode() == b.encode()) == (a == b)


@given(st.lists(timestamps, max_size=30))
def test_sorting_encoded_equals_sorting_timestamps(stamps: list[Timestamp]) -> None:
    assert sorted(s.encode() for s in stamps) == [s.encode() for s in sorted(stamps)]


@given(st.lists(st.integers(-1_000, 10**13), min_size=1, max_size=80))
def test_tick_strictly_monotonic_for_any_wall_sequence(wall_seq: list[int]) -> None:
    clock = HybridLogicalClock()
    issued = [clock.tick(w) for w in wall_seq]
    assert all(a < b for a, b in itertools.pairwise(issued))
    for wall, ts in zip(wall_seq, issued, strict=True):
        assert ts.wall_ms >= wall
        assert ts.logical <= LOGICAL_MAX


@given(
    st.lists(st.integers(0, 10**6), max_size=10),
    timestamps.filter(lambda t: t.wall_ms <= 2 * 10**6),
    st.integers(0, 2 * 10**6),
    st.integers(1, 10**6),
)
def test_observe_merges_or_rejects_without_change(
    warmup: list[int], remote: Timestamp, wall: int, drift: int
) -> None:
    clock = HybridLogicalClock(max_drift_ms=drift)
    for w in warmup:
        clock.tick(w)
    clock.pending_ceiling()
    before, ceiling = clock.last, clock.ceiling
    if remote.wall_ms > wall + drift:
        try:
            clock.observe(remote, wall)
        except ClockDriftError:
            pass
        else:
            raise AssertionError("observe accepted a timestamp beyond max_drift_ms")
        assert clock.last == before
        assert clock.ceiling == ceiling
        assert clock.pending_ceiling() is None
    else:
        got = clock.observe(remote, wall)
        assert got > before
        assert got > remote
        assert got.wall_ms >= wall
        assert got.logical <= LOGICAL_MAX
        assert clock.last == got
        assert clock.tick(0) > got


@dataclass
class Caller:
    """What a node around the clock does: persist pending ceilings before using timestamps."""

    window: int
    persisted: int = 0
    issued: list[Timestamp] = field(default_factory=list)


@given(ops, st.integers(1, 50), st.integers(1, 300))
def test_ceiling_and_restarts_never_go_backwards(
    operations: list[tuple[object, ...]], window: int, drift: int
) -> None:
    caller = Caller(window=window)
    clock = HybridLogicalClock(max_drift_ms=drift, ceiling_window_ms=window)
    since_restart: list[Timestamp] = []
    for op in operations:
        if op[0] == "restart":
            # Wall time is free to go backwards across a restart: the ops draw any wall.
            clock = HybridLogicalClock(
                max_drift_ms=drift, ceiling_window_ms=window, restored_ceiling_ms=caller.persisted
            )
            assert clock.pending_ceiling() is None
            since_restart = []
            continue
        if op[0] == "tick":
            _, wall = op
            assert isinstance(wall, int)
            ts = clock.tick(wall)
        else:
            _, wall, remote_wall, remote_logical = op
            assert isinstance(wall, int) and isinstance(remote_wall, int)
            assert isinstance(remote_logical, int)
            remote = Timestamp(remote_wall, remote_logical)
            before = clock.last
            try:
                ts = clock.observe(remote, wall)
            except ClockDriftError:
                assert remote_wall > wall + drift
                assert clock.last == before
                assert clock.pending_ceiling() is None
                continue
            assert ts > remote
        # Strictly above everything ever issued, across restarts.
        if caller.issued:
            assert ts > max(caller.issued)
        if since_restart:
            assert ts > since_restart[-1]
        caller.issued.append(ts)
        since_restart.append(ts)

        pending = clock.pending_ceiling()
        assert clock.pending_ceiling() is None  # returned once
        if pending is not None:
            assert pending > caller.persisted
            assert pending == clock.ceiling
            caller.persisted = pending
        # Before the timestamp leaves the process, the persisted ceiling covers it.
        assert all(t.wall_ms < caller.persisted for t in caller.issued)
