"""Memory items: the validated value type, and their record encoding inside tier documents."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import json.scanner
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from json.encoder import encode_basestring as _json_string  # what canonical_json uses
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from crdt.codecs import (
    _F16_MAX,
    MAX_DIM,
    EmbeddingCodec,
    FloatVector,
    as_vector,
    decode_embedding,
    encode_embedding,
)
from crdt.errors import CorruptRecordError, InvalidItemError, UnknownTierError
from crdt.hlc import Timestamp

REPLICATED_TIERS: tuple[str, ...] = ("L1", "L2", "L3")
TIER_NAMES: dict[str, str] = {
    "L0": "cache",
    "L1": "working",
    "L2": "episodic",
    "L3": "semantic",
}
ITEM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits checked before anything is written."""

    max_content_bytes: int = 1 << 20
    max_metadata_bytes: int = 64 << 10
    max_dim: int = MAX_DIM
    max_tags: int = 256
    max_tag_chars: int = 256


@dataclass(frozen=True, slots=True, eq=False)
class MemoryItem:
    """One version of a memory item, or the value a resolver returns for it."""

    id: str
    tier: str
    content: str
    content_hash: str
    embedding: FloatVector | None
    metadata: Mapping[str, Any]
    tags: tuple[str, ...]
    citations: tuple[str, ...]
    confidence: float
    created: Timestamp
    updated: Timestamp
    author: str
    deleted: bool = False
    moved_to: str | None = None
    codec: EmbeddingCodec = field(default=EmbeddingCodec.F32)

    @property
    def order_key(self) -> tuple[Timestamp, str]:
        """Return the last-writer-wins order: HLC, then author node id."""
        return (self.updated, self.author)

    def __eq__(self, other: object) -> bool:
        """Compare every field; embeddings compare by value."""
        if not isinstance(other, MemoryItem):
            return NotImplemented
        return to_record(self) == to_record(other)

    def __hash__(self) -> int:
        """Hash the identity of the version."""
        return hash((self.id, self.tier, self.updated, self.author))

    def to_json(self, *, with_embedding: bool = True) -> dict[str, Any]:
        """Return a JSON-friendly view: the embedding as a list of floats, or only its size.

        Without the embedding, `embedding_dim` (None when there is none) replaces it.
        """
        vector = self.embedding
        shown: dict[str, Any] = (
            {"embedding": None if vector is None else vector.tolist()}
            if with_embedding
            else {"embedding_dim": None if vector is None else int(vector.shape[0])}
        )
        return {
            "id": self.id,
            "tier": self.tier,
            "content": self.content,
            "content_hash": self.content_hash,
            **shown,
            "metadata": dict(self.metadata),
            "tags": list(self.tags),
            "citations": list(self.citations),
            "confidence": self.confidence,
            "created": self.created.encode(),
            "updated": self.updated.encode(),
            "author": self.author,
            "deleted": self.deleted,
            "moved_to": self.moved_to,
        }


def content_hash_of(content: str) -> str:
    """Return the hex SHA-256 of the UTF-8 content."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def check_tier(tier: str, tiers: Iterable[str] = REPLICATED_TIERS) -> str:
    """Return `tier` if it names a replicated tier, else raise UnknownTierError."""
    if tier not in tuple(tiers):
        raise UnknownTierError(f"unknown tier {tier!r}; expected one of {', '.join(tiers)}")
    return tier


def check_item_id(item_id: object) -> str:
    """Return a valid item id or raise InvalidItemError."""
    if not isinstance(item_id, str) or ITEM_ID_PATTERN.fullmatch(item_id) is None:
        raise InvalidItemError(
            f"invalid item id {item_id!r}: 1-128 chars of letters, digits and ._:@+- "
            "starting with a letter or digit"
        )
    return item_id


def canonical_json(value: object) -> str:
    """Return compact, key-sorted JSON; raise InvalidItemError if `value` is not JSON."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidItemError(f"not JSON-serialisable: {exc}") from None


