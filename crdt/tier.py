"""One replicated tier as a Yjs document holding a multi-value register per item.

The document has one root map, ``items``, keyed ``ITEM_ID/WRITER_NODE_ID`` with the
version's record (a JSON string) as value. The register of an item is the set of keys
with its prefix. A write deletes every version it has seen and sets its own key, in one
transaction; a concurrent write by another node uses another key, so both survive and
the conflict is visible. The map is flat on purpose: creating a nested map per item
concurrently on two nodes would let one creation overwrite the other and lose a write.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from pycrdt import Doc, Map, merge_updates

from crdt.item import ITEM_ID_PATTERN
from crdt.yslice import UpdateShape, check_update, delete_set_update
from crdt.ywire import WireFormatError, decode_state_vector

KEY_SEP = "/"
ROOT_NAME = "items"
MAX_HELD_UPDATES = 10_000
MAX_HELD_BYTES = 64 << 20


class CorruptUpdateError(ValueError):
    """A Yjs update could not be decoded; the document is unchanged."""


class _Held(NamedTuple):
    """A remote update held back until every client's structs in it follow on ours."""

    update: bytes
    shape: UpdateShape  # what check_update read of it (`starts`: the clocks it waits for)


def _note_wait(waits: dict[int, int], client: int, start: int) -> None:
    """Keep in `waits` the lowest start a held update waits for, per client."""
    if start < waits.get(client, start + 1):
        waits[client] = start


def _deletes_past(deleted_upto: Mapping[int, int] | None, vector: Mapping[int, int]) -> bool:
    """True if deletions reach at or past the decoded state `vector` (or are unknown: None)."""
    if deleted_upto is None:
        return True
    return any(end > vector.get(client, 0) for client, end in deleted_upto.items())


def version_key(item_id: str, writer: str) -> str:
    """Return the map key of `writer`'s version of `item_id`."""
    return f"{item_id}{KEY_SEP}{writer}"


def version_hash(writer: str, record: str) -> bytes:
    """Return `TierDoc.content_hash` of an item whose one version is `writer`'s `record`."""
    return hashlib.sha256(f"{writer}\0{record}\n".encode()).digest()


def version_hashes(writers: Iterable[str], records: Iterable[str]) -> list[bytes]:
    """Return `version_hash` of each (writer, record) pair, in order."""
    sha256 = hashlib.sha256
    return [
        sha256(f"{writer}\0{record}\n".encode()).digest()
        for writer, record in zip(writers, records, strict=True)
    ]


def split_key(key: str) -> tuple[str, str] | None:
    """Return (item_id, writer) for a well-formed key, else None."""
    item_id, sep, writer = key.partition(KEY_SEP)
    if not sep or not writer or ITEM_ID_PATTERN.fullmatch(item_id) is None:
        return None
    return item_id, writer


