"""TieredMemory: one node's replicated tiers, with resolution, digests, search and events.

Pure and synchronous: every mutation takes `now_ms` and returns a `Change` holding the Yjs
updates to persist (and later to send) and the events it produced. The caller commits the
change before acknowledging it; nothing here touches a disk, a socket or a clock.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from crdt.cache import EmbeddingReducer, LruCache
from crdt.codecs import FloatVector, as_vector
from crdt.config import MemoryConfig
from crdt.errors import (
    ClockDriftError,
    CorruptRecordError,
    InvalidItemError,
    ItemNotFoundError,
    UnknownTierError,
)
from crdt.events import EventKind, EventLog, MemoryEvent
from crdt.hlc import HybridLogicalClock, Timestamp
from crdt.item import (
    ITEM_ID_PATTERN,
    MemoryItem,
    QuickFields,
    build_item,
    check_item_id,
    check_tier,
    embedding_text,
    from_record,
    live_record_text,
    new_live_item,
    quantise_rows,
    quick_fields,
    scan_live_records,
    tombstone,
)
from crdt.item import to_record as encode_record
from crdt.merkle import MerkleDigest
from crdt.resolvers import lww
from crdt.search import SearchHit, SearchPlan, VectorIndex
from crdt.tier import TierDoc, version_hashes

L0 = "L0"
_PLAIN_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CHUNK_ELEMENTS = 1 << 17  # embedding components per numpy pass of a batched put


@dataclass(frozen=True, slots=True)
class NewItem:
    """A put request: what the caller wants stored (validated when applied)."""

    tier: str
    content: str
    id: str
    embedding: Any = None
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    citations: Sequence[str] = ()
    confidence: float = 1.0


@dataclass(frozen=True, slots=True)
class Change:
    """What a mutation produced: updates to persist in order, events, a clock ceiling."""

    updates: tuple[tuple[str, bytes], ...] = ()
    events: tuple[MemoryEvent, ...] = ()
    ceiling_ms: int | None = None
    items: tuple[MemoryItem, ...] = ()

    @property
    def empty(self) -> bool:
        """Return True when nothing needs persisting."""
        return not self.updates and self.ceiling_ms is None


@dataclass(frozen=True, slots=True)
class Resolution:
    """An item's state across tiers: the value reads return and every version behind it."""

    item: MemoryItem | None
    versions: tuple[MemoryItem, ...]
    conflict: bool


@dataclass(slots=True)
class MemoryStats:
    """Counters a node reports about its memory."""

    conflicts_detected: int = 0
    conflicts_resolved: int = 0
    corrupt_records: int = 0
    clock_drift_rejections: int = 0
    tombstones_collected: int = 0
    remote_updates_applied: int = 0
    by_resolution: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _NewLive:
    """Ids of an apply taken in bulk (`TieredMemory._take_new_live`), in columns.

    `positions` index the apply's sorted ids, ascending; `updated` and `authors` belong to
    the one version of each; `vectors` holds, per codec and dimension, the positions of
    the ids with an embedding and their rows, in order.
    """

    positions: list[int]
    updated: list[str]
    authors: list[str]
    vectors: list[tuple[list[int], npt.NDArray[np.float32]]]

    def puts(
        self, tier: str, ordered: Sequence[str], start: int, stop: int
    ) -> list[tuple[str, int, str, str, str]]:
        """Return the PUT event entries of `positions[start:stop]` for `_remote_puts`."""
        stamps = self.updated[start:stop]
        return list(
            zip(
                stamps,
                [int(stamp[:15]) for stamp in stamps],
                repeat(tier),
                [ordered[p] for p in self.positions[start:stop]],
                self.authors[start:stop],
            )
        )


def _complement(positions: Sequence[int], count: int) -> list[int]:
    """Return the numbers in range(count) missing from ascending `positions`."""
    if len(positions) == count:
        return []
    taken = set(positions)
    return [p for p in range(count) if p not in taken]


