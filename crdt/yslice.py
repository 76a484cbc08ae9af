"""Split one Yjs v1 update into bounded updates that apply one after another.

A sync diff of a large tier is one update of tens of megabytes. `plan_slices` walks its
structs (without decoding their values) and groups them into slices of about `max_bytes`
each. Every slice is itself a valid v1 update: a contiguous run of structs per client, in
an order where every struct's origins (left, right, parent) are either known to the
receiver (its state vector) or carried by an earlier slice or the same one. Applied in
order, each slice integrates at once and can be persisted on its own, so an interrupted
transfer keeps what arrived and a new state-vector exchange continues from there. The
delete set goes with the last slice, after every struct it may refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crdt.ywire import WireFormatError, read_var_uint, write_var_uint

_EMPTY_DELETE_SET = b"\x00"
# Content refs (the low 5 bits of a struct's info byte).
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs that carry a name
_ANY_STRING = 119
_NEW_ROOT_ENTRY = 0x20 | _ANY  # info byte: an `any` value with a parent key, no origins
MAX_ANY_DEPTH = 32  # nesting of lib0 `any` arrays/objects accepted in a value
_Deps = tuple[tuple[int, int], ...]  # (client, clock) of origins in other clients


@dataclass(frozen=True, slots=True)
class _Struct:
    """Where one struct's bytes are, its clock span and its cross-client origins."""

    start: int
    end: int
    clock: int
    length: int
    deps: _Deps


@dataclass(frozen=True, slots=True)
class _Group:
    client: int
    structs: tuple[_Struct, ...]


@dataclass(frozen=True, slots=True)
class SlicePlan:
    """The slices of one update; `slice(i)` builds the i-th update on demand."""

    update: bytes
    parts: tuple[tuple[tuple[int, int, int], ...], ...]  # per slice: (group, first, stop)
    groups: tuple[_Group, ...]
    delete_set: bytes

    def __len__(self) -> int:
        """Return the number of slices (at least one)."""
        return len(self.parts)

    def slice(self, index: int) -> bytes:
        """Return slice `index` as a v1 update (the last one carries the delete set)."""
        runs = self.parts[index]
        out = bytearray(write_var_uint(len(runs)))
        for group_index, first, stop in runs:
            group = self.groups[group_index]
            head, last = group.structs[first], group.structs[stop - 1]
            out += write_var_uint(stop - first) + write_var_uint(group.client)
            out += write_var_uint(head.clock)
            out += self.update[head.start : last.end]
        out += self.delete_set if index == len(self.parts) - 1 else _EMPTY_DELETE_SET
        return bytes(out)

    def slice_bytes(self, index: int) -> int:
        """Return the struct bytes of slice `index` (its size, give or take a few headers)."""
        return sum(
            self.groups[g].structs[stop - 1].end - self.groups[g].structs[first].start
            for g, first, stop in self.parts[index]
        )


