"""Unit tests for memory item validation, hashing and the record encoding."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

import numpy as np
import pytest

from crdt.codecs import MAX_DIM, EmbeddingCodec, decode_embedding, encode_embedding
from crdt.errors import CorruptRecordError, InvalidItemError, MemmeshError, UnknownTierError
from crdt.hlc import Timestamp
from crdt.item import (
    Limits,
    MemoryItem,
    build_item,
    check_item_id,
    check_tier,
    content_hash_of,
    from_record,
    to_record,
    tombstone,
)

T1 = Timestamp(1_700_000_000_000, 0)
T2 = Timestamp(1_700_000_000_500, 3)


def make(**overrides: Any) -> MemoryItem:
    """Build an item from valid defaults, with some fields replaced."""
    fields: dict[str, Any] = {
        "item_id": "note-1",
        "tier": "L2",
        "content": "the sky is blue",
        "embedding": [0.25, -0.5, 1.0],
        "metadata": {"source": "chat", "n": 3},
        "tags": ["colour", "sky"],
        "citations": ["doc:1"],
        "confidence": 0.8,
        "created": T1,
        "updated": T2,
        "author": "node-a",
        "codec": EmbeddingCodec.F32,
        "limits": Limits(),
    }
    fields.update(overrides)
    return build_item(**fields)


def record_dict(item: MemoryItem) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(to_record(item))
    return out


# --- build_item: valid input ------------------------------------------------------------


def test_build_item_keeps_fields() -> None:
    item = make()
    assert item.id == "note-1"
    assert item.tier == "L2"
    assert item.content == "the sky is blue"
    assert item.content_hash == hashlib.sha256(b"the sky is blue").hexdigest()
    assert item.embedding is not None
    assert item.embedding.dtype == np.float32
    assert item.embedding.tolist() == [0.25, -0.5, 1.0]
    assert item.metadata == {"source": "chat", "n": 3}
    assert item.tags == ("colour", "sky")
    assert item.citations == ("doc:1",)
    assert item.confidence == 0.8
    assert isinstance(item.confidence, float)
    assert (item.created, item.updated, item.author) == (T1, T2, "node-a")
    assert item.deleted is False
    assert item.moved_to is None
    assert item.order_key == (T2, "node-a")


def test_build_item_defaults_and_accepted_variants() -> None:
    item = make(embedding=None, metadata=None, tags=(), citations=iter([]), confidence=1)
    assert item.embedding is None
    assert item.metadata == {}
    assert item.tags == ()
    assert item.citations == ()
    assert item.confidence == 1.0
    assert make(confidence=0).confidence == 0.0
    assert make(item_id="a" * 128).id == "a" * 128
    assert make(item_id="A0._:@+-x").id == "A0._:@+-x"
    assert make(content="").content_hash == hashlib.sha256(b"").hexdigest()


def test_build_item_embedding_is_read_only_copy() -> None:
    source = np.array([1.0, 2.0], dtype=np.float32)
    item = make(embedding=source)
    source[0] = 99.0
    assert item.embedding is not None
    assert item.embedding.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        item.embedding[0] = 5.0


def test_build_item_metadata_is_canonical_copy() -> None:
    meta: dict[str, Any] = {"b": [1, (2, 3)], "a": {"x": None}}
    item = make(metadata=meta)
    meta["b"].append(4)
    meta["c"] = 1
    assert item.metadata == {"a": {"x": None}, "b": [1, [2, 3]]}


@pytest.mark.parametrize("codec", [EmbeddingCodec.F16, EmbeddingCodec.I8])
def test_build_item_stores_what_readers_will_see(codec: EmbeddingCodec) -> None:
    raw = np.array([0.1234567, -0.98765, 0.5, 0.001], dtype=np.float32)
    item = make(embedding=raw, codec=codec)
    expected = decode_embedding(encode_embedding(raw, codec), codec, 4)
    assert item.embedding is not None
    assert item.embedding.tobytes() == expected.tobytes()
    assert item.codec is codec


@pytest.mark.parametrize("content", ["", "hello", "ünïcødé ✓ 𝄞", "a\x00b", "x" * 5000])
def test_content_hash_is_sha256_of_utf8(content: str) -> None:
    expected = hashlib.sha256(content.encode("utf-8")).hexdigest()
    assert content_hash_of(content) == expected
    assert make(content=content).content_hash == expected


def test_content_limit_is_in_bytes() -> None:
    limits = Limits(max_content_bytes=10)
    assert make(content="x" * 10, limits=limits).content == "x" * 10
    assert make(content="é" * 5, limits=limits).content == "é" * 5  # exactly 10 bytes
    with pytest.raises(InvalidItemError):
        make(content="x" * 11, limits=limits)
    with pytest.raises(InvalidItemError):
        make(content="é" * 6, limits=limits)  # 6 chars, 12 bytes


def test_default_content_limit_is_one_mebibyte() -> None:
    assert len(make(content="x" * (1 << 20)).content) == 1 << 20
    with pytest.raises(InvalidItemError):
        make(content="x" * ((1 << 20) + 1))


def test_metadata_limit() -> None:
    limits = Limits(max_metadata_bytes=20)
    make(metadata={"k": "x" * 12}, limits=limits)  # {"k":"xxxxxxxxxxxx"} is 20 bytes
    with pytest.raises(InvalidItemError):
        make(metadata={"k": "x" * 13}, limits=limits)


def test_tag_count_and_length_limits() -> None:
    limits = Limits(max_tags=2, max_tag_chars=3)
    make(tags=["a", "abc"], citations=["x", "y"], limits=limits)
    for bad in (["a", "b", "c"], ["abcd"]):
        with pytest.raises(InvalidItemError):
            make(tags=bad, limits=limits)
        with pytest.raises(InvalidItemError):
            make(citations=bad, limits=limits)


def test_embedding_dimension_limit_is_configurable() -> None:
    make(embedding=[0.0] * 4, limits=Limits(max_dim=4))
    with pytest.raises(InvalidItemError):
        make(embedding=[0.0] * 5, limits=Limits(max_dim=4))


# --- build_item: invalid input ----------------------------------------------------------

NESTED_TOO_DEEP: dict[str, Any] = {}
_node = NESTED_TOO_DEEP
for _ in range(5_000):
    _node["a"] = {}
    _node = _node["a"]

BAD_FIELDS: list[tuple[str, object]] = [
    # ids
    ("item_id", ""),
    ("item_id", "a/b"),
    ("item_id", "a" * 129),
    ("item_id", "-leading-dash"),
    ("item_id", ".hidden"),
    ("item_id", "has space"),
    ("item_id", "tab\t"),
    ("item_id", "new\nline"),
    ("item_id", "ünï"),
    ("item_id", None),
    ("item_id", 42),
    ("item_id", b"bytes"),
    # content
    ("content", None),
    ("content", 42),
    ("content", b"bytes"),
    ("content", ["text"]),
    ("content", "x" * ((1 << 20) + 1)),
    ("content", "lone surrogate \ud800"),
    # embedding
    ("embedding", [float("nan"), 1.0]),
    ("embedding", [float("inf")]),
    ("embedding", []),
    ("embedding", [[1.0, 2.0]]),
    ("embedding", [0.0] * (MAX_DIM + 1)),
    ("embedding", "1,2,3"),
    ("embedding", {"x": 1.0}),
    ("embedding", [10**400]),
    # metadata
    ("metadata", {1, 2}),
    ("metadata", {"a": {1, 2}}),
    ("metadata", {"a": float("nan")}),
    ("metadata", {"a": [float("inf")]}),
    ("metadata", {1: "x"}),
    ("metadata", {None: "x"}),
    ("metadata", {("a", "b"): 1}),
    ("metadata", {"a": {("t",): 1}}),
    ("metadata", {"a": {1: "x", "b": 2}}),
    ("metadata", {"a": {1: "x"}}),
    ("metadata", {"a": [{"ok": 1}, {2: "x"}]}),
    ("metadata", {"a": {"1": "x", 1: "y"}}),
    ("metadata", {"a": object()}),
    ("metadata", {"a": b"bytes"}),
    ("metadata", ["not", "a", "dict"]),
    ("metadata", "string"),
    ("metadata", 5),
    ("metadata", {"k": "x" * (64 << 10)}),
    ("metadata", {"k": "lone surrogate \udfff"}),
    ("metadata", NESTED_TOO_DEEP),
    # tags / citations
    ("tags", "not-a-list"),
    ("tags", None),
    ("tags", 5),
    ("tags", [""]),
    ("tags", ["ok", ""]),
    ("tags", ["ok", 5]),
    ("tags", [None]),
    ("tags", [["nested"]]),
    ("tags", ["x" * 257]),
    ("tags", ["t"] * 257),
    ("citations", "doc:1"),
    ("citations", [""]),
    ("citations", [1]),
    ("citations", None),
    ("tags", ["ok", "lone surrogate \ud800"]),
    ("citations", ["\udfff"]),
    # confidence
    ("confidence", -0.01),
    ("confidence", 1.01),
    ("confidence", 2),
    ("confidence", -1),
    ("confidence", float("nan")),
    ("confidence", float("inf")),
    ("confidence", True),
    ("confidence", False),
    ("confidence", "0.5"),
    ("confidence", None),
    ("confidence", [0.5]),
    ("confidence", 10**400),
]


@pytest.mark.parametrize(
    ("field", "value"),
    BAD_FIELDS,
    ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)],
)
def test_build_item_rejects_bad_field(field: str, value: object) -> None:
    with pytest.raises(InvalidItemError) as info:
        make(**{field: value})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MemmeshError)


def test_invalid_item_error_is_value_error() -> None:
    assert issubclass(InvalidItemError, ValueError)
    assert issubclass(CorruptRecordError, ValueError)
    assert issubclass(UnknownTierError, InvalidItemError)


@pytest.mark.parametrize("item_id", ["a", "A" * 128, "item-1", "x.y:z@w+v_u-9", "0"])
def test_check_item_id_accepts(item_id: str) -> None:
    assert check_item_id(item_id) == item_id


@pytest.mark.parametrize("item_id", ["", "a/b", "a" * 129, "_a", "a b", None, 1])
def test_check_item_id_rejects(item_id: object) -> None:
    with pytest.raises(InvalidItemError):
        check_item_id(item_id)


def test_check_tier() -> None:
    assert check_tier("L3") == "L3"
    for bad in ("L0", "L4", "l1", ""):
        with pytest.raises(UnknownTierError):
            check_tier(bad)
    assert check_tier("X", ["X", "Y"]) == "X"


# --- records ----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(EmbeddingCodec))
def test_record_round_trip(codec: EmbeddingCodec) -> None:
    item = make(
        codec=codec,
        content="ünïcødé ✓ 𝄞",
        metadata={"nested": {"list": [1, 2.5, None, True, "s"]}, "ε": -0.0},
    )
    back = from_record(item.id, item.tier, to_record(item))
    assert back == item
    assert back.content == item.content
    assert back.metadata == item.metadata
    assert back.codec is codec
    assert back.embedding is not None and item.embedding is not None
    assert back.embedding.tobytes() == item.embedding.tobytes()
    assert not back.embedding.flags.writeable
    assert (back.created, back.updated, back.author) == (item.created, item.updated, item.author)


def test_record_is_canonical_json_with_expected_keys() -> None:
    item = make()
    text = to_record(item)
    raw = json.loads(text)
    assert text == json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert set(raw) == {
        "author",
        "citations",
        "codec",
        "confidence",
        "content",
        "content_hash",
        "created",
        "dim",
        "embedding",
        "metadata",
        "tags",
        "updated",
    }
    assert raw["created"] == T1.encode()
    assert raw["dim"] == 3
    no_embedding = record_dict(make(embedding=None))
    assert "embedding" not in no_embedding and "codec" not in no_embedding


def test_tombstone_round_trip_with_moved_to() -> None:
    item = make()
    dead = tombstone(item, updated=Timestamp(T2.wall_ms + 1, 0), author="node-b", moved_to="L3")
    assert dead.deleted and dead.moved_to == "L3"
    assert dead.content == "" and dead.embedding is None and dead.metadata == {}
    assert dead.created == item.created
    raw = record_dict(dead)
    assert raw["deleted"] is True and raw["moved_to"] == "L3"
    back = from_record(item.id, item.tier, to_record(dead))
    assert back == dead
    assert back.deleted and back.moved_to == "L3"
    assert back != item


def test_items_differing_in_one_field_are_unequal() -> None:
    base = make()
    for other in [
        make(content="other"),
        make(metadata={"source": "chat", "n": 4}),
        make(tags=["sky", "colour"]),
        make(confidence=0.81),
        make(embedding=[0.25, -0.5, 1.5]),
        make(author="node-b"),
        make(updated=T1),
        make(codec=EmbeddingCodec.F16),
    ]:
        assert other != base
    assert make() == base


def valid_record() -> dict[str, Any]:
    return record_dict(make(codec=EmbeddingCodec.I8))


BAD_RECORD_FIELDS: list[tuple[str, object]] = [
    ("content", None),
    ("content", 5),
    ("content", ["x"]),
    ("metadata", None),
    ("metadata", []),
    ("metadata", "x"),
    ("metadata", {"a": float("nan")}),
    ("tags", None),
    ("tags", 5),
    ("tags", "colour"),
    ("tags", [1, 2]),
    ("tags", [None]),
    ("tags", {"a": 1}),
    ("citations", None),
    ("citations", "doc:1"),
    ("citations", [{"a": 1}]),
    ("confidence", None),
    ("confidence", "0.5"),
    ("confidence", [0.5]),
    ("confidence", True),
    ("confidence", float("nan")),
    ("confidence", float("inf")),
    ("confidence", -0.5),
    ("confidence", 1.5),
    ("confidence", 10**400),
    ("created", None),
    ("created", 5),
    ("created", "yesterday"),
    ("created", ["000000000000001.000000"]),
    ("updated", 1.5),
    ("updated", {}),
    ("updated", "\u0661" * 15 + "." + "\u0660" * 6),
    ("author", None),
    ("author", 5),
    ("author", ["n"]),
    ("content_hash", None),
    ("content_hash", 5),
    ("deleted", "false"),
    ("deleted", 1),
    ("moved_to", 5),
    ("moved_to", ["L3"]),
    ("codec", "f64"),
    ("codec", None),
    ("codec", 5),
    ("codec", ["i8"]),
    ("embedding", None),
    ("embedding", 5),
    ("embedding", "not base64!"),
    ("embedding", "AAAA"),
    ("embedding", "é"),
    ("dim", None),
    ("dim", "three"),
    ("dim", 0),
    ("dim", -3),
    ("dim", 4),
    ("dim", 10**400),
    ("dim", float("inf")),
    ("dim", float("nan")),
    ("dim", [3]),
]


@pytest.mark.parametrize(
    ("key", "value"),
    BAD_RECORD_FIELDS,
    ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_RECORD_FIELDS)],
)
def test_from_record_rejects_wrong_field(key: str, value: object) -> None:
    raw = valid_record()
    raw[key] = value
    with pytest.raises(CorruptRecordError):
        from_record("note-1", "L2", json.dumps(raw))


@pytest.mark.parametrize(
    "key", ["content", "metadata", "tags", "citations", "confidence", "created", "updated"]
)
def test_from_record_rejects_missing_field(key: str) -> None:
    raw = valid_record()
    del raw[key]
    with pytest.raises(CorruptRecordError):
        from_record("note-1", "L2", json.dumps(raw))


def test_from_record_rejects_non_finite_embedding() -> None:
    raw = record_dict(make(embedding=[1.0, 2.0]))
    for bad in (math.nan, math.inf):
        raw["embedding"] = base64.b64encode(struct.pack("<2f", 1.0, bad)).decode()
        with pytest.raises(CorruptRecordError):
            from_record("note-1", "L2", json.dumps(raw))
    raw["codec"] = "i8"
    raw["embedding"] = base64.b64encode(struct.pack("<f", math.nan) + b"\x01\x02").decode()
    with pytest.raises(CorruptRecordError):
        from_record("note-1", "L2", json.dumps(raw))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "null",
        "[]",
        "42",
        '"string"',
        "{}",
        "not json at all",
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "NaN",
        "\ud800",
    ],
    ids=lambda t: repr(t[:12]),
)
def test_from_record_rejects_garbage(text: str) -> None:
    with pytest.raises(CorruptRecordError):
        from_record("note-1", "L2", text)


def test_from_record_rejects_every_truncation() -> None:
    text = to_record(make(codec=EmbeddingCodec.F16))
    for cut in range(len(text)):
        with pytest.raises(CorruptRecordError):
            from_record("note-1", "L2", text[:cut])


def test_corrupt_record_error_names_the_item() -> None:
    with pytest.raises(CorruptRecordError, match="L2/note-1"):
        from_record("note-1", "L2", "{")