def _only_string_keys(value: object) -> bool:
    """Return whether every object nested in (acyclic) JSON `value` has only string keys."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if not all(isinstance(key, str) for key in node):
                return False
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return True


def _utf8_size(name: str, text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidItemError(f"{name} is not valid Unicode (lone surrogate)") from None


def _check_strings(name: str, values: object, limits: Limits) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidItemError(f"{name} must be a list of strings")
    out = tuple(values)
    if len(out) > limits.max_tags:
        raise InvalidItemError(f"{name}: {len(out)} entries, at most {limits.max_tags}")
    for value in out:
        if not isinstance(value, str) or not 0 < len(value) <= limits.max_tag_chars:
            raise InvalidItemError(
                f"{name} entries must be non-empty strings of at most "
                f"{limits.max_tag_chars} chars, got {value!r}"
            )
        _utf8_size(name, value)
    return out


def build_item(
    *,
    item_id: str,
    tier: str,
    content: object,
    embedding: object | None,
    metadata: object | None,
    tags: object,
    citations: object,
    confidence: object,
    created: Timestamp,
    updated: Timestamp,
    author: str,
    codec: EmbeddingCodec,
    limits: Limits,
) -> MemoryItem:
    """Validate user input and return a live item; raise InvalidItemError on any bad field."""
    check_item_id(item_id)
    if not isinstance(content, str):
        raise InvalidItemError(f"content must be a string, got {type(content).__name__}")
    if len(content) > limits.max_content_bytes or (
        _utf8_size("content", content) > limits.max_content_bytes
    ):
        raise InvalidItemError(f"content over the limit of {limits.max_content_bytes} bytes")
    meta = {} if metadata is None else metadata
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise InvalidItemError("metadata must be a JSON object with string keys")
    meta_json = canonical_json(meta)  # rejects cycles before the key walk
    if not _only_string_keys(meta):
        raise InvalidItemError("metadata must be a JSON object with string keys")
    if _utf8_size("metadata", meta_json) > limits.max_metadata_bytes:
        raise InvalidItemError(f"metadata over the limit of {limits.max_metadata_bytes} bytes")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise InvalidItemError("confidence must be a number in [0, 1]")
    try:
        conf = float(confidence)
    except OverflowError:
        raise InvalidItemError(f"confidence {confidence!r} outside [0, 1]") from None
    if not (math.isfinite(conf) and 0.0 <= conf <= 1.0):
        raise InvalidItemError(f"confidence {confidence!r} outside [0, 1]")
    vec = None if embedding is None else as_vector(embedding, max_dim=limits.max_dim)
    if vec is not None:
        vec = _quantised(vec, codec)
    return MemoryItem(
        id=item_id,
        tier=tier,
        content=content,
        content_hash=content_hash_of(content),
        embedding=vec,
        metadata=json.loads(meta_json),
        tags=_check_strings("tags", tags, limits),
        citations=_check_strings("citations", citations, limits),
        confidence=conf,
        created=created,
        updated=updated,
        author=author,
        codec=codec,
    )


def _quantised(vec: FloatVector, codec: EmbeddingCodec) -> FloatVector:
    """Return what readers will see after the codec round trip (so local reads match remote)."""
    if codec is EmbeddingCodec.F32:
        out = vec.copy()
    else:
        out = decode_embedding(encode_embedding(vec, codec), codec, vec.shape[0])
    out.flags.writeable = False
    return out


def tombstone(
    item: MemoryItem, *, updated: Timestamp, author: str, moved_to: str | None = None
) -> MemoryItem:
    """Return a tombstone version of `item` (content dropped, `moved_to` set for moves)."""
    return MemoryItem(
        id=item.id,
        tier=item.tier,
        content="",
        content_hash=content_hash_of(""),
        embedding=None,
        metadata={},
        tags=(),
        citations=(),
        confidence=0.0,
        created=item.created,
        updated=updated,
        author=author,
        deleted=True,
        moved_to=moved_to,
        codec=item.codec,
    )


def to_record(item: MemoryItem) -> str:
    """Encode a version as the JSON string stored in a tier document."""
    emb = item.embedding
    record: dict[str, Any] = {
        "content": item.content,
        "content_hash": item.content_hash,
        "metadata": item.metadata,
        "tags": list(item.tags),
        "citations": list(item.citations),
        "confidence": item.confidence,
        "created": item.created.encode(),
        "updated": item.updated.encode(),
        "author": item.author,
    }
    if emb is not None:
        record["embedding"] = base64.b64encode(encode_embedding(emb, item.codec)).decode()
        record["codec"] = item.codec.value
        record["dim"] = int(emb.shape[0])
    if item.deleted:
        record["deleted"] = True
    if item.moved_to is not None:
        record["moved_to"] = item.moved_to
    return canonical_json(record)


def _typed(value: object, kind: type[Any] | tuple[type[Any], ...], name: str) -> Any:
    """Return `value` if it has JSON type `kind` (bools are not numbers), else raise TypeError."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{name} has the wrong type {type(value).__name__}")
    return value


