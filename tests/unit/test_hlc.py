"""Unit tests for the hybrid logical clock and its timestamp encoding."""

from __future__ import annotations

import itertools

import pytest

from crdt.errors import ClockDriftError, MemmeshError
from crdt.hlc import ZERO, HybridLogicalClock, Timestamp

T = Timestamp
LOGICAL_MAX = 999_999


# --- tick -------------------------------------------------------------------------------


def test_tick_uses_wall_time_when_it_advances() -> None:
    clock = HybridLogicalClock()
    assert clock.tick(1_000) == T(1_000, 0)
    assert clock.tick(1_001) == T(1_001, 0)
    assert clock.tick(5_000) == T(5_000, 0)
    assert clock.last == T(5_000, 0)


def test_tick_bumps_logical_when_wall_time_stalls() -> None:
    clock = HybridLogicalClock()
    assert [clock.tick(7) for _ in range(4)] == [T(7, 0), T(7, 1), T(7, 2), T(7, 3)]


def test_tick_is_strictly_monotonic_when_wall_time_goes_backwards() -> None:
    clock = HybridLogicalClock()
    issued = [clock.tick(w) for w in [10_000, 9_000, 0, 9_999, 10_000, 10_001, 5]]
    assert issued == [
        T(10_000, 0),
        T(10_000, 1),
        T(10_000, 2),
        T(10_000, 3),
        T(10_000, 4),
        T(10_001, 0),
        T(10_001, 1),
    ]
    assert all(a < b for a, b in itertools.pairwise(issued))


def test_tick_carries_into_wall_when_logical_counter_is_full() -> None:
    clock = HybridLogicalClock()
    clock.observe(T(50, LOGICAL_MAX - 1), 50)  # last = (50, LOGICAL_MAX)
    assert clock.last == T(50, LOGICAL_MAX)
    nxt = clock.tick(0)
    assert nxt == T(51, 0)
    assert nxt > T(50, LOGICAL_MAX)


def test_fresh_clock_never_issues_zero() -> None:
    clock = HybridLogicalClock()
    assert clock.last == ZERO
    assert clock.tick(0) > ZERO
    assert clock.tick(-5) > T(0, 1)


# --- observe ----------------------------------------------------------------------------


def test_observe_remote_ahead_takes_remote_wall_and_bumps_its_logical() -> None:
    clock = HybridLogicalClock()
    clock.tick(100)
    remote = T(200, 7)
    got = clock.observe(remote, 150)
    assert got == T(200, 8)
    assert got > remote
    assert clock.last == got


def test_observe_local_wall_ahead_resets_logical() -> None:
    clock = HybridLogicalClock()
    clock.tick(100)
    got = clock.observe(T(120, 42), 300)
    assert got == T(300, 0)


def test_observe_last_ahead_bumps_last() -> None:
    clock = HybridLogicalClock()
    clock.tick(500)
    clock.tick(500)  # (500, 1)
    got = clock.observe(T(400, 99), 450)
    assert got == T(500, 2)


def test_observe_equal_walls_takes_max_logical_plus_one() -> None:
    clock = HybridLogicalClock()
    clock.tick(500)
    clock.tick(500)  # (500, 1)
    assert clock.observe(T(500, 9), 500) == T(500, 10)
    assert clock.observe(T(500, 3), 200) == T(500, 11)


def test_observe_remote_at_full_logical_carries_into_wall() -> None:
    clock = HybridLogicalClock()
    remote = T(80, LOGICAL_MAX)
    got = clock.observe(remote, 80)
    assert got == T(81, 0)
    assert got > remote


@pytest.mark.parametrize(
    ("last_wall", "remote", "wall"),
    [
        (100, T(100, 0), 100),
        (100, T(99, 999), 50),
        (10, T(100, 5), 90),
        (100, T(5, 0), 200),
        (0, T(0, 0), 0),
    ],
)
def test_observe_result_exceeds_both_last_and_remote(
    last_wall: int, remote: Timestamp, wall: int
) -> None:
    clock = HybridLogicalClock()
    before = clock.tick(last_wall)
    got = clock.observe(remote, wall)
    assert got > before
    assert got > remote
    assert got.wall_ms >= wall


def test_observe_rejects_drift_and_leaves_clock_unchanged() -> None:
    clock = HybridLogicalClock(max_drift_ms=1_000, ceiling_window_ms=100)
    clock.tick(5_000)
    clock.tick(5_000)
    assert clock.pending_ceiling() == 5_100
    last, ceiling = clock.last, clock.ceiling

    with pytest.raises(ClockDriftError) as info:
        clock.observe(T(6_001, 0), 5_000)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MemmeshError)

    assert clock.last == last
    assert clock.ceiling == ceiling
    assert clock.pending_ceiling() is None
    assert clock.tick(5_000) == T(5_000, 2)


def test_observe_accepts_drift_exactly_at_bound() -> None:
    clock = HybridLogicalClock(max_drift_ms=1_000)
    assert clock.observe(T(6_000, 3), 5_000) == T(6_000, 4)


def test_drift_is_measured_against_wall_time_not_last() -> None:
    clock = HybridLogicalClock(max_drift_ms=1_000)
    clock.observe(T(6_000, 0), 5_000)
    # The clock's own last is 6_000, but wall time is still 5_000: 7_000 is 2 s ahead.
    with pytest.raises(ClockDriftError):
        clock.observe(T(7_000, 0), 5_000)


