"""Property tests for memory items: record round trips and robust decoding of bad records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.codecs import EmbeddingCodec
from crdt.errors import CorruptRecordError
from crdt.hlc import Timestamp
from crdt.item import (
    REPLICATED_TIERS,
    Limits,
    MemoryItem,
    build_item,
    content_hash_of,
    from_record,
    to_record,
    tombstone,
)

timestamps = st.builds(
    Timestamp, wall_ms=st.integers(0, 10**15 - 1), logical=st.integers(0, 999_999)
)
item_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}", fullmatch=True)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=10), json_values, max_size=5))
strings = st.lists(st.text(min_size=1, max_size=20), max_size=6)
embeddings = st.one_of(
    st.none(),
    st.lists(st.floats(-1000, 1000, width=32), min_size=1, max_size=32),
    st.builds(
        lambda dim, seed: np.random.default_rng(seed).standard_normal(dim).astype(np.float32),
        st.integers(1, 4096),
        st.integers(0, 2**32 - 1),
    ),
)


@st.composite
def items(draw: st.DrawFn) -> MemoryItem:
    item = build_item(
        item_id=draw(item_ids),
        tier=draw(st.sampled_from(REPLICATED_TIERS)),
        content=draw(st.text(max_size=200)),
        embedding=draw(embeddings),
        metadata=draw(metadata),
        tags=draw(strings),
        citations=draw(strings),
        confidence=draw(st.floats(0.0, 1.0)),
        created=draw(timestamps),
        updated=draw(timestamps),
        author=draw(st.text(max_size=20)),
        codec=draw(st.sampled_from(list(EmbeddingCodec))),
        limits=Limits(),
    )
    if draw(st.booleans()):
        return item
    moved_to = draw(st.one_of(st.none(), st.sampled_from(REPLICATED_TIERS)))
    return tombstone(
        item, updated=draw(timestamps), author=draw(st.text(max_size=20)), moved_to=moved_to
    )


@settings(max_examples=200)
@given(items())
def test_record_round_trip_gives_equal_item(item: MemoryItem) -> None:
    record = to_record(item)
    back = from_record(item.id, item.tier, record)
    assert back == item
    assert to_record(back) == record
    assert back.id == item.id and back.tier == item.tier
    assert back.content == item.content
    assert back.content_hash == item.content_hash == content_hash_of(item.content)
    assert back.metadata == item.metadata
    assert back.tags == item.tags and back.citations == item.citations
    assert back.confidence == item.confidence
    assert (back.created, back.updated, back.author) == (item.created, item.updated, item.author)
    assert (back.deleted, back.moved_to) == (item.deleted, item.moved_to)
    if item.embedding is None:
        assert back.embedding is None
    else:
        assert back.codec is item.codec
        assert back.embedding is not None
        assert back.embedding.tobytes() == item.embedding.tobytes()


@given(st.text())
def test_content_hash_is_sha256(content: str) -> None:
    assert content_hash_of(content) == hashlib.sha256(content.encode("utf-8")).hexdigest()


def decode_or_corrupt(record: str) -> MemoryItem | None:
    """Decode; only CorruptRecordError may escape as a failure. Decoded items re-encode."""
    try:
        item = from_record("item-1", "L1", record)
    except CorruptRecordError:
        return None
    # Anything accepted is a well-formed item that can be written back unchanged.
    again = to_record(item)
    assert from_record("item-1", "L1", again) == item
    assert isinstance(item.content, str)
    assert all(isinstance(t, str) for t in item.tags + item.citations)
    assert 0.0 <= item.confidence <= 1.0
    return item


@given(st.text())
def test_arbitrary_text_only_raises_corrupt_record(text: str) -> None:
    decode_or_corrupt(text)


@given(st.from_regex(r"\{.*\}", fullmatch=True))
def test_arbitrary_braced_text_only_raises_corrupt_record(text: str) -> None:
    decode_or_corrupt(text)


anything_json = st.one_of(
    json_values,
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, -(10**30)]),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=200)
@given(items(), st.data())
def test_mutated_records_only_raise_corrupt_record(item: MemoryItem, data: st.DataObject) -> None:
    record = to_record(item)
    mutation = data.draw(st.sampled_from(["truncate", "char", "field", "drop", "insert"]))
    if mutation == "truncate":
        cut = data.draw(st.integers(0, len(record) - 1))
        mutated = record[:cut]
        assert decode_or_corrupt(mutated) is None
        return
    if mutation == "char":
        pos = data.draw(st.integers(0, len(record) - 1))
        char = data.draw(st.characters())
        mutated = record[:pos] + char + record[pos + 1 :]
    elif mutation == "insert":
        pos = data.draw(st.integers(0, len(record)))
        mutated = record[:pos] + data.draw(st.text(max_size=5)) + record[pos:]
    else:
        raw: dict[str, Any] = json.loads(record)
        key = data.draw(
            st.sampled_from(
                [*sorted(raw), "embedding", "codec", "dim", "deleted", "moved_to", "unexpected"]
            )
        )
        if mutation == "drop":
            raw.pop(key, None)
        else:
            raw[key] = data.draw(anything_json)
        mutated = json.dumps(raw)
    decode_or_corrupt(mutated)