def _string_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} is not a list of strings")
    return tuple(value)


def from_record(item_id: str, tier: str, record: str) -> MemoryItem:
    """Decode a stored version; raise CorruptRecordError on anything malformed."""
    try:
        raw = json.loads(record)
        if not isinstance(raw, dict):
            raise TypeError("record is not an object")
        embedding = None
        codec = EmbeddingCodec(raw.get("codec", "f32"))
        if "embedding" in raw:
            data = base64.b64decode(raw["embedding"], validate=True)
            embedding = decode_embedding(data, codec, _typed(raw["dim"], int, "dim"))
            if not np.isfinite(embedding).all():
                raise ValueError("embedding is not finite")
            embedding.flags.writeable = False
        moved_to = raw.get("moved_to")
        metadata = _typed(raw["metadata"], dict, "metadata")
        if metadata:
            canonical_json(metadata)  # no NaN or infinity: the item must re-encode
        confidence = _typed(raw["confidence"], (int, float), "confidence")
        if not 0.0 <= confidence <= 1.0:  # also false for NaN
            raise ValueError(f"confidence {confidence!r} outside [0, 1]")
        return MemoryItem(
            id=item_id,
            tier=tier,
            content=_typed(raw["content"], str, "content"),
            content_hash=_typed(raw["content_hash"], str, "content_hash"),
            embedding=embedding,
            metadata=metadata,
            tags=_string_list(raw["tags"], "tags"),
            citations=_string_list(raw["citations"], "citations"),
            confidence=float(confidence),
            created=Timestamp.decode(raw["created"]),
            updated=Timestamp.decode(raw["updated"]),
            author=_typed(raw["author"], str, "author"),
            deleted=_typed(raw.get("deleted", False), bool, "deleted"),
            moved_to=None if moved_to is None else _typed(moved_to, str, "moved_to"),
            codec=codec,
        )
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise CorruptRecordError(f"corrupt record for {tier}/{item_id}: {exc}") from None


# --------------------------------------------------------------------------- batch fast path
#
# The helpers below serve `TieredMemory.put_many` for a batch of new ids. Each accepts only the
# common shapes of input and returns None for anything else, so the caller can fall back to
# `build_item` (which then raises the usual InvalidItemError, or handles the unusual shape).
# For what they accept they give exactly what `build_item` and `to_record` give; the property
# tests in tests/unit/test_put_many_fast.py check that.

QuickFields: TypeAlias = tuple[
    str, str, dict[str, Any], str, tuple[str, ...], tuple[str, ...], float
]
"""(content, content_hash, metadata, metadata JSON, tags, citations, confidence)."""


def _quick_strings(values: object, limits: Limits) -> tuple[str, ...] | None:
    """Return a tuple or list of plain strings within the limits as a tuple, else None."""
    if type(values) is tuple or type(values) is list:
        out = tuple(values)
    else:
        return None
    if len(out) > limits.max_tags:
        return None
    longest = limits.max_tag_chars
    for value in out:
        if type(value) is not str or not 0 < len(value) <= longest:
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return None  # the general path raises the clear error
    return out