def plan_slices(update: bytes, max_bytes: int, known: dict[int, int] | None = None) -> SlicePlan:
    """Plan slices of about `max_bytes` of `update` for a receiver at state vector `known`.

    A single struct larger than `max_bytes` gets a slice of its own. Raises WireFormatError
    when `update` is not a well-formed v1 update.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    groups, pos = _read_groups(update)
    frontier = dict(known or {})
    cursors = [0] * len(groups)
    parts: list[tuple[tuple[int, int, int], ...]] = []
    current: dict[int, list[int]] = {}  # group -> [first, stop]
    size = 0
    remaining = sum(len(g.structs) for g in groups)
    while remaining:
        moved = False
        for gi, group in enumerate(groups):
            structs = group.structs
            cursor = cursors[gi]
            while cursor < len(structs):
                struct = structs[cursor]
                if any(clock >= frontier.get(client, 0) for client, clock in struct.deps):
                    break
                run = current.get(gi)
                if run is None:
                    current[gi] = [cursor, cursor + 1]
                else:
                    run[1] = cursor + 1
                size += struct.end - struct.start
                frontier[group.client] = struct.clock + struct.length
                cursor += 1
                remaining -= 1
                moved = True
                if size >= max_bytes:
                    parts.append(tuple((g, r[0], r[1]) for g, r in current.items()))
                    current, size = {}, 0
            cursors[gi] = cursor
        if not moved:
            # Origins neither side has (a malformed or partial diff): send the rest as one
            # update and let the receiver's Yjs hold what it cannot integrate yet.
            for gi, group in enumerate(groups):
                if cursors[gi] < len(group.structs):
                    run = current.setdefault(gi, [cursors[gi], cursors[gi]])
                    run[1] = len(group.structs)
            remaining = 0
    if current or not parts:
        parts.append(tuple((g, r[0], r[1]) for g, r in current.items()))
    return SlicePlan(update, tuple(parts), tuple(groups), update[pos:])


class UpdateShape(NamedTuple):
    """What `check_update` learnt of an update while walking it."""

    deletes: bool  # its delete set names a client (it deletes something)
    # client -> the clock a receiver must have reached to integrate all of its structs:
    # their first clock, or where they resume after the last Skip (a merged update's gap)
    starts: dict[int, int]
    # client -> the end (clock + length) of its last deleted range; None when the delete
    # set did not parse (yrs judges it)
    deleted_upto: dict[int, int] | None
    delete_set_at: int = 0  # where the delete set starts in the update


def check_update(update: bytes) -> UpdateShape:
    """Raise WireFormatError unless `update`'s structs parse, values nested at most 32 deep.

    Run on every remote update before yrs sees it: yrs decodes nested values recursively,
    so a small hostile update could otherwise crash the process. Returns whether the
    update deletes something and, per client, the clock a receiver must have reached.
    """
    count, pos = read_var_uint(update, 0)
    size = len(update)
    starts: dict[int, int] = {}
    for _ in range(count):
        n_structs, pos = read_var_uint(update, pos)
        client, pos = read_var_uint(update, pos)
        clock, pos = read_var_uint(update, pos)
        need, after_skip = clock, False
        for _ in range(n_structs):
            if after_skip:  # structs resume past a gap: the receiver needs the gap filled
                need, after_skip = clock, False
            # What `_read_struct` does for a root-map entry set to one string with no
            # origins (how a new key arrives), without its call and origin bookkeeping.
            # Short names (one length byte) are stepped over here; anything unusual or
            # truncated is left to `_read_struct`, from the struct's start.
            if pos + 1 < size and update[pos] == _NEW_ROOT_ENTRY and update[pos + 1] == 1:
                at = pos + 2
                length = update[at] if at < size else 0x80
                if length < 0x80:  # the parent's name
                    at += 1 + length
                    length = update[at] if at < size else 0x80
                    if length < 0x80:  # the key
                        at += 1 + length
                        if at + 1 < size and update[at] == 1 and update[at + 1] == _ANY_STRING:
                            pos = _skip_string(update, at + 2)
                            clock += 1
                            continue
            after_skip = pos < size and update[pos] & 0x1F == _SKIP
            length, _deps, pos = _read_struct(update, pos, client)
            clock += length
        if n_structs and need > starts.get(client, -1):
            starts[client] = need
    # The delete set is read for where each client's deletions end; yrs judges the rest.
    delete_set_at = pos
    upto: dict[int, int] = {}
    try:
        clients, pos = read_var_uint(update, pos)
        for _ in range(clients):  # each step reads bytes: bounded by the update's size
            client, pos = read_var_uint(update, pos)
            ranges, pos = read_var_uint(update, pos)
            for _ in range(ranges):
                clock, pos = read_var_uint(update, pos)
                length, pos = read_var_uint(update, pos)
                if clock + length > upto.get(client, -1):
                    upto[client] = clock + length
    except WireFormatError:
        return UpdateShape(True, starts, None, delete_set_at)
    return UpdateShape(clients > 0, starts, upto, delete_set_at)


def delete_set_update(update: bytes, shape: UpdateShape) -> bytes:
    """Return `update`'s delete set alone, as an update (no struct groups): small."""
    return b"\x00" + update[shape.delete_set_at :]  # a count of 0 struct groups first


def _read_groups(data: bytes) -> tuple[list[_Group], int]:
    count, pos = read_var_uint(data, 0)
    groups = []
    for _ in range(count):
        n_structs, pos = read_var_uint(data, pos)
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        structs = []
        for _ in range(n_structs):
            start = pos
            length, deps, pos = _read_struct(data, pos, client)
            structs.append(_Struct(start, pos, clock, length, deps))
            clock += length
        if structs:
            groups.append(_Group(client, tuple(structs)))
    return groups, pos


