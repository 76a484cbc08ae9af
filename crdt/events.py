"""Memory events: a bounded, retention-limited ring of change events with cursor subscriptions.

Every applied change to a memory item produces a `MemoryEvent` addressed as `TIER/ITEM_ID`.
`EventLog` keeps the newest events in a list-backed ring indexed by sequence number, so
looking up a seq is O(1). Subscriptions are cursors into that ring (no per-subscriber
copies); a subscriber that falls so far behind that unread events are evicted gets an
`EventsMissed` error naming the lost range instead of silently losing events.

Globs use `fnmatch` syntax matched case-sensitively against the whole address: `*` matches
any run of characters *including* `/` (so `*` alone matches everything and `*/abc` matches
item `abc` in every tier), `?` matches exactly one character, `[seq]` / `[!seq]` match one
character from / not from a set. A pattern without wildcards is an exact address match.
"""

from __future__ import annotations

import fnmatch
import json
import re
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import StrEnum
from itertools import pairwise
from json.encoder import encode_basestring_ascii as _json_ascii  # what json.dumps uses
from typing import Final

from crdt.errors import MemmeshError

ORIGINS: Final = frozenset({"local", "remote"})
_GLOB_CACHE_MAX: Final = 256
_WILDCARDS: Final = frozenset("*?[")

Matcher = Callable[[str], object]


class EventKind(StrEnum):
    """What happened to a memory item."""

    PUT = "put"
    DELETE = "delete"
    MOVE = "move"
    CONFLICT = "conflict"
    RESOLVED = "resolved"
    COLLECTED = "collected"