def quick_fields(
    content: object,
    metadata: object,
    tags: object,
    citations: object,
    confidence: object,
    limits: Limits,
) -> QuickFields | None:
    """Validate a put's plain fields as `build_item` does when they have the common shapes.

    Returns the values `build_item` would store plus the metadata's canonical JSON, or None
    when a field is invalid or of an unusual type (then call `build_item`).
    """
    if type(content) is not str or len(content) > limits.max_content_bytes:
        return None
    try:
        raw = content.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(raw) > limits.max_content_bytes:
        return None
    meta: dict[str, Any]
    if metadata is None or (type(metadata) is dict and not metadata):
        meta, meta_json = {}, "{}"
    elif type(metadata) is dict:
        try:
            meta_json = canonical_json(metadata)  # rejects cycles before the key walk
            size = len(meta_json.encode("utf-8"))
        except (InvalidItemError, UnicodeEncodeError):
            return None
        if size > limits.max_metadata_bytes or not _only_string_keys(metadata):
            return None
        meta = json.loads(meta_json)
    else:
        return None
    kind = type(confidence)
    if kind is float:
        conf: float = confidence  # type: ignore[assignment]
    elif kind is int:
        try:
            conf = float(confidence)  # type: ignore[arg-type]
        except OverflowError:
            return None
    else:
        return None
    if not (0.0 <= conf <= 1.0):  # also false for NaN
        return None
    tag_tuple = _quick_strings(tags, limits)
    cites = _quick_strings(citations, limits)
    if tag_tuple is None or cites is None:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    return content, digest, meta, meta_json, tag_tuple, cites, conf


_ITEM_FIELDS = (
    "id", "tier", "content", "content_hash", "embedding", "metadata", "tags", "citations",
    "confidence", "created", "updated", "author", "deleted", "moved_to", "codec",
)  # fmt: skip
if tuple(f.name for f in fields(MemoryItem)) != _ITEM_FIELDS:  # pragma: no cover
    raise RuntimeError("MemoryItem fields changed: update new_live_item")
_ITEM_SETTERS = tuple(getattr(MemoryItem, name).__set__ for name in _ITEM_FIELDS)


def new_live_item(
    item_id: str,
    tier: str,
    content: str,
    content_hash: str,
    embedding: FloatVector | None,
    metadata: dict[str, Any],
    tags: tuple[str, ...],
    citations: tuple[str, ...],
    confidence: float,
    created: Timestamp,
    updated: Timestamp,
    author: str,
    codec: EmbeddingCodec,
) -> MemoryItem:
    """Return `MemoryItem(...)` of a live, unmoved version (about twice as quick).

    Sets the slots directly instead of through the frozen dataclass `__init__`, which
    does nothing else.
    """
    (
        set_id, set_tier, set_content, set_hash, set_embedding, set_metadata, set_tags,
        set_citations, set_confidence, set_created, set_updated, set_author, set_deleted,
        set_moved_to, set_codec,
    ) = _ITEM_SETTERS  # fmt: skip
    item = object.__new__(MemoryItem)
    set_id(item, item_id)
    set_tier(item, tier)
    set_content(item, content)
    set_hash(item, content_hash)
    set_embedding(item, embedding)
    set_metadata(item, metadata)
    set_tags(item, tags)
    set_citations(item, citations)
    set_confidence(item, confidence)
    set_created(item, created)
    set_updated(item, updated)
    set_author(item, author)
    set_deleted(item, False)
    set_moved_to(item, None)
    set_codec(item, codec)
    return item


FloatMatrix: TypeAlias = npt.NDArray[np.float32]


