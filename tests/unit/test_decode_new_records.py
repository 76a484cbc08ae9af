"""A reference batch decode of a sync slice, and the scan, equal `from_record` per record.

Records of every shape (live, embedded with each codec, tombstones, moved) and mutated
records (bad JSON, wrong types, missing or extra keys, bad base64, non-finite vectors,
whitespace) go through both; wherever the batch decode answers, its item must be the one
`from_record` returns, field by field, and it must answer None wherever `from_record`
raises. The memory-level equivalence (records, digests, index, events) is in
tests/unit/test_apply_remote_fast.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.codecs import EmbeddingCodec, FloatVector
from crdt.errors import CorruptRecordError
from crdt.hlc import Timestamp
from crdt.item import (
    Limits,
    MemoryItem,
    _decode_rows,
    _json_live_fields,
    build_item,
    from_record,
    new_live_item,
    scan_live_records,
    to_record,
    tombstone,
)


# The batch decode `apply_remote` used before `scan_live_records` (PERFORMANCE.md section
# 7), kept here as the reference the scan is held to: built on the scan's own JSON checks.
def decode_new_records(tier: str, entries: Iterable[tuple[str, str]]) -> list[MemoryItem | None]:
    """Decode `(item_id, record)` pairs as `from_record` does, embeddings in one pass.

    Entry i gives `from_record(item_id, tier, record)` for a live, unmoved record of the
    shape `live_record_text` writes, else None (then call `from_record`).
    """
    out: list[MemoryItem | None] = []
    ids: list[str] = []
    fields: list[tuple[Any, ...] | None] = []
    groups: dict[tuple[EmbeddingCodec, int], list[tuple[int, bytes]]] = {}
    stamps: dict[str, Timestamp] = {}
    for index, (item_id, record) in enumerate(entries):
        out.append(None)
        ids.append(item_id)
        values = _json_live_fields(record, stamps)
        fields.append(values)
        if values is not None and values[11] is not None:
            groups.setdefault((values[9], values[10]), []).append((index, values[11]))
    vectors: dict[int, FloatVector] = {}
    for (codec, dim), rows in groups.items():
        matrix = _decode_rows(codec, dim, b"".join(data for _index, data in rows))
        finite: list[bool] = np.isfinite(matrix).all(axis=1).tolist()  # type: ignore[assignment]
        for (index, _data), row, ok in zip(rows, matrix, finite, strict=True):
            if ok:
                vector = row.copy()
                vector.flags.writeable = False
                vectors[index] = vector
            else:
                fields[index] = None  # from_record refuses it
    for index, (item_id, values) in enumerate(zip(ids, fields, strict=True)):
        if values is None:
            continue
        content, content_hash, metadata, tags, citations, confidence = values[:6]
        created, updated, author, codec = values[6:10]
        out[index] = new_live_item(
            item_id, tier, content, content_hash, vectors.get(index), metadata, tags,
            citations, confidence, created, updated, author, codec,
        )  # fmt: skip
    return out


TIER = "L3"
TEXT = st.text(max_size=12)
JSON_SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def items(draw: st.DrawFn) -> MemoryItem:
    """A valid stored version: live or tombstone, with or without an embedding."""
    codec = draw(st.sampled_from(list(EmbeddingCodec)))
    dim = draw(st.integers(1, 12))
    embedding = None
    if draw(st.booleans()):
        scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 100.0]))
        seed = draw(st.integers(0, 2**16))
        embedding = (np.random.default_rng(seed).standard_normal(dim) * scale).astype(np.float32)
    wall = draw(st.integers(0, 10**15 - 1))
    created = Timestamp(wall, draw(st.integers(0, 999_999)))
    updated = draw(st.sampled_from([created, Timestamp(wall + 1, 0)]))
    item = build_item(
        item_id=draw(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)),
        tier=TIER,
        content=draw(TEXT),
        embedding=embedding,
        metadata=draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3)),
        tags=draw(st.lists(st.text(min_size=1, max_size=5), max_size=3)),
        citations=draw(st.lists(st.text(min_size=1, max_size=5), max_size=2)),
        confidence=draw(st.sampled_from([0, 1, 0.5, 0.25, 1.0, 0.0])),
        created=created,
        updated=updated,
        author=draw(st.sampled_from(["a", "node-b", "ü"])),
        codec=codec,
        limits=Limits(),
    )
    shape = draw(st.sampled_from(["live", "live", "dead", "moved"]))
    if shape == "dead":
        return tombstone(item, updated=Timestamp(wall + 2, 0), author="x")
    if shape == "moved":
        return tombstone(item, updated=Timestamp(wall + 2, 0), author="x", moved_to="L1")
    return item


MUTATIONS = [
    "none", "drop_key", "extra_key", "wrong_type", "bad_json", "spaces", "bad_base64",
    "nan_vector", "bad_dim", "bad_codec", "bad_stamp", "nan_confidence", "array",
]  # fmt: skip


def mutate(record: str, how: str, draw: st.DrawFn) -> str:
    """Return `record` changed in one way (most of them make it corrupt)."""
    raw: dict[str, Any] = json.loads(record)
    keys = sorted(raw)
    if how == "drop_key":
        raw.pop(draw(st.sampled_from(keys)))
    elif how == "extra_key":
        raw[draw(st.sampled_from(["zz", "deleted", "moved_to", "codec"]))] = draw(JSON_VALUES)
    elif how == "wrong_type":
        raw[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    elif how == "bad_json":
        cut = draw(st.integers(0, len(record)))
        return record[:cut] + draw(st.sampled_from(["", "}", ",", "x", "NaN"])) + record[cut:]
    elif how == "spaces":
        return draw(st.sampled_from([" ", "", "\n"])) + record + draw(st.sampled_from([" ", ""]))
    elif how == "bad_base64" and "embedding" in raw:
        text = raw["embedding"]
        raw["embedding"] = draw(st.sampled_from([text[:-1], text + "=", "!" + text[1:], "é"]))
    elif how == "nan_vector" and raw.get("codec") == "f32":
        return record.replace('"embedding":"', '"embedding":"AADAf', 1).replace(
            f'"dim":{raw["dim"]}', f'"dim":{raw["dim"]}', 1
        )
    elif how == "bad_dim" and "dim" in raw:
        raw["dim"] = draw(st.sampled_from([0, -1, raw["dim"] + 1, True, 5000, 1.0]))
    elif how == "bad_codec":
        raw["codec"] = draw(st.sampled_from(["f64", "", 1, None]))
    elif how == "bad_stamp":
        raw[draw(st.sampled_from(["created", "updated"]))] = draw(
            st.sampled_from(["1.2", "000000000000001.00000a", "\u0660" * 15 + ".000000", 5])
        )
    elif how == "nan_confidence":
        raw["confidence"] = draw(st.sampled_from([float("nan"), 1.5, -0.0, True, 2**70]))
    elif how == "array":
        return "[" + record + "]"
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def same(a: MemoryItem, b: MemoryItem) -> bool:
    """Compare every field, the embedding's bytes, dtype, ownership and read-only flag."""
    for name in MemoryItem.__slots__:  # type: ignore[attr-defined]
        x, y = getattr(a, name), getattr(b, name)
        if name == "embedding":
            if (x is None) != (y is None):
                return False
            if x is not None and not (
                x.dtype == y.dtype
                and x.shape == y.shape
                and x.tobytes() == y.tobytes()
                and not x.flags.writeable
                and x.flags.owndata
                and x.flags.c_contiguous
            ):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_batch_decode_equals_from_record(data: st.DataObject) -> None:
    entries = []
    for item in data.draw(st.lists(items(), min_size=1, max_size=8)):
        how = data.draw(st.sampled_from(MUTATIONS))
        entries.append((item.id, mutate(to_record(item), how, data.draw)))
    decoded = decode_new_records(TIER, entries)
    assert len(decoded) == len(entries)
    for (item_id, record), got in zip(entries, decoded, strict=True):
        try:
            expected = from_record(item_id, TIER, record)
        except CorruptRecordError:
            assert got is None, record
            continue
        assert got is None or same(got, expected), record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_scan_accepts_what_the_batch_decode_decodes(data: st.DataObject) -> None:
    records = []
    for item in data.draw(st.lists(items(), min_size=1, max_size=8)):
        how = data.draw(st.sampled_from(MUTATIONS))
        records.append((item.id, mutate(to_record(item), how, data.draw)))
    decoded = decode_new_records(TIER, records)
    scan = scan_live_records(record for _item_id, record in records)
    assert scan.positions == [i for i, got in enumerate(decoded) if got is not None]
    expected = [decoded[i] for i in scan.positions]
    assert scan.updated == [got.updated.encode() for got in expected if got is not None]
    assert scan.authors == [got.author for got in expected if got is not None]
    rows = {
        i: row for indices, matrix in scan.vectors for i, row in zip(indices, matrix, strict=True)
    }
    for i in scan.positions:
        vector = decoded[i].embedding  # type: ignore[union-attr]
        if vector is None:
            assert i not in rows
        else:
            assert rows[i].dtype == vector.dtype and rows[i].tobytes() == vector.tobytes()