def _read_struct(data: bytes, pos: int, client: int) -> tuple[int, _Deps, int]:
    """Return (clock length, cross-client origins, next position) of the struct at `pos`."""
    if pos >= len(data):
        raise WireFormatError("truncated struct")
    info = data[pos]
    pos += 1
    ref = info & 0x1F
    if ref in (_GC, _SKIP):
        length, pos = read_var_uint(data, pos)
        return length, (), pos
    deps: _Deps = ()
    if info & 0x80:
        origin_client, pos = read_var_uint(data, pos)
        origin_clock, pos = read_var_uint(data, pos)
        if origin_client != client:
            deps = ((origin_client, origin_clock),)
    if info & 0x40:
        right_client, pos = read_var_uint(data, pos)
        right_clock, pos = read_var_uint(data, pos)
        if right_client != client:
            deps = (*deps, (right_client, right_clock))
    if not info & 0xC0:
        named, pos = read_var_uint(data, pos)
        if named == 1:
            pos = _skip_string(data, pos)
        else:
            parent_client, pos = read_var_uint(data, pos)
            parent_clock, pos = read_var_uint(data, pos)
            if parent_client != client:
                deps = (*deps, (parent_client, parent_clock))
        if info & 0x20:
            pos = _skip_string(data, pos)
    if ref == _ANY and pos + 1 < len(data) and data[pos] == 1 and data[pos + 1] == _ANY_STRING:
        # One string value: how a map entry set from Python is stored (the common case).
        return 1, deps, _skip_string(data, pos + 2)
    length, pos = _read_content(data, pos, ref)
    return length, deps, pos


def _read_content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """Return (clock length, next position) of an item's content."""
    if ref == _DELETED:
        return read_var_uint(data, pos)
    if ref == _JSON:
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = _skip_string(data, pos)
        return count, pos
    if ref == _BINARY:
        return 1, _skip_string(data, pos)
    if ref == _STRING:
        size, start = read_var_uint(data, pos)
        end = _checked_end(data, start, size)
        try:
            text = data[start:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireFormatError(f"bad string content: {exc}") from None
        return len(text.encode("utf-16-le")) // 2, end
    if ref == _EMBED:
        return 1, _skip_string(data, pos)
    if ref == _FORMAT:
        return 1, _skip_string(data, _skip_string(data, pos))
    if ref == _TYPE:
        type_ref, pos = read_var_uint(data, pos)
        if type_ref in (_XML_ELEMENT, _XML_HOOK):
            pos = _skip_string(data, pos)
        return 1, pos
    if ref == _ANY:
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, pos, 0)
        return count, pos
    if ref == _DOC:
        return 1, _skip_any(data, _skip_string(data, pos), 0)
    raise WireFormatError(f"unknown content ref {ref}")


def _skip_any(data: bytes, pos: int, depth: int) -> int:
    """Return the position after one lib0 `any` value nested `depth` deep.

    Raises WireFormatError past MAX_ANY_DEPTH: yrs decodes such values recursively, and a
    few hundred bytes nested ten thousand deep overflow its stack (a segfault).
    """
    if depth > MAX_ANY_DEPTH:
        raise WireFormatError(f"value nested deeper than {MAX_ANY_DEPTH}")
    if pos >= len(data):
        raise WireFormatError("truncated value")
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # signed varint
        while True:
            if pos >= len(data):
                raise WireFormatError("truncated varint")
            pos += 1
            if data[pos - 1] < 0x80:
                return pos
    if tag == 124:
        return _checked_end(data, pos, 4)
    if tag in (123, 122):
        return _checked_end(data, pos, 8)
    if tag in (_ANY_STRING, 116):  # string, bytes
        return _skip_string(data, pos)
    if tag == 118:  # object
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, _skip_string(data, pos), depth + 1)
        return pos
    if tag == 117:  # array
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = _skip_any(data, pos, depth + 1)
        return pos
    raise WireFormatError(f"unknown value tag {tag}")


def _skip_string(data: bytes, pos: int) -> int:
    size = data[pos] if pos < len(data) else 0x80
    if size < 0x80:
        end = pos + 1 + size
    else:
        size, pos = read_var_uint(data, pos)
        end = pos + size
    if end > len(data):
        raise WireFormatError("truncated update")
    return end


def _checked_end(data: bytes, pos: int, size: int) -> int:
    end = pos + size
    if end > len(data):
        raise WireFormatError("truncated update")
    return end
