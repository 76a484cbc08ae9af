"""The batched fast path of `TieredMemory.put_many` stores exactly what the general path does.

A batch of new, distinct ids takes `TieredMemory._put_new`; every other batch (and every batch
with an invalid request) takes the general path. These tests run the same batches through a
memory with the fast path and one forced onto the general path, and compare everything
observable: records (byte for byte `to_record`), Yjs updates, digests, reads, search results,
events, the clock and errors. They also check the batch helpers against their per-item
counterparts.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdt.codecs import EmbeddingCodec, decode_embedding, encode_embedding
from crdt.errors import MemmeshError
from crdt.events import EventKind, EventLog, MemoryEvent
from crdt.item import MemoryItem, embedding_text, live_record_text, quantise_rows, to_record
from crdt.memory import Change, NewItem, TieredMemory
from crdt.merkle import MerkleDigest
from crdt.search import VectorIndex, _normalise
from crdt.tier import TierDoc

TIERS = ("L1", "L2", "L3")
NOW = 1_700_000_000_000

# --------------------------------------------------------------------------- helpers


def make_memory(*, fast: bool = True, node_id: str = "node-a") -> TieredMemory:
    memory = TieredMemory(node_id=node_id, client_ids={t: 7_000 + i for i, t in enumerate(TIERS)})
    if not fast:
        memory._put_new = lambda requests, now_ms: None  # type: ignore[method-assign]
    return memory


def spy_fast_path(memory: TieredMemory) -> list[bool]:
    """Record, per put_many call, whether the fast path handled it."""
    taken: list[bool] = []
    original = memory._put_new

    def spy(requests: Sequence[NewItem], now_ms: int) -> Change | None:
        result = original(requests, now_ms)
        taken.append(result is not None)
        return result

    memory._put_new = spy  # type: ignore[method-assign]
    return taken


def item_state(item: MemoryItem) -> tuple[object, ...]:
    emb = item.embedding
    return (
        to_record(item),
        item.tier,
        item.id,
        item.codec,
        None
        if emb is None
        else (emb.dtype.str, emb.shape, emb.tobytes(), emb.flags.writeable, emb.base is None),
        type(item.metadata),
        type(item.tags),
        type(item.citations),
        type(item.confidence),
    )


def event_state(events: Sequence[MemoryEvent]) -> list[dict[str, object]]:
    return [e.to_json() for e in events]


def memory_state(memory: TieredMemory, queries: Sequence[np.ndarray]) -> dict[str, object]:
    """Everything observable about a memory (plus the internals the general path keeps)."""
    ids = sorted(memory._where)
    searches = []
    for query in queries:
        for tiers in (None, ("L1",), ("L2", "L3")):
            try:
                hits = memory.search(query, k=5, tiers=tiers)
            except (ValueError, MemmeshError) as exc:
                searches.append(repr(exc))
            else:
                searches.append([(h.tier, h.item_id, h.score) for h in hits])
    return {
        "roots": {t: memory.digest(t).root() for t in TIERS},
        "digest_items": {t: dict(memory.digest(t)._items) for t in TIERS},
        "docs": {t: {i: dict(memory.tier_doc(t).versions(i)) for i in ids} for t in TIERS},
        "state": {t: memory.tier_doc(t).encode_diff() for t in TIERS},
        "gets": [item_state(memory.get(i)) for i in ids if i in memory],
        "versions": [[item_state(v) for v in memory.versions(i)] for i in ids],
        "counts": {t: memory.count(t) for t in TIERS},
        "where": {i: sorted(memory._where[i]) for i in ids},
        "home": dict(memory._home),
        "indexed": dict(memory._indexed_tier),
        "index_rows": dict(memory._index._rows),
        "index_vectors": {
            dim: block.vectors[: block.used].tobytes()
            for dim, block in memory._index._blocks.items()
        },
        "tombstoned": {t: sorted(memory._tombstoned[t]) for t in TIERS},
        "conflicts": memory.conflicted_ids(),
        "events": event_state(memory.events.query()),
        "next_seq": memory.events.next_seq,
        "clock": (memory.clock.last, memory.clock.ceiling),
        "searches": searches,
    }


def change_state(change: Change) -> tuple[object, ...]:
    return (
        change.updates,
        event_state(change.events),
        change.ceiling_ms,
        [item_state(i) for i in change.items],
    )


# --------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=10,
)
metadata = st.one_of(
    st.none(), st.just({}), st.dictionaries(st.text(max_size=8), json_values, max_size=4)
)
string_lists = st.one_of(
    st.just(()),
    st.lists(st.text(min_size=1, max_size=12), max_size=4),
    st.lists(st.text(min_size=1, max_size=12), max_size=4).map(tuple),
)
confidences = st.one_of(
    st.floats(0.0, 1.0), st.sampled_from([0, 1]), st.sampled_from([0.0, 1.0, 0.5, 1e-300])
)


@st.composite
def embeddings(draw: st.DrawFn, dim: int) -> object:
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 300.0, 1e3]))  # f16-safe
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(dim) * scale
    if draw(st.booleans()):
        values[draw(st.integers(0, dim - 1))] = 0.0
    if draw(st.integers(0, 9)) == 0:
        values[:] = 0.0
    shape = draw(st.sampled_from(["f32", "f64", "list", "tuple"]))
    if shape == "f32":
        return values.astype(np.float32)
    if shape == "f64":
        return values
    if shape == "list":
        return values.tolist()
    return tuple(values.astype(np.float32).tolist())


@st.composite
def requests(draw: st.DrawFn, prefix: str = "n", min_size: int = 1) -> list[NewItem]:
    count = draw(st.integers(min_size, 12))
    dims = draw(st.lists(st.sampled_from([1, 3, 4, 8, 48]), min_size=1, max_size=2))
    out = []
    for i in range(count):
        embedding = None
        if draw(st.integers(0, 3)) > 0:
            embedding = draw(embeddings(draw(st.sampled_from(dims))))
        out.append(
            NewItem(
                tier=draw(st.sampled_from(TIERS)),
                content=draw(st.text(max_size=30)),
                id=f"{prefix}{i}-{draw(st.from_regex(r'[A-Za-z0-9._:@+-]{0,6}', fullmatch=True))}",
                embedding=embedding,
                metadata=draw(metadata),
                tags=draw(string_lists),
                citations=draw(string_lists),
                confidence=draw(confidences),
            )
        )
    return out


def queries_for(batches: Sequence[Sequence[NewItem]]) -> list[np.ndarray]:
    dims = sorted({len(r.embedding) for batch in batches for r in batch if r.embedding is not None})
    rng = np.random.default_rng(len(dims))
    return [rng.standard_normal(dim).astype(np.float32) for dim in dims]


# --------------------------------------------------------------------------- fast vs general


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(requests(), min_size=1, max_size=3), author=st.text(min_size=1, max_size=6))
def test_fast_path_stores_what_the_general_path_stores(
    batches: list[list[NewItem]], author: str
) -> None:
    batches = [
        [dataclasses.replace(r, id=f"b{b}-{r.id}") for r in batch]
        for b, batch in enumerate(batches)
    ]
    fast, general = make_memory(node_id=author), make_memory(fast=False, node_id=author)
    taken = spy_fast_path(fast)
    for offset, batch in enumerate(batches):
        mine = fast.put_many(batch, NOW + offset)
        theirs = general.put_many(batch, NOW + offset)
        assert change_state(mine) == change_state(theirs)
        for item in mine.items:  # the stored record is byte for byte to_record(item)
            assert fast.tier_doc(item.tier).versions(item.id) == {author: to_record(item)}
    assert taken == [True] * len(batches)
    queries = queries_for(batches)
    assert memory_state(fast, queries) == memory_state(general, queries)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=requests(min_size=2))
def test_a_batch_equals_the_same_items_put_one_by_one(batch: list[NewItem]) -> None:
    together, one_by_one = make_memory(), make_memory(fast=False)
    together.put_many(batch, NOW)
    for request in batch:
        one_by_one.put(request, NOW)
    queries = queries_for([batch])
    mine, theirs = memory_state(together, queries), memory_state(one_by_one, queries)
    for state in (mine, theirs):
        del state["state"]  # the Yjs encodings differ: one transaction versus many
    assert mine == theirs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=requests(prefix="a"), second=requests(prefix="a"), seed=st.integers(0, 2**16))
def test_batches_with_known_or_repeated_ids_take_the_general_path(
    first: list[NewItem], second: list[NewItem], seed: int
) -> None:
    """Ids already stored, deleted or repeated in a batch: both memories agree throughout."""
    rng = np.random.default_rng(seed)
    second = [*second, second[int(rng.integers(len(second)))]]  # a repeated id
    fast, general = make_memory(), make_memory(fast=False)
    taken = spy_fast_path(fast)
    victim = first[int(rng.integers(len(first)))].id
    for memory in (fast, general):
        memory.put_many(first, NOW)
        if victim in memory:
            memory.delete(victim, NOW + 1)
        memory.put_many(second, NOW + 2)
    assert taken == [True, False]
    queries = queries_for([first, second])
    assert memory_state(fast, queries) == memory_state(general, queries)


def test_a_new_id_after_its_tombstone_was_collected_takes_the_fast_path() -> None:
    fast, general = make_memory(), make_memory(fast=False)
    taken = spy_fast_path(fast)
    request = NewItem("L2", "hello", "x1", embedding=[1.0, 2.0], tags=["t"])
    for memory in (fast, general):
        memory.put(request, NOW)
        memory.delete("x1", NOW + 1)
        memory.collect_tombstones(NOW + 10**12)
        memory.put(request, NOW + 10**12 + 1)
    assert taken == [True, True]
    queries = [np.array([1.0, 0.5], dtype=np.float32)]
    assert memory_state(fast, queries) == memory_state(general, queries)


# --------------------------------------------------------------------------- validation

GOOD = NewItem("L1", "fine", "good-1", embedding=[0.5, -0.5, 1.0])
BAD_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("tier", {"tier": "L9"}),
    ("tier", {"tier": "L0"}),
    ("id", {"id": "bad id"}),
    ("id", {"id": ""}),
    ("content", {"content": b"bytes"}),
    ("content", {"content": "x" * ((1 << 20) + 1)}),
    ("content", {"content": "\ud800"}),
    ("metadata", {"metadata": {1: "x"}}),
    ("metadata", {"metadata": {"a": {2: "x"}}}),
    ("metadata", {"metadata": {"a": float("nan")}}),
    ("metadata", {"metadata": {"a": object()}}),
    ("metadata", {"metadata": ["not", "a", "mapping"]}),
    ("metadata", {"metadata": {"a": "x" * (64 << 10)}}),
    ("confidence", {"confidence": True}),
    ("confidence", {"confidence": 1.5}),
    ("confidence", {"confidence": -0.1}),
    ("confidence", {"confidence": float("nan")}),
    ("confidence", {"confidence": 10**400}),
    ("confidence", {"confidence": "0.5"}),
    ("tags", {"tags": "not-a-list"}),
    ("tags", {"tags": [""]}),
    ("tags", {"tags": [1]}),
    ("tags", {"tags": ["x"] * 257}),
    ("tags", {"tags": ["x" * 257]}),
    ("citations", {"citations": None}),
    ("embedding", {"embedding": [1.0, float("nan")]}),
    ("embedding", {"embedding": np.array([1.0, np.inf])}),
    ("embedding", {"embedding": np.array([1e300, 1.0])}),
    ("embedding", {"embedding": []}),
    ("embedding", {"embedding": [[1.0, 2.0]]}),
    ("embedding", {"embedding": np.zeros((2, 2), dtype=np.float32)}),
    ("embedding", {"embedding": ["a", "b"]}),
    ("embedding", {"embedding": np.zeros(4097, dtype=np.float32)}),
    ("embedding", {"tier": "L2", "embedding": [1.0, 70_000.0]}),
]


def _with(request: NewItem, **changes: Any) -> NewItem:
    fields = {
        "tier": request.tier,
        "content": request.content,
        "id": request.id,
        "embedding": request.embedding,
        "metadata": request.metadata,
        "tags": request.tags,
        "citations": request.citations,
        "confidence": request.confidence,
    }
    fields.update(changes)
    return NewItem(**fields)


def _outcome(memory: TieredMemory, batch: list[NewItem]) -> tuple[str, str]:
    with np.errstate(all="ignore"):
        try:
            memory.put_many(batch, NOW)
        except Exception as exc:
            return type(exc).__name__, str(exc)
    return "ok", ""


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("field", "change"), BAD_REQUESTS)
@pytest.mark.parametrize("position", [0, 2])
def test_a_bad_request_fails_the_batch_as_before(
    field: str, change: dict[str, Any], position: int
) -> None:
    batch = [
        _with(GOOD, id=f"good-{i}", embedding=[float(i), 1.0, 2.0], tier=TIERS[i % 3])
        for i in range(4)
    ]
    batch[position] = _with(batch[position], **change)
    fast, general = make_memory(), make_memory(fast=False)
    fast.put(_with(GOOD, id="before"), NOW - 5)
    general.put(_with(GOOD, id="before"), NOW - 5)
    before = memory_state(fast, [])
    outcome = _outcome(fast, batch)
    assert outcome == _outcome(general, batch)
    assert outcome[0] in {"InvalidItemError", "UnknownTierError"}, (field, outcome)
    assert memory_state(fast, []) == memory_state(general, [])
    after = memory_state(fast, [])
    # all or nothing: only the clock may have moved (it ticks while validating, as before)
    del before["clock"], after["clock"]
    assert after == before


# --------------------------------------------------------------------------- helpers in item.py


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(0, 6),
    dim=st.integers(1, 70),
    scale=st.sampled_from([0.0, 1e-38, 1e-20, 1e-3, 1.0, 6e4, 1e20, 3e38]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantise_rows_matches_the_per_row_codec(
    rows: int, dim: int, scale: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        matrix = (rng.uniform(-1, 1, (rows, dim)) * scale).astype(np.float32)
    if rows and seed % 3 == 0:
        matrix[0] = 0.0
    for codec in EmbeddingCodec:
        result = quantise_rows(matrix.copy(), codec)
        try:
            expected = [encode_embedding(row, codec) for row in matrix]
        except MemmeshError:
            assert result is None
            continue
        assert result is not None
        vectors, raw_rows = result
        assert len(vectors) == len(raw_rows) == rows
        for vector, encoded, raw in zip(vectors, raw_rows, expected, strict=True):
            assert encoded.tobytes() == raw
            assert embedding_text(encoded) == base64.b64encode(raw).decode()
            assert vector.tobytes() == decode_embedding(raw, codec, dim).tobytes()
            assert vector.dtype == np.float32 and vector.shape == (dim,)
            assert vector.base is None and not vector.flags.writeable


def test_quantise_rows_rejects_what_build_item_rejects() -> None:
    bad = np.array([[1.0, np.nan]], dtype=np.float32)
    assert quantise_rows(bad, EmbeddingCodec.F32) is None
    big = np.array([[1.0, 70_000.0]], dtype=np.float32)
    assert quantise_rows(big.copy(), EmbeddingCodec.F16) is None
    assert quantise_rows(big.copy(), EmbeddingCodec.I8) is not None


@settings(max_examples=150, deadline=None)
@given(batch=requests())
def test_live_record_text_is_to_record(batch: list[NewItem]) -> None:
    memory = make_memory(fast=False, node_id='n\u00e9"\\/\x01')
    with np.errstate(all="ignore"):
        items = memory.put_many(batch, NOW).items
    for item in items:
        meta_json = json.dumps(
            item.metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        text = None
        if item.embedding is not None:
            text = base64.b64encode(encode_embedding(item.embedding, item.codec)).decode()
        assert live_record_text(item, meta_json, text) == to_record(item)
        stamp = item.updated.encode()
        assert live_record_text(item, meta_json, text, created=stamp, updated=stamp) == (
            to_record(item)
        )


# --------------------------------------------------------------------------- index


def _index_state(index: VectorIndex) -> tuple[object, ...]:
    """Everything a search can see; capacity beyond the used rows is an allocation detail."""
    return (
        dict(index._rows),
        dict(index._tier_codes),
        {
            dim: (
                b.vectors[: b.used].tobytes(),
                b.live[: b.used].tobytes(),
                b.tiers[: b.used].tobytes(),
                list(b.keys[: b.used]),
                list(b.free),
                b.used,
                b.count,
            )
            for dim, b in index._blocks.items()
        },
    )


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(1, 40),
    steps=st.lists(
        st.tuples(st.integers(0, 80), st.integers(0, 30), st.booleans()), min_size=1, max_size=5
    ),
)
def test_upsert_many_matches_upsert_row_by_row(
    seed: int, dim: int, steps: list[tuple[int, int, bool]]
) -> None:
    rng = np.random.default_rng(seed)
    many, single = VectorIndex(), VectorIndex()
    next_id = 0
    for count, removals, reuse in steps:
        scales = rng.choice([0.0, 1e-30, 1e-3, 1.0, 1e30], size=(count, 1))
        matrix = (rng.standard_normal((count, dim)) * scales).astype(np.float32)
        if reuse and next_id:  # some keys already present: replaced in place
            ids = [f"i{int(k)}" for k in rng.integers(0, next_id, count)]
        else:
            ids = [f"i{next_id + k}" for k in range(count)]
            next_id += count
        tiers = [TIERS[int(t)] for t in rng.integers(0, 3, count)]
        many.upsert_many(tiers, ids, matrix)
        for tier, item_id, row in zip(tiers, ids, matrix, strict=True):
            single.upsert(tier, item_id, row)
        assert _index_state(many) == _index_state(single)
        for key in list(single._rows)[:removals]:
            many.remove(*key)
            single.remove(*key)
    query = rng.standard_normal(dim).astype(np.float32)
    if float(np.abs(query).max()) > 0:
        assert many.search(query, k=7) == single.search(query, k=7)


def test_normalised_rows_are_bit_identical_to_normalise() -> None:
    rng = np.random.default_rng(3)
    for dim in (1, 2, 3, 7, 64, 384, 1000, 4096):
        matrix = (rng.standard_normal((50, dim)) * rng.choice([1e-30, 1.0, 1e30], (50, 1))).astype(
            np.float32
        )
        index = VectorIndex()
        index.upsert_many("L1", [f"k{i}" for i in range(50)], matrix)
        block = index._blocks[dim]
        for i, row in enumerate(matrix):
            assert block.vectors[i].tobytes() == _normalise(row, "v")[0].tobytes()


def test_upsert_many_refuses_bad_input_and_stores_nothing() -> None:
    index = VectorIndex()
    with pytest.raises(ValueError, match="2-D"):
        index.upsert_many("L1", ["a"], np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="one non-empty row per id"):
        index.upsert_many("L1", ["a", "b"], np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="tiers"):
        index.upsert_many(["L1"], ["a", "b"], np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.upsert_many("L1", ["a"], np.array([[1.0, np.nan]], dtype=np.float32))
    index.upsert_many("L1", [], np.zeros((0, 3), dtype=np.float32))
    assert len(index) == 0 and index.dimensions() == ()


# --------------------------------------------------------------------------- events, merkle, tier

event_fields = st.tuples(
    st.text(max_size=8),
    st.integers(0, 10**6),
    st.text(min_size=1, max_size=4).filter(lambda t: "/" not in t),
    st.text(max_size=6).filter(lambda t: "/" not in t),
    st.text(max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 8),
    retention=st.one_of(st.none(), st.integers(0, 10**5)),
    batches=st.lists(st.lists(event_fields, max_size=10), max_size=4),
    origin=st.sampled_from(["local", "remote"]),
)
def test_append_many_matches_append(
    capacity: int,
    retention: int | None,
    batches: list[list[tuple[str, int, str, str, str]]],
    origin: str,
) -> None:
    many = EventLog(capacity=capacity, retention_ms=retention)
    single = EventLog(capacity=capacity, retention_ms=retention)
    for batch in batches:
        got = many.append_many(kind=EventKind.PUT, origin=origin, entries=batch)
        expected = [
            single.append(
                hlc=h, wall_ms=w, tier=t, item_id=i, kind=EventKind.PUT, origin=origin, author=a
            )
            for h, w, t, i, a in batch
        ]
        assert got == expected
        assert [e.to_json() for e in many.query()] == [e.to_json() for e in single.query()]
        for attr in ("first_seq", "last_seq", "next_seq"):
            assert getattr(many, attr) == getattr(single, attr)
        assert len(many) == len(single)
        assert many._addr == single._addr and many._head == single._head


@settings(max_examples=200, deadline=None)
@given(
    fields=event_fields,
    seq=st.integers(1, 2**70),
    kind=st.sampled_from(list(EventKind)),
    detail=st.one_of(
        st.just({}),
        st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(), st.floats())),
    ),
)
def test_event_json_text_is_json_dumps(
    fields: tuple[str, int, str, str, str], seq: int, kind: EventKind, detail: dict[str, object]
) -> None:
    hlc, wall_ms, tier, item_id, author = fields
    event = MemoryEvent(seq, hlc, wall_ms, tier, item_id, kind, "local", author, detail)
    assert event.to_json_text() == json.dumps(event.to_json(), separators=(",", ":"))


@settings(max_examples=100, deadline=None)
@given(
    batch=st.lists(
        st.tuples(
            event_fields,
            st.integers(1, 2**70),
            st.sampled_from(list(EventKind)),
            st.sampled_from(["local", "remote"]),
            st.one_of(st.just({}), st.dictionaries(st.text(max_size=3), st.integers())),
        ),
        max_size=8,
    )
)
def test_event_json_rows_are_each_events_json_text(
    batch: list[tuple[tuple[str, int, str, str, str], int, EventKind, str, dict[str, object]]],
) -> None:
    events = [
        MemoryEvent(seq, hlc, wall_ms, tier, item_id, kind, origin, author, detail)
        for (hlc, wall_ms, tier, item_id, author), seq, kind, origin, detail in batch
    ]
    rows = MemoryEvent.json_rows(events)
    assert rows == [(event.seq, event.to_json_text()) for event in events]


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "\u00e9", "x" * 40]),
            st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
        ),
        max_size=12,
    ),
    split=st.integers(0, 12),
)
def test_merkle_set_many_matches_set(entries: list[tuple[str, bytes | None]], split: int) -> None:
    many, single = MerkleDigest(), MerkleDigest()
    many.set_many(entries[:split])
    many.set_many(entries[split:])
    for item_id, content_hash in entries:
        single.set(item_id, content_hash)
    assert many.root() == single.root()
    assert many._items == single._items and many._buckets == single._buckets
    assert many.interior() == single.interior()


def test_tier_write_produces_the_updates_of_plain_map_sets() -> None:
    """The direct insert is the operation Map.__setitem__ performs: same Yjs bytes."""
    tier = TierDoc("L1", client_id=99)
    doc: Doc[Any] = Doc(client_id=99)
    root: Map[Any] = doc.get("items", type=Map)
    plain: list[bytes] = []
    doc.observe(lambda event: plain.append(bytes(event.update)))
    first = [(f"id{i}", "w", f"record {i} \u00e9") for i in range(5)]
    update = tier.write(first)
    with doc.transaction():
        for item_id, writer, record in first:
            root[f"{item_id}/{writer}"] = record
    assert update == plain[-1]
    second = [("id1", "w", "again"), ("id2", "w", None), ("id9", "v", "new")]
    update = tier.write(second)
    with doc.transaction():
        root["id1/w"] = "again"
        del root["id2/w"]
        root["id9/v"] = "new"
    assert update == plain[-1]
    assert tier.encode_diff() == bytes(doc.get_update())
    assert dict(tier.versions("id1")) == {"w": "again"} and "id2" not in tier


def test_tier_still_sees_remote_changes_after_local_writes() -> None:
    a, b = TierDoc("L1", client_id=1), TierDoc("L1", client_id=2)
    update = a.write([("x", "na", "one")])
    assert update is not None
    assert b.apply_update(update) == {"x"}
    b_update = b.write([("y", "nb", "two")])
    assert b_update is not None
    assert a.apply_update(b_update) == {"y"}
    assert dict(a.versions("y")) == {"nb": "two"}


def test_content_hash_of_one_version_is_unchanged() -> None:
    tier = TierDoc("L1", client_id=5)
    tier.write([("x", "writer", "record \u00e9")])
    h = hashlib.sha256()
    for part in (b"writer", b"\0", "record \u00e9".encode(), b"\n"):
        h.update(part)
    assert tier.content_hash("x") == h.digest()


def test_fast_path_keeps_float_confidence_and_fresh_metadata() -> None:
    memory = make_memory()
    meta = {"a": (1, 2), "b": {"c": [1.5]}}
    (item,) = memory.put_many([NewItem("L1", "c", "m1", metadata=meta, confidence=1)], NOW).items
    assert item.metadata == {"a": [1, 2], "b": {"c": [1.5]}}
    assert item.metadata is not meta and item.metadata["b"] is not meta["b"]
    assert type(item.confidence) is float and item.confidence == 1.0
    assert math.isclose(memory.get("m1").confidence, 1.0)


def test_big_batches_cross_the_chunk_boundaries_unchanged() -> None:
    """Wide embeddings are quantised and indexed a chunk of rows at a time."""
    rng = np.random.default_rng(11)
    dim = 4096  # 32 rows per chunk
    batch = [
        NewItem(
            TIERS[int(rng.integers(3)) if i % 5 else 0],
            f"item {i}",
            f"w{i}",
            embedding=rng.standard_normal(dim).astype(np.float32) * 100,
            tags=[f"t{i % 3}"],
        )
        for i in range(150)
    ]
    batch += [NewItem("L1", f"one tier {i}", f"s{i}", embedding=[float(i), 1.0]) for i in range(70)]
    fast, general = make_memory(), make_memory(fast=False)
    taken = spy_fast_path(fast)
    assert change_state(fast.put_many(batch, NOW)) == change_state(general.put_many(batch, NOW))
    assert taken == [True]
    queries = [rng.standard_normal(dim).astype(np.float32), np.array([1.0, 2.0], np.float32)]
    assert memory_state(fast, queries) == memory_state(general, queries)


def test_upsert_many_in_chunks_matches_upsert() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((300, 2048)).astype(np.float32)  # 64 rows per chunk
    many, single = VectorIndex(), VectorIndex()
    ids = [f"k{i}" for i in range(300)]
    many.upsert_many("L2", ids, matrix)
    for item_id, row in zip(ids, matrix, strict=True):
        single.upsert("L2", item_id, row)
    assert _index_state(many) == _index_state(single)


@pytest.mark.parametrize("field", ["tags", "citations"])
def test_a_lone_surrogate_in_a_list_field_is_refused_and_writes_nothing(field: str) -> None:
    memory = make_memory()
    good = NewItem("L1", "fine", "ok-1")
    bad = dataclasses.replace(NewItem("L1", "bad", "bad-1"), **{field: ["ok", "x\ud800"]})
    with pytest.raises(MemmeshError, match="lone surrogate"):
        memory.put_many([good, bad], NOW)
    assert "ok-1" not in memory and "bad-1" not in memory
    assert memory.tier_doc("L1").encode_diff() == make_memory().tier_doc("L1").encode_diff()