class TierDoc:
    """A tier document plus an index of item id -> {writer: record}, kept in step."""

    def __init__(self, tier: str, *, client_id: int) -> None:
        """Create an empty document that writes under Yjs `client_id`."""
        self.tier = tier
        self._doc: Doc[Any] = Doc(client_id=client_id)
        self._map: Map[Any] = self._doc.get(ROOT_NAME, type=Map)
        self._versions: dict[str, dict[str, str]] = {}
        self._changed_keys: dict[str, Any] = {}  # key -> its new value (None: deleted)
        self._captured: list[bytes] = []
        self._held: list[_Held] = []  # in arrival order
        self._held_bytes = 0
        # Client -> the lowest start, among held updates, past that client's clock when last
        # looked: no held update can be ready until some client's clock reaches its entry.
        self._held_waits: dict[int, int] = {}
        self.integrated: list[bytes] = []  # what the last apply_update added to the document
        # Held updates the last apply_update let go: integrated, or already contained in
        # what it added (a sync answer brings a held update's structs too). Either way
        # they are in the document, and durable once `integrated` is.
        self.released: list[bytes] = []
        # Integrated updates whose deletions reached past our state vector: yrs keeps those
        # deletions pending and leaves them out of `encode_diff`, so `snapshot` adds them.
        self._pending_deletes: list[tuple[dict[int, int] | None, bytes]] = []
        self.held_now = False  # the last apply_update held its update back
        self.dropped: list[bytes] = []  # held updates the last apply_update's hold dropped
        self.gaps_dropped = 0

    @property
    def client_id(self) -> int:
        """Return the Yjs client id this replica writes under."""
        return int(self._doc.client_id)

    def _on_map_event(self, event: Any) -> None:
        # The event carries each key's new value: reading them back from the map would cost
        # a transaction per key. It is yrs' raw event (see `_integrate`): string values are
        # what pycrdt's wrapped event holds, and any other value counts as no record.
        changed = self._changed_keys
        for key, change in event.keys.items():
            changed[key] = change.get("newValue")

    def _on_transaction(self, event: Any) -> None:
        self._captured.append(bytes(event.update))

    def item_ids(self) -> Iterator[str]:
        """Iterate over ids that have at least one version in this tier."""
        return iter(self._versions)

    def __len__(self) -> int:
        """Return the number of items with at least one version."""
        return len(self._versions)

    def __contains__(self, item_id: object) -> bool:
        """Return True if `item_id` has a version here."""
        return item_id in self._versions

    def versions(self, item_id: str) -> Mapping[str, str]:
        """Return {writer: record} for `item_id` (empty if absent)."""
        return self._versions.get(item_id, {})

    def sole_versions(
        self, item_ids: Iterable[str], skip: Container[str]
    ) -> tuple[list[int], list[str], list[str]]:
        """Return where, by whom and what the ids with exactly one version here wrote.

        That is (positions in `item_ids`, writers, records), ids in `skip` left out.
        """
        positions: list[int] = []
        writers: list[str] = []
        records: list[str] = []
        versions_of = self._versions
        for position, item_id in enumerate(item_ids):
            if item_id not in skip:
                found = versions_of.get(item_id)
                if found is not None and len(found) == 1:
                    ((writer, record),) = found.items()
                    positions.append(position)
                    writers.append(writer)
                    records.append(record)
        return positions, writers, records

    def content_hash(self, item_id: str) -> bytes | None:
        """Return a digest of every version of `item_id`, or None when it has none."""
        versions = self._versions.get(item_id)
        if not versions:
            return None
        if len(versions) == 1:  # the same bytes hashed in one go
            ((writer, record),) = versions.items()
            return version_hash(writer, record)
        h = hashlib.sha256()
        for writer in sorted(versions):
            h.update(writer.encode())
            h.update(b"\0")
            h.update(versions[writer].encode())
            h.update(b"\n")
        return h.digest()

    def write(self, writes: Iterable[tuple[str, str, str | None]]) -> bytes | None:
        """Apply local writes `(item_id, writer, record or None)` in one transaction.

        Each write deletes every version of the item seen here, then sets `writer`'s
        version to `record` (None deletes only). Returns the Yjs update, or None if empty.
        """
        self._captured.clear()
        versions = self._versions
        # Transactions are observed only here, where their update is wanted, and the map
        # only while a remote update is integrated (`_integrate`): each observer costs time
        # per transaction or per key changed.
        subscription = self._doc.observe(self._on_transaction)
        try:
            with self._doc.transaction() as txn:
                insert = self._inserter(txn)
                for item_id, writer, record in writes:
                    current = versions.get(item_id)
                    if current:
                        for seen_writer in list(current):
                            if seen_writer != writer or record is None:
                                del self._map[version_key(item_id, seen_writer)]
                    if record is not None:
                        insert(f"{item_id}{KEY_SEP}{writer}", record)
                        versions[item_id] = {writer: record}
                    else:
                        versions.pop(item_id, None)
        finally:
            self._doc.unobserve(subscription)
        return self._take_update()

    def _inserter(self, txn: Any) -> Callable[[str, str], None]:
        """Return a function setting a string value in the root map within `txn`.

        It calls what `Map.__setitem__` ends in for a string value (the same Yjs operation),
        without its per-call transaction bookkeeping; other pycrdt versions use the map.
        """
        raw_txn = getattr(txn, "_txn", None)
        integrated = getattr(self._map, "_integrated", None)
        insert = getattr(integrated, "insert", None)
        if raw_txn is None or insert is None:
            return self._map.__setitem__
        return functools.partial(insert, raw_txn)

    def remove_all(self, item_ids: Iterable[str]) -> bytes | None:
        """Delete every version of each item (tombstone collection); return the update."""
        return self.write((item_id, "", None) for item_id in item_ids)

    def apply_update(self, update: bytes) -> set[str]:
        """Merge a remote Yjs update; return the ids whose versions changed.

        An update whose structs of some client start past what this replica has seen of
        that client is held back until every such gap closes: yrs can leave such an update
        pending and never integrate it even after the missing one arrives (measured with
        pycrdt 0.14), and it applies the rest at once: a merged update of two writers, one
        with a gap, made an item vanish here (its overwrite applied, the new value
        pending). In-order application is yrs' well-trodden path. Raises
        CorruptUpdateError on bytes that are not a Yjs update; the document is then
        unchanged.
        """
        self.integrated = []
        self.released = []
        self.held_now = False
        self.dropped = []
        try:
            shape = check_update(update)  # before yrs: values nested thousands deep crash it
        except WireFormatError as exc:
            raise CorruptUpdateError(f"tier {self.tier}: bad Yjs update: {exc}") from None
        before: bytes | None = None
        if shape.starts:
            before = self.state_vector()
            vector = decode_state_vector(before)
            gaps = {c: s for c, s in shape.starts.items() if s > vector.get(c, 0)}
            if gaps:
                try:  # parse it now (in a scratch document) so garbage is refused, not held
                    Doc().apply_update(update)
                except ValueError as exc:
                    raise CorruptUpdateError(f"tier {self.tier}: bad Yjs update: {exc}") from None
                self._hold(_Held(update, shape), gaps)
                self.held_now = True
                return set()
        changed = self._integrate(update, shape, before)
        if self._held:
            changed |= self._release_held()
        return changed

    @property
    def held_updates(self) -> int:
        """Return how many received updates wait for a missing predecessor."""
        return len(self._held)

    @property
    def needs_sync(self) -> bool:
        """Return True if updates are missing: a state-vector sync with a peer repairs it."""
        return bool(self._held) or self.gaps_dropped > 0

    def answer_applied(self) -> None:
        """A sync answer (the diff against our state vector) was applied: forget dropped gaps.

        With nothing held, what a dropped update carried came with the answer if that peer
        had it; if not, anti-entropy finds the difference. Before, `needs_sync` stayed true
        for good after one drop, and every frame from a peer drew a STEP1 every 2 s.
        """
        if not self._held:
            self.gaps_dropped = 0

    def _hold(self, held: _Held, gaps: Mapping[int, int]) -> None:
        """Keep an early update; past the bounds drop the oldest (a later sync refetches)."""
        self._held.append(held)
        self._held_bytes += len(held.update)
        for client, start in gaps.items():
            _note_wait(self._held_waits, client, start)
        while len(self._held) > MAX_HELD_UPDATES or (
            len(self._held) > 1 and self._held_bytes > MAX_HELD_BYTES
        ):
            gone = self._held.pop(0)
            self._held_bytes -= len(gone.update)
            self.dropped.append(gone.update)
            self.gaps_dropped += 1  # its entry in _held_waits may stay: that costs one scan

    def _release_held(self) -> set[str]:
        """Integrate the held updates whose gaps have all closed, in order, until none is left.

        Cheap when nothing can be ready: only a client clock reaching one of
        `_held_waits` makes it walk the held updates.
        """
        state = self.state_vector()
        vector = decode_state_vector(state)
        if all(vector.get(c, 0) < start for c, start in self._held_waits.items()):
            return set()
        changed: set[str] = set()
        progress = True
        while progress and self._held:
            progress = False
            still_held = []
            for held in self._held:
                if all(s <= vector.get(c, 0) for c, s in held.shape.starts.items()):
                    changed |= self._integrate(held.update, held.shape, state)
                    self._held_bytes -= len(held.update)
                    self.released.append(held.update)
                    state = self.state_vector()
                    vector = decode_state_vector(state)
                    progress = True
                else:
                    still_held.append(held)
            self._held = still_held
        waits: dict[int, int] = {}
        for held in self._held:
            for client, start in held.shape.starts.items():
                if start > vector.get(client, 0):
                    _note_wait(waits, client, start)
        self._held_waits = waits
        return changed

    def _integrate(
        self, update: bytes, shape: UpdateShape, before: bytes | None = None
    ) -> set[str]:
        """Apply an update now; note it in `integrated` if it changed the document.

        Moving the state vector is not the only change: an update that only deletes (a
        peer's tombstone collection) leaves it as it was, and must be persisted too (its
        deletions change keys). So is an update deleting clocks past our state vector
        once it is applied (`shape.deleted_upto`, None when unknown): yrs keeps a deletion
        of items it has not seen yet pending, and applies it only when they arrive in
        another update; its delete set is also kept for `snapshot`.
        Deletions below the state vector that change no key are already here: a sync
        answer carries the sender's whole delete set, and persisting it each time wrote
        rows the size of every deletion ever made. `before` is the state vector now, if
        the caller has it; the one after the apply is read only when needed (each read is
        a transaction: three of them were a tenth of a small update's apply).
        """
        self._changed_keys.clear()
        if before is None:
            before = self.state_vector()
        # yrs' own map observer, not pycrdt's `Map.observe`: pycrdt wraps each event in
        # Python (a read transaction, every key's change walked), which cost more than the
        # apply itself (1.6 us of 2.6 us per new key of a sync slice).
        subscription = self._map.integrated.observe(self._on_map_event)
        try:
            self._doc.apply_update(update)
        except ValueError as exc:
            self._changed_keys.clear()
            raise CorruptUpdateError(f"tier {self.tier}: bad Yjs update: {exc}") from None
        finally:
            subscription.drop()
        after: bytes | None = None
        # Past the state vector *after* the apply: an update that deletes items it brings
        # itself (an initial sync, a batch writing one key twice) leaves nothing pending.
        pending = False
        if shape.deleted_upto is None or shape.deleted_upto:
            after = self.state_vector()
            pending = _deletes_past(shape.deleted_upto, decode_state_vector(after))
        if pending:
            self._pending_deletes.append((shape.deleted_upto, delete_set_update(update, shape)))
            if len(self._pending_deletes) > MAX_HELD_UPDATES:
                del self._pending_deletes[0]
        if self._changed_keys or pending or (after or self.state_vector()) != before:
            self.integrated.append(update)
        return self._reindex(self._changed_keys)

    def _reindex(self, keys: dict[str, Any]) -> set[str]:
        """Bring the version index in step with changed keys; return the ids that changed.

        Empties `keys`. A key that `split_key` refuses is ignored; a value that is not a
        string counts as no version.
        """
        changed: set[str] = set()
        versions_of = self._versions
        well_formed = ITEM_ID_PATTERN.fullmatch
        for key, value in keys.items():
            item_id, sep, writer = key.partition(KEY_SEP)  # split_key, inlined
            if not sep or not writer or well_formed(item_id) is None:
                continue
            versions = versions_of.get(item_id)
            if isinstance(value, str):
                if versions is None:
                    versions_of[item_id] = {writer: value}
                elif versions.get(writer) == value:
                    continue
                else:
                    versions[writer] = value
            elif versions is not None and writer in versions:
                del versions[writer]
                if not versions:
                    del versions_of[item_id]
            else:
                continue
            changed.add(item_id)
        keys.clear()
        return changed

    def _take_update(self) -> bytes | None:
        captured, self._captured = self._captured, []
        if not captured:
            return None
        if len(captured) == 1:
            return captured[0]
        return bytes(merge_updates(*captured))

    def state_vector(self) -> bytes:
        """Return the Yjs state vector (what this replica has seen)."""
        return bytes(self._doc.get_state())

    def snapshot(self) -> bytes:
        """Return the whole document as one Yjs v1 update, deletions still pending included.

        `encode_diff()` leaves out deletions yrs keeps pending (of items not seen yet); a
        compaction that stored it instead of their rows lost them, and after a restart the
        deleted items came back when they arrived.
        """
        vector = decode_state_vector(self.state_vector())
        self._pending_deletes = [
            (upto, update) for upto, update in self._pending_deletes if _deletes_past(upto, vector)
        ]
        whole = self.encode_diff()
        if not self._pending_deletes:
            return whole
        return bytes(merge_updates(whole, *(update for _upto, update in self._pending_deletes)))

    def encode_diff(self, state_vector: bytes | None = None) -> bytes:
        """Return a Yjs v1 update with everything missing from `state_vector` (all if None)."""
        if state_vector is None:
            return bytes(self._doc.get_update())
        return bytes(self._doc.get_update(state_vector))