@dataclass(frozen=True, slots=True)
class MemoryEvent:
    """One applied change to `tier/item_id`; `detail` is a small JSON-able dict (read-only)."""

    seq: int
    hlc: str
    wall_ms: int
    tier: str
    item_id: str
    kind: EventKind
    origin: str
    author: str
    detail: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        """Validate fields (raise ValueError) and coerce `kind` to `EventKind`."""
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        if not self.tier or "/" in self.tier:
            raise ValueError(f"invalid tier {self.tier!r}")
        if "/" in self.item_id:
            raise ValueError(f"item id must not contain '/': {self.item_id!r}")
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be 'local' or 'remote', got {self.origin!r}")
        if type(self.kind) is not EventKind:
            object.__setattr__(self, "kind", EventKind(self.kind))

    @property
    def address(self) -> str:
        """Return `TIER/ITEM_ID`."""
        return f"{self.tier}/{self.item_id}"

    def to_json(self) -> dict[str, object]:
        """Return a JSON-able dict that `from_json` turns back into an equal event."""
        return {
            "seq": self.seq,
            "hlc": self.hlc,
            "wall_ms": self.wall_ms,
            "tier": self.tier,
            "item_id": self.item_id,
            "kind": self.kind.value,
            "origin": self.origin,
            "author": self.author,
            "detail": dict(self.detail),
        }

    def to_json_text(self) -> str:
        """Return `json.dumps(self.to_json(), separators=(",", ":"))` (quicker for no detail)."""
        return MemoryEvent.json_rows((self,))[0][1]

    @staticmethod
    def json_rows(events: Iterable[MemoryEvent]) -> list[tuple[int, str]]:
        """Return `(seq, to_json_text())` per event; quicker for a batch sharing its fields.

        An event with no detail and the usual field types is formatted directly, as
        `json.dumps` with compact separators would; any other goes through `json.dumps`.
        """
        quoted: dict[tuple[object, ...], tuple[str, ...]] = {}  # one batch repeats these
        rows: list[tuple[int, str]] = []
        for ev in events:
            seq, wall_ms, hlc, item_id = ev.seq, ev.wall_ms, ev.hlc, ev.item_id
            shared = (ev.tier, ev.kind, ev.origin, ev.author)
            fixed = quoted.get(shared)
            if fixed is None:
                strings = (ev.tier, ev.kind.value, ev.origin, ev.author)
                if all(type(value) is str for value in strings):
                    fixed = quoted[shared] = tuple(map(_json_ascii, strings))
            if (
                fixed is None
                or ev.detail
                or type(seq) is not int
                or type(wall_ms) is not int
                or type(hlc) is not str
                or type(item_id) is not str
            ):
                rows.append((seq, json.dumps(ev.to_json(), separators=(",", ":"))))
                continue
            tier, kind, origin, author = fixed
            rows.append(
                (
                    seq,
                    f'{{"seq":{seq},"hlc":{_json_ascii(hlc)},"wall_ms":{wall_ms},'
                    f'"tier":{tier},"item_id":{_json_ascii(item_id)},"kind":{kind},'
                    f'"origin":{origin},"author":{author},"detail":{{}}}}',
                )
            )
        return rows

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> MemoryEvent:
        """Parse the output of `to_json`; raise ValueError on missing or mistyped fields."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an event is a JSON object, not {type(d).__name__}")
        detail = d.get("detail", {})
        if not isinstance(detail, Mapping):
            raise ValueError("event field 'detail' must be an object")
        return cls(
            seq=_json_int(d, "seq"),
            hlc=_json_str(d, "hlc"),
            wall_ms=_json_int(d, "wall_ms"),
            tier=_json_str(d, "tier"),
            item_id=_json_str(d, "item_id"),
            kind=EventKind(_json_str(d, "kind")),
            origin=_json_str(d, "origin"),
            author=_json_str(d, "author"),
            detail={str(k): v for k, v in detail.items()},
        )


_EVENT_FIELDS = (
    "seq", "hlc", "wall_ms", "tier", "item_id", "kind", "origin", "author", "detail",
)  # fmt: skip
if tuple(f.name for f in fields(MemoryEvent)) != _EVENT_FIELDS:  # pragma: no cover
    raise RuntimeError("MemoryEvent fields changed: update EventLog.append_many")
_EVENT_SETTERS = tuple(getattr(MemoryEvent, name).__set__ for name in _EVENT_FIELDS)


def _json_int(d: Mapping[str, object], key: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"event field {key!r} must be an integer")
    return value


def _json_str(d: Mapping[str, object], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise ValueError(f"event field {key!r} must be a string")
    return value


class EventsMissed(MemmeshError):
    """Seqs `missed_from_seq..missed_to_seq` (inclusive) were evicted before being read."""

    def __init__(self, missed_from_seq: int, missed_to_seq: int, resume_seq: int) -> None:
        """Record the lost range and the first seq still available."""
        super().__init__(missed_from_seq, missed_to_seq, resume_seq)
        self.missed_from_seq = missed_from_seq
        self.missed_to_seq = missed_to_seq
        self.resume_seq = resume_seq

    def __str__(self) -> str:
        """Describe the lost range."""
        return (
            f"events {self.missed_from_seq}..{self.missed_to_seq} were evicted before being "
            f"read; resuming at seq {self.resume_seq}"
        )


class EventLog:
    """Bounded ring of the newest events (by capacity and by wall-clock retention)."""

    __slots__ = (
        "_addr",
        "_buf",
        "_cap",
        "_count",
        "_first",
        "_globs",
        "_head",
        "_last",
        "_max_wall",
        "_next",
        "_retention",
        "_subs",
        "_wall_cap",
    )

    def __init__(
        self,
        capacity: int = 10_000,
        retention_ms: int | None = 7 * 24 * 3600 * 1000,
        next_seq: int = 1,
    ) -> None:
        """Create an empty log holding at most `capacity` consecutive seqs."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if retention_ms is not None and retention_ms < 0:
            raise ValueError("retention_ms must be >= 0 or None")
        if next_seq < 1:
            raise ValueError("next_seq must be >= 1")
        self._cap = capacity
        self._retention = retention_ms
        # Ring invariant: seqs [_first, _next) live at slots _head, _head+1, ... (mod _cap);
        # the slot of _first is never a hole unless the ring is empty (_first == _next).
        self._buf: list[MemoryEvent | None] = [None] * capacity
        self._addr: list[str] = [""] * capacity
        self._head = 0
        self._first = next_seq
        self._next = next_seq
        self._last = next_seq - 1
        self._count = 0
        self._max_wall: int | None = None
        # While set, the retention clock (the newest wall time seen) advances at most to
        # this: the owner caps it (`wall_capped`) at now + the allowed drift while it applies
        # a peer's records, so one record stamped days ahead does not expire every other event.
        self._wall_cap: int | None = None
        self._globs: dict[str, Matcher | None] = {}
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()

    # -- ring internals -------------------------------------------------------------------

    def _slot(self, seq: int) -> int:
        i = self._head + (seq - self._first)
        return i - self._cap if i >= self._cap else i

    def _drop_head(self) -> None:
        """Evict the oldest seq, then skip any holes so the head is an event again."""
        buf, cap, h = self._buf, self._cap, self._head
        if buf[h] is not None:
            buf[h] = None
            self._addr[h] = ""
            self._count -= 1
        h = h + 1 if h + 1 < cap else 0
        self._first += 1
        while self._first < self._next and buf[h] is None:
            h = h + 1 if h + 1 < cap else 0
            self._first += 1
        self._head = h

    def _expire(self, threshold: int, keep: int) -> int:
        dropped = 0
        while self._count > keep:
            head = self._buf[self._head]
            if head is None or head.wall_ms >= threshold:
                break
            self._drop_head()
            dropped += 1
        return dropped

    def _matcher(self, pattern: str) -> Matcher | None:
        """Return a callable testing an address against `pattern` (None: matches all)."""
        try:
            return self._globs[pattern]
        except KeyError:
            pass
        matcher: Matcher | None
        if pattern == "*":
            matcher = None
        elif _WILDCARDS.isdisjoint(pattern):
            matcher = pattern.__eq__
        else:
            matcher = re.compile(fnmatch.translate(pattern)).match
        if len(self._globs) >= _GLOB_CACHE_MAX:
            self._globs.clear()
        self._globs[pattern] = matcher
        return matcher

    def _scan(self, start: int) -> Iterator[tuple[MemoryEvent, str]]:
        """Yield (event, address) for held seqs >= start, in seq order."""
        seq = max(start, self._first)
        if seq >= self._next:
            return
        buf, addr, cap = self._buf, self._addr, self._cap
        i = self._slot(seq)
        for _ in range(self._next - seq):
            ev = buf[i]
            if ev is not None:
                yield ev, addr[i]
            i = i + 1 if i + 1 < cap else 0

    # -- writing --------------------------------------------------------------------------

    def append(
        self,
        *,
        hlc: str,
        wall_ms: int,
        tier: str,
        item_id: str,
        kind: EventKind,
        origin: str,
        author: str,
        detail: Mapping[str, object] | None = None,
    ) -> MemoryEvent:
        """Store a new event with the next seq, evict by capacity and retention, return it.

        Retention evicts from the oldest end while the oldest event's wall_ms is below the
        highest wall_ms seen minus `retention_ms`; the event just appended is always kept.
        """
        ev = MemoryEvent(
            seq=self._next,
            hlc=hlc,
            wall_ms=wall_ms,
            tier=tier,
            item_id=item_id,
            kind=kind,
            origin=origin,
            author=author,
            detail=dict(detail) if detail else {},
        )
        if self._next - self._first >= self._cap:
            self._drop_head()
        i = self._slot(self._next)
        self._buf[i] = ev
        self._addr[i] = f"{tier}/{item_id}"
        self._next += 1
        self._last = ev.seq
        self._count += 1
        newest = self._see_wall(wall_ms)
        if self._retention is not None:
            self._expire(newest - self._retention, keep=1)
        return ev

    def append_many(
        self,
        *,
        kind: EventKind,
        origin: str,
        entries: Iterable[tuple[str, int, str, str, str]],
    ) -> list[MemoryEvent]:
        """Append one event per `(hlc, wall_ms, tier, item_id, author)` with an empty detail.

        Gives the same events and the same log as calling `append` for each in order.
        """
        out: list[MemoryEvent] = []
        buf, addr, cap, retention = self._buf, self._addr, self._cap, self._retention
        checked = False
        (
            set_seq, set_hlc, set_wall_ms, set_tier, set_item_id, set_kind, set_origin,
            set_author, set_detail,
        ) = _EVENT_SETTERS  # fmt: skip
        new = object.__new__
        for hlc, wall_ms, tier, item_id, author in entries:
            if not checked:  # raise as the first append would
                if type(kind) is not EventKind:
                    kind = EventKind(kind)
                if origin not in ORIGINS:
                    raise ValueError(f"origin must be 'local' or 'remote', got {origin!r}")
                checked = True
            seq = self._next
            if seq < 1 or not tier or "/" in tier or "/" in item_id:
                MemoryEvent(seq, hlc, wall_ms, tier, item_id, kind, origin, author, {})  # raises
            # What MemoryEvent(...) builds once __post_init__'s checks pass, quicker.
            ev = new(MemoryEvent)
            set_seq(ev, seq)
            set_hlc(ev, hlc)
            set_wall_ms(ev, wall_ms)
            set_tier(ev, tier)
            set_item_id(ev, item_id)
            set_kind(ev, kind)
            set_origin(ev, origin)
            set_author(ev, author)
            set_detail(ev, {})
            if seq - self._first >= cap:
                self._drop_head()
            i = self._head + (seq - self._first)
            if i >= cap:
                i -= cap
            buf[i] = ev
            addr[i] = f"{tier}/{item_id}"
            self._next = seq + 1
            self._last = seq
            self._count += 1
            newest = self._see_wall(wall_ms)
            if retention is not None:
                head = buf[self._head]
                if head is not None and head.wall_ms < newest - retention:
                    self._expire(newest - retention, keep=1)
            out.append(ev)
        return out

    def evict_expired(self, now_ms: int) -> int:
        """Evict, from the oldest end, events with wall_ms < now_ms - retention; return count."""
        if self._retention is None:
            return 0
        return self._expire(now_ms - self._retention, keep=0)

    def restore(self, events: Iterable[MemoryEvent]) -> None:
        """Load persisted events into an empty, unsubscribed log; appends continue after them.

        Events are sorted by seq (duplicate seqs raise ValueError). Only the newest seqs that
        fit in `capacity` are kept, retention is applied, and `next_seq` becomes
        max(current next_seq, highest seq + 1). Seqs absent from `events` stay holes that
        queries and subscriptions skip.
        """
        if self._count or self._first != self._next:
            raise RuntimeError("restore() requires a log that holds no events")
        if len(self._subs):
            raise RuntimeError("restore() must happen before anyone subscribes")
        evs = sorted(events, key=lambda e: e.seq)
        if not evs:
            return
        for a, b in pairwise(evs):
            if a.seq == b.seq:
                raise ValueError(f"duplicate seq {a.seq} in restored events")
        new_next = max(self._next, evs[-1].seq + 1)
        kept = [e for e in evs if e.seq >= new_next - self._cap]
        self._buf = [None] * self._cap
        self._addr = [""] * self._cap
        self._head = 0
        self._next = new_next
        self._first = kept[0].seq if kept else new_next
        self._count = len(kept)
        self._last = kept[-1].seq if kept else new_next - 1
        for e in kept:
            i = e.seq - self._first
            self._buf[i] = e
            self._addr[i] = e.address
        newest = self._see_wall(max(e.wall_ms for e in evs))
        if self._retention is not None:
            self._expire(newest - self._retention, keep=1)

    def _see_wall(self, wall_ms: int) -> int:
        """Advance the retention clock to `wall_ms` (held at the cap, if set); return it."""
        if self._wall_cap is not None:
            wall_ms = min(wall_ms, self._wall_cap)
        if self._max_wall is None or wall_ms > self._max_wall:
            self._max_wall = wall_ms
        return self._max_wall

    @contextmanager
    def wall_capped(self, cap_ms: int) -> Iterator[None]:
        """Within the block, hold the retention clock at most at `cap_ms`."""
        self._wall_cap = cap_ms
        try:
            yield
        finally:
            self._wall_cap = None

    # -- reading --------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Return the maximum number of consecutive seqs held."""
        return self._cap

    @property
    def retention_ms(self) -> int | None:
        """Return the retention window in ms (None: no time-based eviction)."""
        return self._retention

    @property
    def first_seq(self) -> int:
        """Return the oldest seq still held (equals `next_seq` when the log is empty)."""
        return self._first

    @property
    def last_seq(self) -> int:
        """Return the newest seq held (`next_seq - 1` when the log is empty)."""
        return self._last if self._count else self._next - 1

    @property
    def next_seq(self) -> int:
        """Return the seq the next `append` will assign (persist it to survive restarts)."""
        return self._next

    def __len__(self) -> int:
        """Return the number of events held."""
        return self._count

    def get(self, seq: int) -> MemoryEvent | None:
        """Return the event with this seq if it is still held, else None."""
        if self._first <= seq < self._next:
            return self._buf[self._slot(seq)]
        return None

    def query(
        self,
        *,
        pattern: str | None = None,
        tiers: Collection[str] | None = None,
        kinds: Collection[EventKind] | None = None,
        since_seq: int | None = None,
        since_hlc: str | None = None,
        until_hlc: str | None = None,
        limit: int | None = None,
        before_seq: int | None = None,
    ) -> list[MemoryEvent]:
        """Return held events matching every given filter, in seq order, at most `limit`.

        `pattern` is a glob on the address (see module doc), `since_seq` is exclusive,
        `since_hlc` inclusive and `until_hlc` exclusive (plain string comparison),
        `before_seq` exclusive.
        """
        if limit is not None and limit <= 0:
            return []
        match = None if pattern is None else self._matcher(pattern)
        tier_set = None if tiers is None else frozenset(tiers)
        kind_set = None if kinds is None else frozenset(kinds)
        out: list[MemoryEvent] = []
        for ev, addr in self._scan(self._first if since_seq is None else since_seq + 1):
            if before_seq is not None and ev.seq >= before_seq:
                break
            if (
                (tier_set is not None and ev.tier not in tier_set)
                or (kind_set is not None and ev.kind not in kind_set)
                or (since_hlc is not None and ev.hlc < since_hlc)
                or (until_hlc is not None and ev.hlc >= until_hlc)
                or (match is not None and not match(addr))
            ):
                continue
            out.append(ev)
            if limit is not None and len(out) >= limit:
                break
        return out

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, pattern: str, *, from_seq: int | None = None) -> Subscription:
        """Return a cursor over events matching `pattern`, from `from_seq` (default: new only).

        Keep a reference and `close()` it when done: open subscriptions count towards
        `max_lag`; an unreferenced one is dropped when garbage-collected.
        """
        if from_seq is not None and from_seq < 1:
            raise ValueError("from_seq must be >= 1")
        sub = Subscription(self, pattern, self._next if from_seq is None else from_seq)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Close `sub`, which must belong to this log."""
        if sub.log is not self:
            raise ValueError("subscription belongs to another EventLog")
        sub.close()

    @property
    def subscription_count(self) -> int:
        """Return the number of open subscriptions."""
        return len(self._subs)

    def max_lag(self) -> int:
        """Return the largest `lag` over open subscriptions (0 if none)."""
        return max((s.lag for s in self._subs), default=0)


class Subscription:
    """A cursor into an `EventLog` delivering events whose address matches a glob."""

    __slots__ = ("__weakref__", "_closed", "_cursor", "_log", "_match", "_pattern")

    def __init__(self, log: EventLog, pattern: str, cursor: int) -> None:
        """Create a cursor at `cursor`; use `EventLog.subscribe` instead of calling this."""
        self._log = log
        self._pattern = pattern
        self._match = log._matcher(pattern)
        self._cursor = cursor
        self._closed = False

    @property
    def log(self) -> EventLog:
        """Return the log this cursor reads."""
        return self._log

    @property
    def pattern(self) -> str:
        """Return the address glob."""
        return self._pattern

    @property
    def cursor(self) -> int:
        """Return the next seq this subscription will examine."""
        return self._cursor

    @property
    def closed(self) -> bool:
        """Return whether `close()` was called."""
        return self._closed

    def _check_missed(self) -> None:
        first = self._log._first
        if self._cursor < first:
            missed = EventsMissed(self._cursor, first - 1, first)
            self._cursor = first
            raise missed

    def poll(self, max_items: int = 1000, *, before_seq: int | None = None) -> list[MemoryEvent]:
        """Return up to `max_items` matching events after the cursor and advance past them.

        With `before_seq`, only events of lower seqs (the ones known durable, say): the
        cursor stops there. Raises EventsMissed (and moves the cursor to `resume_seq`) if
        seqs after the cursor were evicted before being read; the next call continues
        from there.
        """
        if self._closed:
            raise RuntimeError("subscription is closed")
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._check_missed()
        log = self._log
        seq, end = self._cursor, log._next
        if before_seq is not None:
            end = min(end, before_seq)
        out: list[MemoryEvent] = []
        if seq < end:
            buf, addr, cap, match = log._buf, log._addr, log._cap, self._match
            i = log._slot(seq)
            while seq < end:
                ev = buf[i]
                if ev is not None and (match is None or match(addr[i])):
                    out.append(ev)
                    if len(out) >= max_items:
                        seq += 1
                        break
                seq += 1
                i = i + 1 if i + 1 < cap else 0
            self._cursor = seq
        return out

    def pending(self) -> bool:
        """Return whether `poll` would return events or raise EventsMissed.

        Non-matching events before the first match are skipped (the cursor moves past them).
        """
        if self._closed:
            return False
        log = self._log
        if self._cursor < log._first:
            return True
        for ev, addr in log._scan(self._cursor):
            if self._match is None or self._match(addr):
                self._cursor = ev.seq
                return True
        self._cursor = max(self._cursor, log._next)
        return False

    @property
    def lag(self) -> int:
        """Return how many seqs held in the ring lie at or after the cursor, matching or not."""
        if self._closed:
            return 0
        log = self._log
        return max(0, log._next - max(self._cursor, log._first))

    def close(self) -> None:
        """Stop the subscription; it no longer counts towards `max_lag`."""
        self._closed = True
        self._log._subs.discard(self)