def quantise_rows(
    rows: FloatMatrix, codec: EmbeddingCodec
) -> tuple[list[FloatVector], list[npt.NDArray[Any]]] | None:
    """Return what readers see of each row of a float32 matrix, and its encoded bytes.

    Vector i is what `build_item` stores for row i: read-only float32, owning its memory
    like it. Encoded row i holds the bytes `encode_embedding` gives for row i (the record's
    "embedding" field is their base64, see `embedding_text`); for f32 it is vector i itself.
    Returns None if a row is not finite or the codec rejects it, as `build_item` would raise.
    """
    if rows.ndim != 2 or rows.dtype != np.float32 or not np.isfinite(rows).all():
        return None
    count, dim = rows.shape
    raw: npt.NDArray[Any] | None = None
    if codec is EmbeddingCodec.F32:
        quantised = rows
    elif codec is EmbeddingCodec.F16:
        if rows.size and float(np.abs(rows).max()) > _F16_MAX:
            return None
        raw = rows.astype("<f2")
        quantised = raw.astype(np.float32)
    else:
        # encode_embedding per row: scale = peak / 127 in float64, stored as float32; the
        # division by the scale happens in float32 (a Python float operand is weak).
        peak = np.abs(rows).max(axis=1).astype(np.float64)
        scale = (peak / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0  # a zero row or an underflow, as encode_embedding has it
        ints = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
        raw = np.empty((count, 4 + dim), dtype=np.uint8)
        raw[:, :4] = scale.astype("<f4").view(np.uint8).reshape(count, 4)
        raw[:, 4:] = ints.view(np.uint8)
        quantised = ints.astype(np.float32) * scale[:, None]
    vectors = [row.copy() for row in quantised]
    for vector in vectors:
        vector.flags.writeable = False
    if raw is None:
        return vectors, [vector.astype("<f4", copy=False) for vector in vectors]
    return vectors, list(raw)


def embedding_text(encoded: npt.NDArray[Any]) -> str:
    """Return the record's "embedding" field for one encoded row from `quantise_rows`."""
    return binascii.b2a_base64(encoded.tobytes(), newline=False).decode("ascii")


def _json_strings(values: tuple[str, ...]) -> str:
    if not values:
        return "[]"
    return "[" + ",".join([_json_string(value) for value in values]) + "]"


def live_record_text(
    item: MemoryItem,
    metadata_json: str,
    embedding_text: str | None,
    *,
    created: str | None = None,
    updated: str | None = None,
) -> str:
    """Return `to_record(item)` for a live item that was not moved, built from fragments.

    `metadata_json` must be `canonical_json(item.metadata)` and `embedding_text` the
    base64 field `to_record` writes for the embedding (None without one); `created` and
    `updated`, if given, the encoded timestamps.
    """
    emb = item.embedding
    if emb is None:
        vector = ""
        codec = ""
    else:
        vector = f'"dim":{int(emb.shape[0])},"embedding":"{embedding_text}",'
        codec = f'"codec":"{item.codec.value}",'
    return (
        f'{{"author":{_json_string(item.author)},"citations":{_json_strings(item.citations)},'
        f'{codec}"confidence":{float.__repr__(item.confidence)},'
        f'"content":{_json_string(item.content)},"content_hash":{_json_string(item.content_hash)},'
        f'"created":"{created or item.created.encode()}",{vector}"metadata":{metadata_json},'
        f'"tags":{_json_strings(item.tags)},"updated":"{updated or item.updated.encode()}"}}'
    )


# --------------------------------------------------------------------------- batch decode
#
# `apply_remote` takes a slice's new ids through `scan_live_records`: one pattern for the
# common shape, `_json_live_fields` for the other shapes `live_record_text` writes, None
# for anything else (`from_record` then raises the usual CorruptRecordError, or decodes
# the unusual shape). tests/unit/test_decode_new_records.py holds both to `from_record`
# through a reference batch decoder built on the same helpers.

_LIVE_KEYS = frozenset(
    {"author", "citations", "confidence", "content", "content_hash", "created", "metadata"}
    | {"tags", "updated"}
)
_LIVE_EMBEDDED_KEYS = _LIVE_KEYS | {"codec", "dim", "embedding"}
_CODECS = {codec.value: codec for codec in EmbeddingCodec}
_ROW_BYTES = {EmbeddingCodec.F32: (4, 0), EmbeddingCodec.F16: (2, 0), EmbeddingCodec.I8: (1, 4)}
_HLC_PATTERN = re.compile(r"[0-9]{15}\.[0-9]{6}")
# json.loads minus its wrapper: (value, end index) of the JSON value at an index.
_DECODER: Any = json.JSONDecoder()
_scan_json: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(_DECODER)


def _plain_strings(value: object) -> tuple[str, ...] | None:
    if type(value) is not list:
        return None
    for entry in value:
        if type(entry) is not str:
            return None
    return tuple(value)


def _timestamp(text: object, known: dict[str, Timestamp]) -> Timestamp | None:
    """Return `Timestamp.decode(text)` for a well-formed stamp (memoised), else None."""
    if type(text) is not str:
        return None
    stamp = known.get(text)
    if stamp is None:
        if _HLC_PATTERN.fullmatch(text) is None:
            return None
        stamp = known[text] = Timestamp(int(text[:15]), int(text[16:]))
    return stamp


def _json_live_fields(record: str, stamps: dict[str, Timestamp]) -> tuple[Any, ...] | None:
    """Return a live, unmoved record's fields as `from_record` reads them, else None.

    The fields are (content, content_hash, metadata, tags, citations, confidence, created,
    updated, author, codec, dim, embedding bytes); dim and bytes are None without an
    embedding. None also for any shape `live_record_text` does not write.
    """
    try:
        raw, end = _scan_json(record, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    if end != len(record) or type(raw) is not dict:
        return None
    keys = raw.keys()
    if keys == _LIVE_KEYS:
        embedded = False
        codec = EmbeddingCodec.F32
    elif keys == _LIVE_EMBEDDED_KEYS:
        embedded = True
        codec_value = raw["codec"]
        found = _CODECS.get(codec_value) if type(codec_value) is str else None
        if found is None:
            return None
        codec = found
    else:
        return None
    content, content_hash, author = raw["content"], raw["content_hash"], raw["author"]
    metadata, confidence = raw["metadata"], raw["confidence"]
    if (
        type(content) is not str
        or type(content_hash) is not str
        or type(author) is not str
        or type(metadata) is not dict
        or not (type(confidence) is float or type(confidence) is int)
        or not 0.0 <= confidence <= 1.0
    ):
        return None
    if metadata:
        try:
            canonical_json(metadata)
        except InvalidItemError:
            return None
    tags = _plain_strings(raw["tags"])
    citations = _plain_strings(raw["citations"])
    created = _timestamp(raw["created"], stamps)
    updated = _timestamp(raw["updated"], stamps)
    if tags is None or citations is None or created is None or updated is None:
        return None
    dim: int | None = None
    data: bytes | None = None
    if embedded:
        dim, text = raw["dim"], raw["embedding"]
        if type(dim) is not int or not 1 <= dim <= MAX_DIM or type(text) is not str:
            return None
        try:
            data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            return None
        width, header = _ROW_BYTES[codec]
        if len(data) != width * dim + header:
            return None
    return (
        content, content_hash, metadata, tags, citations, float(confidence), created, updated,
        author, codec, dim, data,
    )  # fmt: skip


# What `live_record_text` writes with no metadata, tags or citations (an initial sync's
# common shape), as one pattern: JSON strings without escapes or control characters (so
# their text is their value), numbers in JSON's grammar with ASCII digits only. It stops
# where the embedding's text starts; the rest is matched at the offset the dimension gives.
_JSON_TEXT = r'[^"\\\x00-\x1f]*'
_LIVE_HEAD = re.compile(
    rf'\{{"author":"({_JSON_TEXT})","citations":\[\],(?:"codec":"(f32|f16|i8)",)?'
    r'"confidence":(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?),'
    rf'"content":"{_JSON_TEXT}","content_hash":"{_JSON_TEXT}",'
    r'"created":"[0-9]{15}\.[0-9]{6}",(?:"dim":([1-9][0-9]{0,3}),"embedding":")?'
)
_LIVE_TAIL = re.compile(r'"metadata":\{\},"tags":\[\],"updated":"([0-9]{15}\.[0-9]{6})"\}')
_EMBEDDED_TAIL = re.compile(r'","metadata":\{\},"tags":\[\],"updated":"([0-9]{15}\.[0-9]{6})"\}')


def _embedded_shape(
    codec_text: str,
    dim_text: str,
    groups: dict[tuple[EmbeddingCodec, int], tuple[list[int], list[bytes]]],
) -> tuple[int, int, list[int], list[bytes]] | None:
    """Return (bytes, base64 characters, group lists) of an embedding, None past MAX_DIM."""
    codec, dim = _CODECS[codec_text], int(dim_text)
    if dim > MAX_DIM:
        return None
    width, header = _ROW_BYTES[codec]
    size = width * dim + header
    group = groups.get((codec, dim))
    if group is None:
        group = groups[(codec, dim)] = ([], [])
    return size, 4 * ((size + 2) // 3), group[0], group[1]


@dataclass(frozen=True, slots=True)
class LiveScan:
    """The records `scan_live_records` accepted, in columns.

    `positions` are the accepted entries' indices, ascending; `updated` and `authors` are
    their records' encoded `updated` stamps and authors. `vectors` holds, per codec and
    dimension, the indices of the entries with an embedding and the decoded rows, one per
    index, in order.
    """

    positions: list[int]
    updated: list[str]
    authors: list[str]
    vectors: list[tuple[list[int], FloatMatrix]]


def scan_live_records(records: Iterable[str]) -> LiveScan:
    """Accept the live records `live_record_text` writes, giving what a new id needs of them.

    An accepted record is one for which `from_record` returns a live, unmoved version; its
    columns hold that version's `updated.encode()`, `author` and `embedding` (bit for bit).
    Every other record is left out (then call `from_record`, which may still decode it).
    """
    positions: list[int] = []
    updated: list[str] = []
    authors: list[str] = []
    groups: dict[tuple[EmbeddingCodec, int], tuple[list[int], list[bytes]]] = {}
    # (codec text, dim text) -> (bytes, base64 characters, the group's index and data lists)
    shapes: dict[tuple[str, str], tuple[int, int, list[int], list[bytes]] | None] = {}
    stamps: dict[str, Timestamp] = {}
    head, live_tail = _LIVE_HEAD.match, _LIVE_TAIL.fullmatch
    embedded_tail, b64decode = _EMBEDDED_TAIL.fullmatch, binascii.a2b_base64
    for index, record in enumerate(records):
        found = head(record)
        if found is not None:
            author, codec_text, confidence, dim_text = found.groups()
            if codec_text is not None and dim_text is not None:
                key = (codec_text, dim_text)
                shape = shapes.get(key)
                if shape is None and key not in shapes:
                    shape = shapes[key] = _embedded_shape(codec_text, dim_text, groups)
                if shape is not None:
                    size, chars, indices, rows = shape
                    start = found.end()
                    tail = embedded_tail(record, start + chars)
                    if tail is not None and 0.0 <= float(confidence) <= 1.0:
                        try:
                            data = b64decode(record[start : start + chars], strict_mode=True)
                        except ValueError:  # binascii.Error, or not ASCII
                            data = b""
                        if len(data) == size:
                            indices.append(index)
                            rows.append(data)
                            positions.append(index)
                            updated.append(tail.group(1))
                            authors.append(author)
                            continue
            elif codec_text is None and dim_text is None:
                tail = live_tail(record, found.end())
                if tail is not None and 0.0 <= float(confidence) <= 1.0:
                    positions.append(index)
                    updated.append(tail.group(1))
                    authors.append(author)
                    continue
        values = _json_live_fields(record, stamps)
        if values is None:
            continue
        if values[11] is not None:
            group = groups.get((values[9], values[10]))
            if group is None:
                group = groups[(values[9], values[10])] = ([], [])
            group[0].append(index)
            group[1].append(values[11])
        positions.append(index)
        updated.append(values[7].encode())
        authors.append(values[8])
    vectors: list[tuple[list[int], FloatMatrix]] = []
    refused: set[int] = set()
    for (codec, dim), (indices, rows) in groups.items():
        matrix = _decode_rows(codec, dim, b"".join(rows))
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():  # from_record refuses those
            flags: list[bool] = finite.tolist()  # type: ignore[assignment]
            refused.update(i for i, ok in zip(indices, flags, strict=True) if not ok)
            indices = [i for i, ok in zip(indices, flags, strict=True) if ok]
            matrix = matrix[finite]
        if indices:
            vectors.append((indices, matrix))
    if refused:
        kept = [k for k, index in enumerate(positions) if index not in refused]
        positions = [positions[k] for k in kept]
        updated = [updated[k] for k in kept]
        authors = [authors[k] for k in kept]
    return LiveScan(positions, updated, authors, vectors)


def _decode_rows(codec: EmbeddingCodec, dim: int, data: bytes) -> FloatMatrix:
    """Return the rows `decode_embedding` gives for each row of `data`, as one matrix."""
    if codec is EmbeddingCodec.F32:
        return np.frombuffer(data, dtype="<f4").reshape(-1, dim).astype(np.float32)
    if codec is EmbeddingCodec.F16:
        return np.frombuffer(data, dtype="<f2").reshape(-1, dim).astype(np.float32)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, 4 + dim)
    scales = rows[:, :4].copy().view("<f4").astype(np.float32)  # (count, 1)
    ints = rows[:, 4:].view(np.int8)
    # One output array, the int8 -> float32 cast done in the ufunc's small buffers: a
    # whole float32 copy of `ints` first doubled the fresh memory (page faults) per slice.
    return np.multiply(ints, scales, dtype=np.float32)