@pytest.mark.parametrize(
    "kwargs", [{"max_drift_ms": 0}, {"max_drift_ms": -1}, {"ceiling_window_ms": 0}]
)
def test_constructor_rejects_non_positive_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HybridLogicalClock(**kwargs)


# --- persisted ceiling ------------------------------------------------------------------


def test_pending_ceiling_is_returned_once_and_exceeds_issued_wall() -> None:
    clock = HybridLogicalClock(ceiling_window_ms=1_000)
    assert clock.pending_ceiling() is None
    ts = clock.tick(10_000)
    ceiling = clock.pending_ceiling()
    assert ceiling == 11_000
    assert ceiling > ts.wall_ms
    assert clock.ceiling == ceiling
    assert clock.pending_ceiling() is None


def test_pending_ceiling_moves_only_when_crossed() -> None:
    clock = HybridLogicalClock(ceiling_window_ms=1_000)
    clock.tick(10_000)
    assert clock.pending_ceiling() == 11_000
    clock.tick(10_999)
    clock.observe(T(10_500, 3), 10_999)
    assert clock.pending_ceiling() is None
    clock.tick(11_000)
    assert clock.pending_ceiling() == 12_000


def test_pending_ceiling_reports_latest_after_several_crossings() -> None:
    clock = HybridLogicalClock(ceiling_window_ms=10)
    for wall in (100, 200, 300):
        clock.tick(wall)
    assert clock.pending_ceiling() == 310
    assert clock.pending_ceiling() is None


def test_observe_crossing_ceiling_sets_pending() -> None:
    clock = HybridLogicalClock(ceiling_window_ms=10)
    clock.tick(100)
    assert clock.pending_ceiling() == 110
    got = clock.observe(T(500, 0), 490)
    assert clock.pending_ceiling() == got.wall_ms + 10


def test_restored_clock_issues_above_ceiling_even_when_wall_time_went_back() -> None:
    first = HybridLogicalClock(ceiling_window_ms=1_000)
    issued = [first.tick(w) for w in (10_000, 10_500, 10_999, 10_999)]
    persisted = first.pending_ceiling()
    assert persisted == 11_000

    second = HybridLogicalClock(ceiling_window_ms=1_000, restored_ceiling_ms=persisted)
    assert second.last == T(persisted, 0)
    nxt = second.tick(3_000)  # wall time jumped backwards across the restart
    assert nxt > max(issued)
    assert nxt == T(11_000, 1)
    # Issuing at the restored ceiling moves the ceiling, which must be persisted again.
    assert second.pending_ceiling() == 12_000


def test_restored_clock_observe_also_stays_above() -> None:
    clock = HybridLogicalClock(restored_ceiling_ms=50_000)
    assert clock.observe(T(1_000, 5), 1_000) == T(50_000, 1)


# --- encoding ---------------------------------------------------------------------------


def test_encode_is_fixed_width_and_zero_padded() -> None:
    assert T(0, 0).encode() == "000000000000000.000000"
    assert T(1_700_000_000_123, 42).encode() == "001700000000123.000042"
    assert str(T(5, 6)) == T(5, 6).encode()
    assert len(T(10**15 - 1, LOGICAL_MAX).encode()) == 22


def test_decode_round_trips_examples() -> None:
    for ts in [ZERO, T(1, 0), T(0, 1), T(1_700_000_000_123, 42), T(10**15 - 1, LOGICAL_MAX)]:
        assert Timestamp.decode(ts.encode()) == ts


def test_encoded_order_matches_examples() -> None:
    stamps = [T(9, 999_999), T(10, 0), T(10, 1), T(100, 0), T(1_000_000, 2)]
    assert sorted(s.encode() for s in stamps) == [s.encode() for s in sorted(stamps)]
    assert T(9, 999_999).encode() < T(10, 0).encode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "000000000000001",
        "000000000000001000000",
        "000000000000001.00000",
        "00000000000001.000000",
        "0000000000000001.000000",
        "000000000000001.0000000",
        "000000000000001,000000",
        "00000000000000a.000000",
        "-00000000000001.000000",
        "+00000000000001.000000",
        " 00000000000001.000000",
        "000000000000001.000000 ",
        "000000000000001.00000\n",
        "000000000000001.-00001",
        "000000000000001.000000.0",
        "\u0660" * 15 + "." + "\u0660" * 6,  # Arabic-Indic digits: isdigit() but not ASCII
        "\uff11" * 15 + "." + "\uff10" * 6,  # full-width digits
        "\u00b2" * 15 + "." + "0" * 6,  # superscripts
    ],
)
def test_decode_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        Timestamp.decode(text)


@pytest.mark.parametrize("value", [None, 5, 1.5, b"000000000000001.000000", ["x"]])
def test_decode_rejects_non_strings_with_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        Timestamp.decode(value)  # type: ignore[arg-type]


def test_timestamps_order_by_wall_then_logical() -> None:
    assert T(1, 999) < T(2, 0)
    assert T(2, 0) < T(2, 1)
    assert T(3, 4) == T(3, 4)
    assert max([T(2, 5), T(3, 0), T(2, 9)]) == T(3, 0)