def test_common_records_take_the_batch_path() -> None:
    rows = np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32)
    entries = []
    for i, codec in enumerate(list(EmbeddingCodec) * 10):
        item = build_item(
            item_id=f"i{i}", tier=TIER, content=f"c{i}", embedding=rows[i],
            metadata={"k": [i]} if i % 2 else None, tags=("t",), citations=(),
            confidence=0.5, created=Timestamp(5, i), updated=Timestamp(5, i), author="a",
            codec=codec, limits=Limits(),
        )  # fmt: skip
        entries.append((item.id, to_record(item)))
    entries.append(("n", to_record(tombstone(item, updated=Timestamp(9, 0), author="a"))))
    decoded = decode_new_records(TIER, entries)
    assert all(got is not None for got in decoded[:-1])
    assert decoded[-1] is None  # tombstones are left to from_record
    for (item_id, record), got in zip(entries[:-1], decoded[:-1], strict=True):
        assert got is not None and same(got, from_record(item_id, TIER, record))


def test_a_non_finite_vector_is_left_to_from_record() -> None:
    good = build_item(
        item_id="ok", tier=TIER, content="c", embedding=np.ones(4, np.float32), metadata=None,
        tags=(), citations=(), confidence=1.0, created=Timestamp(1, 0), updated=Timestamp(1, 0),
        author="a", codec=EmbeddingCodec.F32, limits=Limits(),
    )  # fmt: skip
    record = to_record(good)
    raw = json.loads(record)
    raw["embedding"] = base64.b64encode(np.array([1, np.nan, 2, 3], "<f4").tobytes()).decode()
    bad = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    decoded = decode_new_records(TIER, [("ok", record), ("bad", bad)])
    assert decoded[0] is not None and same(decoded[0], from_record("ok", TIER, record))
    assert decoded[1] is None
