"""Hybrid logical clock: monotonic timestamps that merge remote time and survive restarts."""

from __future__ import annotations

from dataclasses import dataclass

from crdt.errors import ClockDriftError

_WALL_DIGITS = 15
_LOGICAL_DIGITS = 6
_LOGICAL_MAX = 10**_LOGICAL_DIGITS - 1
_ENCODING = f"%0{_WALL_DIGITS}d.%0{_LOGICAL_DIGITS}d"  # %-format: twice as quick as nested f-specs


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """An HLC timestamp: physical milliseconds plus a logical counter; ordered."""

    wall_ms: int
    logical: int = 0

    def encode(self) -> str:
        """Return a fixed-width string whose lexicographic order equals timestamp order."""
        return _ENCODING % (self.wall_ms, self.logical)

    @classmethod
    def decode(cls, text: object) -> Timestamp:
        """Parse the output of `encode`; raise ValueError on anything else."""
        if not isinstance(text, str):
            raise ValueError(f"not an HLC timestamp: {text!r}")
        wall, sep, logical = text.partition(".")
        if (
            not sep
            or len(wall) != _WALL_DIGITS
            or len(logical) != _LOGICAL_DIGITS
            or not (wall.isascii() and wall.isdigit())
            or not (logical.isascii() and logical.isdigit())
        ):
            raise ValueError(f"not an HLC timestamp: {text!r}")
        return cls(int(wall), int(logical))

    def __str__(self) -> str:
        """Return the encoded form."""
        return self.encode()


ZERO = Timestamp(0, 0)


class HybridLogicalClock:
    """An HLC (Kulkarni et al.) with a persisted ceiling so restarts never go backwards.

    The caller passes physical time in; the clock never reads it. Timestamps are only
    issued below `ceiling`; when the clock must cross it, `ceiling` moves ahead by
    `ceiling_window_ms` and `pending_ceiling()` returns the value the caller must persist
    before any timestamp it issued leaves the process. A restart resumes at the persisted
    ceiling, so the window is also how far a restart may push the clock ahead: the default
    of 1 ms persists the ceiling with nearly every commit (it rides in the same
    transaction) and keeps short-lived processes from running the clock ahead.
    """

    def __init__(
        self,
        *,
        max_drift_ms: int = 60_000,
        ceiling_window_ms: int = 1,
        restored_ceiling_ms: int = 0,
    ) -> None:
        """Start a clock that will issue timestamps strictly above `restored_ceiling_ms`."""
        if max_drift_ms <= 0 or ceiling_window_ms <= 0:
            raise ValueError("max_drift_ms and ceiling_window_ms must be positive")
        self._max_drift_ms = max_drift_ms
        self._window_ms = ceiling_window_ms
        self._last = Timestamp(restored_ceiling_ms, 0)
        self._ceiling = restored_ceiling_ms
        self._pending: int | None = None

    @property
    def last(self) -> Timestamp:
        """Return the latest timestamp issued or observed."""
        return self._last

    @property
    def ceiling(self) -> int:
        """Return the physical bound below which timestamps are issued."""
        return self._ceiling

    def tick(self, wall_ms: int) -> Timestamp:
        """Issue a timestamp for a local event at physical time `wall_ms`."""
        last = self._last
        ts = Timestamp(wall_ms, 0) if wall_ms > last.wall_ms else self._bump(last)
        return self._issue(ts)

    def observe(self, remote: Timestamp, wall_ms: int) -> Timestamp:
        """Merge a remote timestamp; raise ClockDriftError if it is too far in the future."""
        if remote.wall_ms > wall_ms + self._max_drift_ms:
            raise ClockDriftError(
                f"remote timestamp {remote} is {remote.wall_ms - wall_ms} ms ahead of local "
                f"time (bound {self._max_drift_ms} ms)"
            )
        last = self._last
        top_wall = max(wall_ms, last.wall_ms, remote.wall_ms)
        if top_wall == last.wall_ms == remote.wall_ms:
            ts = Timestamp(top_wall, max(last.logical, remote.logical) + 1)
        elif top_wall == last.wall_ms:
            ts = self._bump(last)
        elif top_wall == remote.wall_ms:
            ts = Timestamp(top_wall, remote.logical + 1)
        else:
            ts = Timestamp(top_wall, 0)
        if ts.logical > _LOGICAL_MAX:
            ts = Timestamp(ts.wall_ms + 1, 0)
        return self._issue(ts)

    def pending_ceiling(self) -> int | None:
        """Return a ceiling that must be persisted before issued timestamps are used, once."""
        pending, self._pending = self._pending, None
        return pending

    def _bump(self, last: Timestamp) -> Timestamp:
        if last.logical >= _LOGICAL_MAX:
            return Timestamp(last.wall_ms + 1, 0)
        return Timestamp(last.wall_ms, last.logical + 1)

    def _issue(self, ts: Timestamp) -> Timestamp:
        self._last = ts
        if ts.wall_ms >= self._ceiling:
            self._ceiling = ts.wall_ms + self._window_ms
            self._pending = self._ceiling
        return ts