class TieredMemory:
    """The replicated tiers L1-L3 of one node plus the local L0 cache."""

    def __init__(
        self,
        *,
        node_id: str,
        client_ids: Mapping[str, int],
        config: MemoryConfig | None = None,
        clock: HybridLogicalClock | None = None,
        events: EventLog | None = None,
    ) -> None:
        """Create empty tiers; `client_ids` must be fresh Yjs client ids, one per tier."""
        self.node_id = node_id
        self.config = config or MemoryConfig.default()
        self.clock = clock or HybridLogicalClock(
            max_drift_ms=self.config.max_clock_drift_ms,
            ceiling_window_ms=self.config.hlc_ceiling_window_ms,
        )
        self.events = events or EventLog(
            capacity=self.config.event_capacity, retention_ms=self.config.event_retention_ms
        )
        self.stats = MemoryStats()
        self._tiers = {t: TierDoc(t, client_id=client_ids[t]) for t in self.config.tiers}
        self._digests = {t: MerkleDigest() for t in self._tiers}
        self._index = VectorIndex()
        self._indexed_tier: dict[str, str] = {}
        self._cache: LruCache[str, MemoryItem] = LruCache(self.config.l0_capacity)
        self._l0_vectors: dict[str, FloatVector] = {}
        self._reducer = EmbeddingReducer(self.config.l0_dim)
        self._where: dict[str, set[str]] = {}
        self._home: dict[str, str] = {}
        self._reported_conflicts: dict[str, frozenset[tuple[str, str, Timestamp]]] = {}
        self._tombstoned: dict[str, set[str]] = {t: set() for t in self._tiers}

    # ----------------------------------------------------------------- loading

    @property
    def tiers(self) -> tuple[str, ...]:
        """Return the replicated tier names."""
        return tuple(self._tiers)

    def tier_doc(self, tier: str) -> TierDoc:
        """Return the document of a replicated tier."""
        return self._tiers[check_tier(tier, self._tiers)]

    def load(self, tier: str, blobs: Iterable[bytes]) -> int:
        """Apply persisted updates at start-up (no events); return how many items changed."""
        doc = self.tier_doc(tier)
        changed: set[str] = set()
        for blob in blobs:
            changed |= doc.apply_update(blob)
        for item_id in changed:
            self._refresh(item_id, tier, origin=None)
        return len(changed)

    # ----------------------------------------------------------------- writes

    def put(self, request: NewItem, now_ms: int) -> Change:
        """Write one item (create or replace); the change's `items` holds the stored value."""
        return self.put_many([request], now_ms)

    def put_many(self, requests: Sequence[NewItem], now_ms: int) -> Change:
        """Validate every request first, then write all of them; all or nothing.

        When one batch names an id more than once, the last request for it wins.
        """
        fast = self._put_new(requests, now_ms)
        if fast is not None:
            return fast
        last_index = {request.id: index for index, request in enumerate(requests)}
        built: list[MemoryItem] = []
        for index, request in enumerate(requests):
            tier = check_tier(request.tier, self._tiers)
            item_id = check_item_id(request.id)
            ts = self.clock.tick(now_ms)
            previous = self._resolve(item_id).item if item_id in self._where else None
            built.append(
                build_item(
                    item_id=item_id,
                    tier=tier,
                    content=request.content,
                    embedding=request.embedding,
                    metadata=request.metadata,
                    tags=request.tags,
                    citations=request.citations,
                    confidence=request.confidence,
                    created=previous.created if previous is not None else ts,
                    updated=ts,
                    author=self.node_id,
                    codec=self.config.policy(tier).codec,
                    limits=self.config.limits,
                )
            )
            if last_index[request.id] != index:
                built.pop()  # validated, but superseded later in the same batch
        writes: dict[str, list[tuple[str, str, str | None]]] = {t: [] for t in self._tiers}
        for item in built:
            writes[item.tier].append((item.id, self.node_id, encode_record(item)))
            self._collapse_elsewhere(item.id, item.tier, item.updated, writes, item.tier)
        updates = self._commit_writes(writes)
        events: list[MemoryEvent] = []
        for item in built:
            # `events` too: a write that collapses a conflict emits RESOLVED, which must be
            # persisted with the write (it was only in the ring, and gone after a restart).
            self._refresh(item.id, item.tier, origin="local", known=item, events=events)
            events.append(self._event(item.tier, item.id, EventKind.PUT, "local", item))
        return self._change(updates, events, items=built)

    def _put_new(self, requests: Sequence[NewItem], now_ms: int) -> Change | None:
        """Do `put_many` per batch for new, distinct ids of the common shapes.

        Returns None, having changed nothing, unless every request names a valid tier and an
        id unknown here and unique in the batch, with fields `quick_fields` accepts and an
        embedding that is absent or valid; the general path then handles the batch (and
        raises the usual InvalidItemError for a bad request). Otherwise it stores exactly
        what the general path would: same timestamps, records, updates, digests, index and
        events. A new id has one version, so there is nothing to resolve, collapse or report.
        """
        tiers = self._tiers
        where = self._where
        limits = self.config.limits
        max_dim = limits.max_dim
        fullmatch = ITEM_ID_PATTERN.fullmatch
        seen: set[str] = set()
        fields: list[QuickFields] = []
        vectors: list[Any] = []
        groups: dict[str, dict[int, list[int]]] = {}  # tier -> dim -> request indices
        for index, request in enumerate(requests):
            tier, item_id = request.tier, request.id
            if (
                type(tier) is not str
                or tier not in tiers
                or type(item_id) is not str
                or item_id in seen
                or item_id in where
                or fullmatch(item_id) is None
                or item_id in tiers[tier]
            ):
                return None
            seen.add(item_id)
            quick = quick_fields(
                request.content,
                request.metadata,
                request.tags,
                request.citations,
                request.confidence,
                limits,
            )
            if quick is None:
                return None
            fields.append(quick)
            vector = request.embedding
            if vector is not None:
                if not (
                    type(vector) is np.ndarray
                    and vector.ndim == 1
                    and vector.dtype in _PLAIN_FLOATS
                    and 1 <= vector.shape[0] <= max_dim
                ):
                    try:
                        vector = as_vector(vector, max_dim=max_dim)
                    except InvalidItemError:
                        return None
                by_dim = groups.get(tier)
                if by_dim is None:
                    by_dim = groups[tier] = {}
                indices = by_dim.get(vector.shape[0])
                if indices is None:
                    by_dim[vector.shape[0]] = [index]
                else:
                    indices.append(index)
            vectors.append(vector)
        # Embeddings are quantised a chunk of rows at a time: bounded temporaries, so a big
        # batch does not leave the allocator holding large freed blocks (RSS).
        chunks: list[tuple[str, int, list[int]]] = []  # tier, dim, request indices
        encoded: list[Any] = [None] * len(requests)  # per row: encode_embedding's bytes
        for tier, by_dim in groups.items():
            codec = self.config.policy(tier).codec
            for dim, indices in by_dim.items():
                step = max(1, _CHUNK_ELEMENTS // dim)
                for start in range(0, len(indices), step):
                    part = indices[start : start + step]
                    with np.errstate(over="ignore"):  # past float32's range: refused below
                        matrix = np.array([vectors[i] for i in part], dtype=np.float32)
                    quantised = quantise_rows(matrix, codec)
                    if quantised is None:
                        return None
                    for index, vector, raw_row in zip(part, *quantised, strict=True):
                        vectors[index] = vector
                        encoded[index] = raw_row
                    chunks.append((tier, dim, part))

        # Everything is valid: from here on the batch is written. (Parallel lists and zip
        # rather than a tuple per item: fewer live objects for the cyclic GC to chase.)
        tick = self.clock.tick
        author = self.node_id
        codecs = {t: self.config.policy(t).codec for t in tiers}
        built: list[MemoryItem] = []
        stamps: list[str] = []
        walls: list[int] = []
        per_tier: dict[str, tuple[list[str], list[str]]] = {t: ([], []) for t in tiers}
        for request, quick, vector, raw_row in zip(requests, fields, vectors, encoded, strict=True):
            content, digest, meta, meta_json, tags, cites, conf = quick
            ts = tick(now_ms)
            stamp = ts.encode()
            tier = request.tier
            item = new_live_item(
                request.id, tier, content, digest, vector, meta, tags, cites, conf, ts, ts,
                author, codecs[tier],
            )  # fmt: skip
            built.append(item)
            stamps.append(stamp)
            walls.append(ts.wall_ms)
            ids, records = per_tier[tier]
            ids.append(request.id)
            # base64 here, not per chunk: each text is freed as soon as its record is built
            vector_text = None if raw_row is None else embedding_text(raw_row)
            records.append(
                live_record_text(item, meta_json, vector_text, created=stamp, updated=stamp)
            )
        del fields, vectors, encoded
        updates: list[tuple[str, bytes]] = []
        for tier, (ids, records) in per_tier.items():
            if ids:
                doc = tiers[tier]
                update = doc.write(zip(ids, repeat(author), records))
                if update is not None:
                    updates.append((tier, update))
                self._digests[tier].set_many(zip(ids, map(doc.content_hash, ids), strict=True))
        cache, l0_vectors, home, indexed = (
            self._cache,
            self._l0_vectors,
            self._home,
            self._indexed_tier,
        )
        for item in built:
            item_id, tier = item.id, item.tier
            where[item_id] = {tier}  # what _note_tier records for the one tier holding it
            cache.invalidate(item_id)
            l0_vectors.pop(item_id, None)
            home[item_id] = tier
            if item.embedding is not None:
                indexed[item_id] = tier
        self._index_new(built, chunks)
        events = self.events.append_many(
            kind=EventKind.PUT,
            origin="local",
            entries=zip(
                stamps,
                walls,
                [request.tier for request in requests],
                [request.id for request in requests],
                repeat(author),
            ),
        )
        return self._change(updates, events, items=built)

    def _index_new(
        self, built: Sequence[MemoryItem], chunks: Sequence[tuple[str, int, list[int]]]
    ) -> None:
        """Index new items' embeddings in batch order (so rows match one-by-one upserts)."""
        by_dim: dict[int, list[tuple[str, list[int]]]] = {}
        for tier, dim, indices in chunks:
            by_dim.setdefault(dim, []).append((tier, indices))
        for dim, parts in by_dim.items():
            if len({tier for tier, _indices in parts}) == 1:  # chunks in batch order
                for tier, indices in parts:
                    self._upsert_built(tier, [built[i] for i in indices])
                continue
            order = sorted(index for _tier, indices in parts for index in indices)
            step = max(1, _CHUNK_ELEMENTS // dim)
            for start in range(0, len(order), step):
                self._upsert_built(None, [built[i] for i in order[start : start + step]])

    def _upsert_built(self, tier: str | None, items: Sequence[MemoryItem]) -> None:
        """Upsert the embeddings of new items (all in `tier` if given) in one index call."""
        vectors = np.stack([item.embedding for item in items if item.embedding is not None])
        tiers = tier if tier is not None else [item.tier for item in items]
        self._index.upsert_many(tiers, [item.id for item in items], vectors)

    def delete(self, item_id: str, now_ms: int) -> Change:
        """Delete a live item by writing tombstones; raise ItemNotFoundError if not live."""
        current = self.get(item_id)
        ts = self.clock.tick(now_ms)
        writes: dict[str, list[tuple[str, str, str | None]]] = {t: [] for t in self._tiers}
        dead = tombstone(current, updated=ts, author=self.node_id)
        writes[current.tier].append((item_id, self.node_id, encode_record(dead)))
        self._collapse_elsewhere(item_id, current.tier, ts, writes, None)
        updates = self._commit_writes(writes)
        events: list[MemoryEvent] = []
        self._refresh(item_id, current.tier, origin="local", events=events)
        events.append(self._event(current.tier, item_id, EventKind.DELETE, "local", dead))
        return self._change(updates, events)

    def move(self, item_id: str, to_tier: str, now_ms: int) -> Change:
        """Move a live item to another tier: write it there, leave a moved_to tombstone."""
        check_tier(to_tier, self._tiers)
        current = self.get(item_id)
        if current.tier == to_tier:
            return self._change([], [], items=[current])
        ts = self.clock.tick(now_ms)
        codec = self.config.policy(to_tier).codec
        moved = build_item(
            item_id=item_id,
            tier=to_tier,
            content=current.content,
            embedding=current.embedding,
            metadata=current.metadata,
            tags=current.tags,
            citations=current.citations,
            confidence=current.confidence,
            created=current.created,
            updated=ts,
            author=self.node_id,
            codec=codec,
            limits=self.config.limits,
        )
        writes: dict[str, list[tuple[str, str, str | None]]] = {t: [] for t in self._tiers}
        writes[to_tier].append((item_id, self.node_id, encode_record(moved)))
        self._collapse_elsewhere(item_id, to_tier, ts, writes, to_tier)
        updates = self._commit_writes(writes)
        events: list[MemoryEvent] = []
        self._refresh(item_id, to_tier, origin="local", known=moved, events=events)
        events.append(
            self._event(to_tier, item_id, EventKind.MOVE, "local", moved, {"from": current.tier})
        )
        return self._change(updates, events, items=[moved])

    def _collapse_elsewhere(
        self,
        item_id: str,
        home: str,
        ts: Timestamp,
        writes: dict[str, list[tuple[str, str, str | None]]],
        moved_to: str | None,
    ) -> None:
        """Queue tombstones in other tiers whose versions are not one settled tombstone."""
        for tier in self._where.get(item_id, ()):
            if tier == home:
                continue
            versions = self._decoded(item_id, tier)
            if len(versions) == 1 and versions[0].deleted:
                continue
            base = versions[0] if versions else None
            if base is None:
                continue
            dead = tombstone(
                dataclasses.replace(base, tier=tier),
                updated=ts,
                author=self.node_id,
                moved_to=moved_to,
            )
            writes[tier].append((item_id, self.node_id, encode_record(dead)))

    def _commit_writes(
        self, writes: Mapping[str, list[tuple[str, str, str | None]]]
    ) -> list[tuple[str, bytes]]:
        updates: list[tuple[str, bytes]] = []
        for tier, tier_writes in writes.items():
            if not tier_writes:
                continue
            update = self._tiers[tier].write(tier_writes)
            for item_id, _writer, _record in tier_writes:
                self._note_tier(item_id, tier)
            if update is not None:
                updates.append((tier, update))
        return updates

    # ----------------------------------------------------------------- remote

    def apply_remote(self, tier: str, update: bytes, now_ms: int) -> Change:
        """Merge a peer's Yjs update for `tier`; return events for every changed item.

        Raises CorruptUpdateError (a ValueError) if the update cannot be decoded; the tier
        is then unchanged.
        """
        with self.events.wall_capped(now_ms + self.config.max_clock_drift_ms):
            return self._apply_remote(tier, update, now_ms)

    def _apply_remote(self, tier: str, update: bytes, now_ms: int) -> Change:
        doc = self.tier_doc(tier)
        changed = doc.apply_update(update)
        self.stats.remote_updates_applied += 1
        events: list[MemoryEvent] = []
        to_index: list[tuple[str, str, FloatVector]] = []
        hashes: list[tuple[str, bytes | None]] = []
        ordered = sorted(changed)
        fresh = self._take_new_live(tier, ordered, hashes)
        newest: Timestamp | None = None
        if fresh.updated:
            top = max(fresh.updated)  # encoded stamps sort as the timestamps do
            newest = Timestamp(int(top[:15]), int(top[16:]))
        taken = fresh.positions
        done = 0  # taken[:done] have their PUT events logged
        puts: list[tuple[str, int, str, str, str]] = []  # PUT events of new ids, not yet logged
        for position in _complement(taken, len(ordered)):
            item_id = ordered[position]
            end = bisect_left(taken, position, done)
            if end > done:  # logged first: events keep the order of the ids
                if puts:
                    events.extend(self._remote_puts(puts))
                    puts = []
                events.extend(self._remote_puts(fresh.puts(tier, ordered, done, end)))
                done = end
            if item_id not in self._where:
                new = self._refresh_new(item_id, tier, hashes, to_index)
                if new is not None:
                    stamp = new.updated
                    if newest is None or stamp > newest:
                        newest = stamp
                    if not new.deleted:
                        puts.append((stamp.encode(), stamp.wall_ms, tier, item_id, new.author))
                    continue
            if puts:
                events.extend(self._remote_puts(puts))
                puts = []
            self._note_tier(item_id, tier)
            was_live = item_id in self._home
            resolution = self._refresh(
                item_id, tier, origin="remote", events=events, to_index=to_index
            )
            for version in resolution.versions:
                if newest is None or version.updated > newest:
                    newest = version.updated
            item = resolution.item
            if item is not None:
                events.append(self._event(item.tier, item_id, EventKind.PUT, "remote", item))
            elif was_live:
                # The newest version (versions are sorted by tier and writer, not time).
                last = lww(resolution.versions) if resolution.versions else None
                events.append(self._event(tier, item_id, EventKind.DELETE, "remote", last))
        if puts:
            events.extend(self._remote_puts(puts))
        if done < len(taken):
            events.extend(self._remote_puts(fresh.puts(tier, ordered, done, len(taken))))
        self._digests[tier].set_many(hashes)
        self._index_remote(tier, ordered, fresh, to_index)
        if newest is not None:
            try:
                self.clock.observe(newest, now_ms)
            except ClockDriftError:
                self.stats.clock_drift_rejections += 1
        # Persist every update the document integrated: this one, and any held back that it
        # released. Without them, the rows on disk would have a gap, and what follows it
        # from the same writer would be held back at the next load.
        return self._change([(tier, u) for u in doc.integrated], events)

    # ----------------------------------------------------------------- tombstones

    def collect_tombstones(self, now_ms: int) -> Change:
        """Remove tombstoned items whose every version is older than the tier's retention."""
        updates: list[tuple[str, bytes]] = []
        events: list[MemoryEvent] = []
        for tier, doc in self._tiers.items():
            horizon = now_ms - self.config.policy(tier).tombstone_retention_ms
            expired = [
                item_id
                for item_id in sorted(self._tombstoned[tier])
                if all(
                    v.deleted and v.updated.wall_ms < horizon for v in self._decoded(item_id, tier)
                )
            ]
            if not expired:
                continue
            update = doc.remove_all(expired)
            for item_id in expired:
                # origin and events: a collection that ends a conflict (two tombstones)
                # logs RESOLVED here too, as the peers applying it do.
                self._refresh(item_id, tier, origin="local", events=events)
                events.append(self._event(tier, item_id, EventKind.COLLECTED, "local", None))
            self.stats.tombstones_collected += len(expired)
            if update is not None:
                updates.append((tier, update))
        return self._change(updates, events)

    # ----------------------------------------------------------------- reads

    def get(self, item_id: str) -> MemoryItem:
        """Return the resolved live item; raise ItemNotFoundError if absent or deleted."""
        cached = self._cache.get(item_id)
        if cached is not None:
            return cached
        if item_id not in self._home:
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        item = self._resolve(item_id).item
        if item is None:  # pragma: no cover - _home is kept in step with resolution
            raise ItemNotFoundError(f"no item with id {item_id!r}")
        self._remember(item)
        return item

    def versions(self, item_id: str) -> tuple[MemoryItem, ...]:
        """Return every stored version of `item_id` across tiers (tombstones included)."""
        return self._resolve(item_id).versions

    def conflicts(self, item_id: str) -> tuple[MemoryItem, ...]:
        """Return the concurrent versions of `item_id` if it is in conflict, else ()."""
        resolution = self._resolve(item_id)
        return resolution.versions if resolution.conflict else ()

    def conflicted_ids(self) -> list[str]:
        """Return the ids currently in conflict, sorted."""
        return sorted(self._reported_conflicts)

    def items(self, tier: str | None = None) -> Iterator[MemoryItem]:
        """Iterate over live items (of one tier if given), in id order."""
        for item_id in sorted(self._home):
            item = self.get(item_id)
            if tier is None or item.tier == tier:
                yield item

    def count(self, tier: str) -> int:
        """Return the number of live items whose home is `tier`."""
        return sum(1 for home in self._home.values() if home == tier)

    def counts(self) -> dict[str, int]:
        """Return `count(tier)` of every replicated tier, in one pass over the live items."""
        homes = Counter(self._home.values())
        return {tier: homes[tier] for tier in self.tiers}

    def __contains__(self, item_id: object) -> bool:
        """Return True if `item_id` is a live item."""
        return item_id in self._home

    def search(
        self, query: object, k: int = 10, tiers: Collection[str] | None = None
    ) -> list[SearchHit]:
        """Return the k most cosine-similar live items in `tiers` (all replicated if None).

        Tier "L0" searches the local cache's reduced embeddings instead.
        """
        return self.prepare_search(query, k, tiers).run_here()

    def prepare_search(
        self, query: object, k: int = 10, tiers: Collection[str] | None = None
    ) -> PreparedSearch:
        """Check a search (as `search` does) and freeze what its scoring reads.

        Either `prepared.run_here()`, or score `prepared.plan` (when not None) anywhere, even
        on another thread while this memory changes, call `prepared.finish` here, then
        release the plan.
        """
        vec = as_vector(query, max_dim=self.config.limits.max_dim)
        chosen = tuple(tiers) if tiers is not None else self.tiers
        for tier in chosen:
            if tier != L0 and tier not in self._tiers:
                raise UnknownTierError(
                    f"unknown tier {tier!r}; expected {L0} (the local cache) or one of "
                    f"{', '.join(self._tiers)}"
                )
        replicated = [t for t in chosen if t != L0]
        l0_hits = self._search_l0(vec, k) if L0 in chosen else None  # first: nothing frozen
        plan = self._index.plan_search(vec, k=k, tiers=replicated) if replicated else None
        return PreparedSearch(self._index, k, plan, l0_hits)

    def _search_l0(self, vec: FloatVector, k: int) -> list[SearchHit]:
        """Search the hot items in L0 by their reduced embeddings (reduced lazily, here)."""
        reduced = self._reducer.reduce(vec)
        cached = [self._cache.peek(item_id) for item_id in self._cache.keys()]  # noqa: SIM118
        scored = []
        for item in cached:
            if item is None or item.embedding is None:
                continue
            small = self._l0_vectors.get(item.id)
            if small is None:
                small = self._l0_vectors[item.id] = self._reducer.reduce(item.embedding)
            if small.shape == reduced.shape:
                scored.append(SearchHit(L0, item.id, float(small @ reduced)))
        for item_id in [i for i in self._l0_vectors if i not in self._cache]:
            del self._l0_vectors[item_id]
        scored.sort(key=lambda h: (-h.score, h.item_id))
        return scored[:k]

    def digest(self, tier: str) -> MerkleDigest:
        """Return the Merkle digest of a tier's content (all versions, tombstones included)."""
        return self._digests[check_tier(tier, self._tiers)]

    def cache_stats(self) -> Any:
        """Return the L0 cache counters."""
        return self._cache.stats

    # ----------------------------------------------------------------- internals

    def _note_tier(self, item_id: str, tier: str) -> None:
        if item_id in self._tiers[tier]:
            self._where.setdefault(item_id, set()).add(tier)
        else:
            tiers = self._where.get(item_id)
            if tiers is not None:
                tiers.discard(tier)
                if not tiers:
                    del self._where[item_id]

    def _decoded(self, item_id: str, tier: str) -> list[MemoryItem]:
        out = []
        for _writer, record in sorted(self._tiers[tier].versions(item_id).items()):
            try:
                out.append(from_record(item_id, tier, record))
            except CorruptRecordError:
                self.stats.corrupt_records += 1
        return out

    def _resolve(
        self, item_id: str, decoded: Mapping[str, list[MemoryItem]] | None = None
    ) -> Resolution:
        """Resolve an item across tiers; see docs/ARCHITECTURE.md, "Resolution".

        `decoded` may hold versions already decoded for some tiers (the others are decoded).
        """
        known = decoded or {}
        per_tier = {
            t: known[t] if t in known else self._decoded(item_id, t)
            for t in sorted(self._where.get(item_id, ()))
        }
        versions = tuple(v for vs in per_tier.values() for v in vs)
        live_by_tier = {t: [v for v in vs if not v.deleted] for t, vs in per_tier.items()}
        live_tiers = [t for t, vs in live_by_tier.items() if vs]
        conflict = len(live_tiers) > 1 or any(len(vs) > 1 for vs in per_tier.values())
        if not live_tiers:
            return Resolution(None, versions, conflict)
        forwarding = {t for t, vs in per_tier.items() if any(v.deleted and v.moved_to for v in vs)}
        candidates = [t for t in live_tiers if t not in forwarding] or live_tiers
        home = max(candidates, key=lambda t: max(v.order_key for v in live_by_tier[t]))
        live = sorted((v for t in live_tiers for v in live_by_tier[t]), key=lambda v: v.order_key)
        item = live[0] if len(live) == 1 else self.config.policy(home).resolver(live)
        if item.tier != home:
            item = dataclasses.replace(item, tier=home)
        return Resolution(item, versions, conflict)

    def _refresh(
        self,
        item_id: str,
        tier: str,
        *,
        origin: str | None,
        known: MemoryItem | None = None,
        events: list[MemoryEvent] | None = None,
        to_index: list[tuple[str, str, FloatVector]] | None = None,
    ) -> Resolution:
        """Bring digest, liveness, index, cache and conflict tracking up to date for one id.

        With `to_index`, the embedding to index is appended there for `_index_all` instead.
        """
        self._note_tier(item_id, tier)
        decoded: dict[str, list[MemoryItem]] = {}  # decoded once, for tombstones and resolution
        for t, doc in self._tiers.items():
            if item_id in doc:
                self._digests[t].set(item_id, doc.content_hash(item_id))
                live = known is not None and known.tier == t
                if not live:
                    decoded[t] = self._decoded(item_id, t)
                self._track_tombstones(item_id, t, live=live, decoded=decoded.get(t))
            else:  # what the above does for a tier without versions, minus the work
                digest = self._digests[t]
                if item_id in digest:
                    digest.set(item_id, None)
                self._tombstoned[t].discard(item_id)
        single_home = known is not None and self._where.get(item_id) == {known.tier}
        if single_home and known is not None:
            resolution = Resolution(known, (known,), False)
        else:
            resolution = self._resolve(item_id, decoded)
        self._cache.invalidate(item_id)
        self._l0_vectors.pop(item_id, None)
        item = resolution.item
        if item is None:
            self._home.pop(item_id, None)
            self._unindex(item_id)
        else:
            self._home[item_id] = item.tier
            if item.embedding is not None:
                old = self._indexed_tier.get(item_id)
                if old is not None and old != item.tier:
                    self._index.remove(old, item_id)
                if to_index is None:
                    self._index.upsert(item.tier, item_id, item.embedding)
                else:
                    to_index.append((item.tier, item_id, item.embedding))
                self._indexed_tier[item_id] = item.tier
            else:
                self._unindex(item_id)
        self._track_conflict(item_id, resolution, origin, events)
        return resolution

    def _remote_puts(self, entries: list[tuple[str, int, str, str, str]]) -> list[MemoryEvent]:
        """Log remote PUT events `(hlc, wall_ms, tier, id, author)` as `_event` would, at once."""
        return self.events.append_many(kind=EventKind.PUT, origin="remote", entries=entries)

    def _take_new_live(
        self, tier: str, ordered: Sequence[str], hashes: list[tuple[str, bytes | None]]
    ) -> _NewLive:
        """Do `_refresh_new` in bulk for the new ids `scan_live_records` accepts; return them.

        Those are ids new to every tier whose one version in `tier` is live. Their digest
        entries go to `hashes`; their embeddings stay in the result, for `_index_remote`.
        Other ids are left untouched.
        """
        where = self._where
        candidates, writers, records = self._tiers[tier].sole_versions(ordered, where)
        if not candidates:
            return _NewLive([], [], [], [])
        scan = scan_live_records(records)
        if len(scan.positions) == len(candidates):  # the usual case: every one of them
            positions = candidates
        else:
            positions = [candidates[k] for k in scan.positions]
            writers = [writers[k] for k in scan.positions]
            records = [records[k] for k in scan.positions]
        ids = [ordered[p] for p in positions]
        hashes.extend(zip(ids, version_hashes(writers, records), strict=True))
        where.update(zip(ids, [{tier} for _ in ids], strict=True))  # what _note_tier records
        self._home.update(zip(ids, repeat(tier)))
        if self._cache:
            for item_id in ids:
                self._cache.invalidate(item_id)
        if self._l0_vectors:
            for item_id in ids:
                self._l0_vectors.pop(item_id, None)
        vectors = [([candidates[k] for k in rows], matrix) for rows, matrix in scan.vectors]
        for rows, _matrix in vectors:
            embedded = ids if rows == positions else [ordered[p] for p in rows]
            self._indexed_tier.update(zip(embedded, repeat(tier)))
        return _NewLive(positions, scan.updated, scan.authors, vectors)

    def _index_remote(
        self,
        tier: str,
        ordered: Sequence[str],
        fresh: _NewLive,
        to_index: list[tuple[str, str, FloatVector]],
    ) -> None:
        """Index the embeddings of an apply in the order of `ordered`, as one-by-one would."""
        if not fresh.vectors:
            self._index_all(to_index)
            return
        if not to_index and len(fresh.vectors) == 1:  # an initial sync's slice: one matrix
            rows, matrix = fresh.vectors[0]
            # Normalised at the next search: the sync's receiver is paced by its CPU.
            self._index.upsert_many(tier, [ordered[p] for p in rows], matrix, defer=True)
            return
        # `ordered` is sorted and holds each id once, so id order is its order.
        merged = list(to_index)
        for rows, matrix in fresh.vectors:
            merged.extend((tier, ordered[p], row) for p, row in zip(rows, matrix, strict=True))
        merged.sort(key=lambda entry: entry[1])
        self._index_all(merged)

    def _refresh_new(
        self,
        item_id: str,
        tier: str,
        hashes: list[tuple[str, bytes | None]],
        to_index: list[tuple[str, str, FloatVector]],
    ) -> MemoryItem | None:
        """Do what `_refresh` does for an id new to every tier with one version in `tier`.

        The digest entry and embedding go to `hashes` and `to_index`. Returns the decoded
        version, or None, having changed nothing, when the shape differs or the record is
        corrupt (the caller then takes the general path). One version in one tier: there
        is nothing to resolve and no conflict.
        """
        doc = self._tiers[tier]
        versions = doc.versions(item_id)
        if len(versions) != 1:
            return None
        (record,) = versions.values()
        try:
            item = from_record(item_id, tier, record)
        except CorruptRecordError:
            return None
        self._where[item_id] = {tier}
        hashes.append((item_id, doc.content_hash(item_id)))
        self._cache.invalidate(item_id)
        self._l0_vectors.pop(item_id, None)
        if item.deleted:
            self._tombstoned[tier].add(item_id)
        else:
            self._home[item_id] = tier
            if item.embedding is not None:
                to_index.append((tier, item_id, item.embedding))
                self._indexed_tier[item_id] = tier
        return item

    def _index_all(self, entries: Sequence[tuple[str, str, FloatVector]]) -> None:
        """Upsert (tier, id, embedding) entries, one index call per dimension."""
        by_dim: dict[int, list[tuple[str, str, FloatVector]]] = {}
        for entry in entries:
            by_dim.setdefault(entry[2].shape[0], []).append(entry)
        for group in by_dim.values():
            self._index.upsert_many(
                [t for t, _i, _v in group],
                [i for _t, i, _v in group],
                np.stack([v for *_k, v in group]),
            )

    def _track_tombstones(
        self,
        item_id: str,
        tier: str,
        live: bool = False,
        decoded: list[MemoryItem] | None = None,
    ) -> None:
        doc = self._tiers[tier]
        versions = decoded if decoded is not None else self._decoded(item_id, tier)
        # Every record decoded: one this node cannot read (a newer peer's codec, say) is
        # not known to be a tombstone, and collecting it would delete it for everyone.
        tomb = (
            not live
            and item_id in doc
            and len(versions) == len(doc.versions(item_id))
            and all(v.deleted for v in versions)
        )
        if tomb:
            self._tombstoned[tier].add(item_id)
        else:
            self._tombstoned[tier].discard(item_id)

    def _unindex(self, item_id: str) -> None:
        old = self._indexed_tier.pop(item_id, None)
        if old is not None:
            self._index.remove(old, item_id)

    def _track_conflict(
        self,
        item_id: str,
        resolution: Resolution,
        origin: str | None,
        events: list[MemoryEvent] | None,
    ) -> None:
        reported = self._reported_conflicts.get(item_id)
        if resolution.conflict:
            signature = frozenset((v.tier, v.author, v.updated) for v in resolution.versions)
            if signature == reported:
                return
            self._reported_conflicts[item_id] = signature
            self.stats.conflicts_detected += 1
            if origin is not None and events is not None:
                tiers = sorted({v.tier for v in resolution.versions})
                events.append(
                    self._event(
                        resolution.item.tier if resolution.item else tiers[0],
                        item_id,
                        EventKind.CONFLICT,
                        origin,
                        resolution.item,
                        {"versions": len(resolution.versions), "tiers": tiers},
                    )
                )
        elif reported is not None:
            del self._reported_conflicts[item_id]
            self.stats.conflicts_resolved += 1
            if origin is not None:
                event = self._event(
                    resolution.item.tier if resolution.item else "L1",
                    item_id,
                    EventKind.RESOLVED,
                    origin,
                    resolution.item,
                )
                if events is not None:
                    events.append(event)

    def _remember(self, item: MemoryItem) -> None:
        self._cache.put(item.id, item)

    def _event(
        self,
        tier: str,
        item_id: str,
        kind: EventKind,
        origin: str,
        item: MemoryItem | None,
        detail: Mapping[str, object] | None = None,
    ) -> MemoryEvent:
        ts = item.updated if item is not None else self.clock.last
        return self.events.append(
            hlc=ts.encode(),
            wall_ms=ts.wall_ms,
            tier=tier,
            item_id=item_id,
            kind=kind,
            origin=origin,
            author=item.author if item is not None else self.node_id,
            detail=dict(detail or {}),
        )

    def _change(
        self,
        updates: Sequence[tuple[str, bytes]],
        events: Sequence[MemoryEvent],
        items: Sequence[MemoryItem] = (),
    ) -> Change:
        return Change(
            updates=tuple(updates),
            events=tuple(events),
            ceiling_ms=self.clock.pending_ceiling(),
            items=tuple(items),
        )


@dataclass(slots=True)
class PreparedSearch:
    """A checked search whose replicated part (`plan`, if any) is scored apart."""

    index: VectorIndex
    k: int
    plan: SearchPlan | None
    l0_hits: list[SearchHit] | None  # when L0 is searched too (done at preparation)

    def run_here(self) -> list[SearchHit]:
        """Score on this thread, finish and release: the whole search at once."""
        plan = self.plan
        if plan is None:
            return self.finish(None)
        try:
            return self.finish(plan.score())
        finally:
            plan.release()

    def finish(
        self, scored: tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]] | None
    ) -> list[SearchHit]:
        """Return the hits, best first: the scored rows' items still live, plus L0's."""
        hits: list[SearchHit] = []
        if self.plan is not None and scored is not None:
            hits = self.index.finish_search(self.plan, *scored)
        if self.l0_hits is not None:
            hits = sorted([*hits, *self.l0_hits], key=lambda h: (-h.score, h.tier, h.item_id))[
                : self.k
            ]
        return hits
