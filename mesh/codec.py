"""Wire codec: each `mesh.messages` payload as a msgpack array `[msg_type, field, ...]`.

Decoding caps lengths before allocation, checks every field's type and range, verifies
MEMORY_SYNC checksums and raises only `FrameError`. Layouts: docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack

from mesh import messages as m
from mesh.frames import (
    DEFAULT_LIMITS,
    HEADER,
    Flags,
    Frame,
    FrameError,
    Limits,
    MsgType,
    Priority,
    decode_frame,
    encode_frame,
)
from mesh.messages import Chunk, MemberUpdate, Message, SyncKind

KNOWN_TIERS: Final = ("L1", "L2", "L3")
BROADCAST: Final = "*"
ID_BYTES: Final = 16  # batch_id, transfer_id
CHECKSUM_BYTES: Final = 32  # SHA-256 of a MEMORY_SYNC body
ROOT_BYTES: Final = 32  # a Merkle root (crdt.merkle.HASH_SIZE)
MAX_NODE_ID: Final = 64
MAX_ADDRESS: Final = 256
MAX_LABEL: Final = 64  # Hello.profile, Hello.software, ErrorReport.detail keys
MAX_TEXT: Final = 1024  # error messages and detail values
MAX_ITEM_ID: Final = 128
MAX_GOSSIP: Final = 64
MAX_DETAIL: Final = 32
MAX_DIM: Final = 4096  # float32 components of a query vector (crdt.codecs.MAX_DIM)
MAX_K: Final = 1000
MAX_QUERY_IDS: Final = 1000  # ids one MEMORY_QUERY may name (each answer is a record lookup)
U16: Final = 0xFFFF
U32: Final = 0xFFFF_FFFF
U64: Final = 0xFFFF_FFFF_FFFF_FFFF
MAX_LEASE_NAME: Final = 128
MAX_STATS_NODES: Final = 1024  # reports in one STATS_PUBLISH
MAX_CONFLICT_KINDS: Final = 16
# Objects (arrays, and every element at any depth, the payload array included) in a valid
# payload, under any Limits: a MEMORY_RESPONSE has 7 plus 3 per record or hit, at most
# 65,535 of them (batch_count is a u16 in the header); a STATS_PUBLISH of 1024 reports of
# 3 tiers with 16 conflicts each has 178,181; a MEMORY_QUERY 7 plus 1 per id; others < 400.
_REPORT_OBJECTS: Final = 3 + len(KNOWN_TIERS) * (9 + 3 * MAX_CONFLICT_KINDS)
_MAX_VALID_OBJECTS: Final = max(7 + 3 * U16, 5 + MAX_STATS_NODES * _REPORT_OBJECTS)
MAX_PAYLOAD_OBJECTS: Final = 1 << 18  # objects one payload may declare (_count_objects)
assert _MAX_VALID_OBJECTS < MAX_PAYLOAD_OBJECTS
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_SYNC_CHECKSUM_AT: Final = 6  # index of the checksum among MEMORY_SYNC fields (after the tag)
_ENVELOPE_FLAGS: Final = Flags.ENCRYPTED | Flags.SIGNED


class MessageError(FrameError):
    """A frame's payload was malformed, out of range, mistyped, or failed its checksum."""


_Sized = TypeVar("_Sized", str, bytes, list[Any])


def _sized(value: Any, name: str, kind: type[_Sized], hi: int, lo: int = 0) -> _Sized:
    """Return `value` if its type is exactly `kind` (str, bytes or list) and its length lo..hi."""
    if type(value) is not kind:
        raise MessageError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise MessageError(f"{name}: length {len(value)} outside [{lo}, {hi}]")
    return value


def _show(value: Any) -> str:
    """Return a short description of an untrusted value (never a deep or long repr)."""
    if isinstance(value, str | bytes):
        return repr(value[:40])
    return repr(value) if isinstance(value, int | float | None) else type(value).__name__


def _int(value: Any, name: str, hi: int, lo: int = 0) -> int:
    """Return `value` if it is an int (not a bool) in [lo, hi]."""
    if type(value) is not int or not lo <= value <= hi:
        raise MessageError(f"{name}: expected an integer in [{lo}, {hi}], got {_show(value)}")
    return value


def _bool(value: Any, name: str) -> bool:
    """Return `value` if it is a bool."""
    if type(value) is not bool:
        raise MessageError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def _float(value: Any, name: str) -> float:
    """Return `value` if it is a finite float."""
    if type(value) is not float or not math.isfinite(value):
        raise MessageError(f"{name}: expected a finite float, got {_show(value)}")
    return value


def _u32(value: Any, name: str) -> int:
    """Return a u32."""
    return _int(value, name, U32)


def _node(value: Any, name: str) -> str:
    """Return a node id: 1..64 characters."""
    return _sized(value, name, str, MAX_NODE_ID, 1)


def _item(value: Any, name: str) -> str:
    """Return an item id: 1..128 characters."""
    return _sized(value, name, str, MAX_ITEM_ID, 1)


def _id16(value: Any, name: str) -> bytes:
    """Return a batch or transfer id: exactly 16 bytes."""
    return _sized(value, name, bytes, ID_BYTES, ID_BYTES)


def _tier(value: Any, name: str = "tier") -> str:
    """Return a tier name from KNOWN_TIERS."""
    if type(value) is not str or value not in KNOWN_TIERS:
        raise MessageError(f"{name}: unknown tier {_show(value)}")
    return value


def _unique(values: list[str], name: str) -> None:
    """Refuse duplicate entries."""
    if len(set(values)) != len(values):
        raise MessageError(f"{name}: duplicate entries")


_MEMBER_STATES: Final = tuple(m.MemberState)  # by value; max(MemberState) per entry was hot
assert all(int(state) == i for i, state in enumerate(_MEMBER_STATES))


def _gossip(value: Any) -> tuple[MemberUpdate, ...]:
    """Parse at most MAX_GOSSIP `[node_id, state, incarnation, address]` member updates."""
    out = []
    for raw in _sized(value, "gossip", list, MAX_GOSSIP):
        node, state, inc, address = _sized(raw, "gossip entry", list, 4, 4)
        out.append(
            MemberUpdate(
                _node(node, "gossip.node_id"),
                _MEMBER_STATES[_int(state, "gossip.state", len(_MEMBER_STATES) - 1)],
                _int(inc, "gossip.incarnation", U64),
                _sized(address, "gossip.address", str, MAX_ADDRESS),
            )
        )
    return tuple(out)


def _hello(f: list[Any], limits: Limits) -> m.Hello:
    """Parse `[node_id, incarnation, tiers, profile, hub_eligible, software]`."""
    tiers = [_tier(t, "tiers") for t in _sized(f[2], "tiers", list, len(KNOWN_TIERS))]
    _unique(tiers, "tiers")
    return m.Hello(
        _node(f[0], "node_id"),
        _int(f[1], "incarnation", U64),
        tuple(tiers),
        _sized(f[3], "profile", str, MAX_LABEL),
        _bool(f[4], "hub_eligible"),
        _sized(f[5], "software", str, MAX_LABEL),
    )


def _probe(f: list[Any]) -> tuple[int, str, tuple[MemberUpdate, ...]]:
    """Parse `[seq, target, gossip]` (PING_REQ and PING_ACK)."""
    return _int(f[0], "seq", U64), _node(f[1], "target"), _gossip(f[2])


def _digest(f: list[Any], limits: Limits) -> m.Digest:
    """Parse `[[[tier, root], ...], reply]`: each tier at most once, roots of 32 bytes."""
    roots = [
        (_tier(tier), _sized(root, "root", bytes, ROOT_BYTES, ROOT_BYTES))
        for tier, root in (_sized(r, "roots", list, 2, 2) for r in _sized(f[0], "roots", list, 3))
    ]
    _unique([tier for tier, _ in roots], "roots")
    return m.Digest(tuple(roots), _bool(f[1], "reply"))


def _chunk(value: Any, piece_len: int) -> Chunk | None:
    """Parse nil or `[transfer_id, index, total, total_bytes]`, consistent with the piece."""
    if value is None:
        return None
    tid, index, total, total_bytes = _sized(value, "chunk", list, 4, 4)
    chunk = Chunk(
        _id16(tid, "chunk.transfer_id"),
        _int(index, "chunk.index", U32),
        _int(total, "chunk.total", U32, 1),
        _int(total_bytes, "chunk.total_bytes", U64),
    )
    if chunk.index >= chunk.total:
        raise MessageError(f"chunk.index {chunk.index} not below total {chunk.total}")
    if piece_len > chunk.total_bytes or chunk.total > max(chunk.total_bytes, 1):
        raise MessageError("chunk totals disagree with the piece")
    return chunk


# SyncKind by value (0, 1, 2...; import fails if not contiguous): indexing it skips the enum
# machinery that `SyncKind(value)` runs.
_SYNC_KINDS: Final = tuple(SyncKind(value) for value in range(len(SyncKind)))


def _sync(f: list[Any], limits: Limits) -> m.MemorySync:
    """Parse `[batch_id, source, target, tier, kind, items, checksum, chunk, body]`."""
    body = _sized(f[8], "body", bytes, limits.max_decompressed_bytes)
    _sized(f[6], "checksum", bytes, CHECKSUM_BYTES, CHECKSUM_BYTES)
    return m.MemorySync(
        _id16(f[0], "batch_id"),
        _node(f[1], "source"),
        BROADCAST if f[2] == BROADCAST else _node(f[2], "target"),
        _tier(f[3]),
        _SYNC_KINDS[_int(f[4], "kind", len(_SYNC_KINDS) - 1)],
        body,
        _int(f[5], "items", U32),
        _chunk(f[7], len(body)),
    )


def _query(f: list[Any], limits: Limits) -> m.MemoryQuery:
    """Parse `[query_id, tier, vector, k, ids]`; the vector is whole little-endian float32s."""
    vector = _sized(f[2], "vector", bytes, 4 * MAX_DIM)
    if len(vector) % 4:
        raise MessageError(f"vector: {len(vector)} bytes is not a whole number of float32")
    id_cap = min(MAX_QUERY_IDS, limits.max_batch_count)
    ids = tuple(_item(x, "ids") for x in _sized(f[4], "ids", list, id_cap))
    return m.MemoryQuery(
        _int(f[0], "query_id", U64), _tier(f[1]), vector, _int(f[3], "k", MAX_K), ids
    )


def _response(f: list[Any], limits: Limits) -> m.MemoryResponse:
    """Parse `[query_id, ok, [[id, json], ...], [[id, score], ...], error]`."""
    cap, text_cap = limits.max_batch_count, limits.max_decompressed_bytes
    records = tuple(
        (_item(i, "record id"), _sized(r, "record", str, text_cap))
        for i, r in (_sized(x, "records", list, 2, 2) for x in _sized(f[2], "records", list, cap))
    )
    hits = tuple(
        (_item(i, "hit id"), _float(s, "score"))
        for i, s in (_sized(x, "hits", list, 2, 2) for x in _sized(f[3], "hits", list, cap))
    )
    if len(records) + len(hits) > cap:
        raise MessageError(f"records + hits over the cap of {cap}")
    error = _sized(f[4], "error", str, MAX_TEXT)
    return m.MemoryResponse(_int(f[0], "query_id", U64), _bool(f[1], "ok"), records, hits, error)


def _error(f: list[Any], limits: Limits) -> m.ErrorReport:
    """Parse `[code, message, [[key, value], ...]]` with unique keys."""
    pairs = [_sized(x, "detail", list, 2, 2) for x in _sized(f[2], "detail", list, MAX_DETAIL)]
    detail = {
        _sized(k, "detail key", str, MAX_LABEL): _sized(v, "detail value", str, MAX_TEXT)
        for k, v in pairs
    }
    if len(detail) != len(pairs):
        raise MessageError("detail: duplicate keys")
    message = _sized(f[1], "message", str, MAX_TEXT)
    return m.ErrorReport(_int(f[0], "code", U16), message, detail)


def _bin(value: Any, name: str, size: int) -> bytes:
    """Return exactly `size` bytes."""
    return _sized(value, name, bytes, size, size)


def _claim(f: list[Any], limits: Limits) -> m.HubClaim:
    """Parse `[node_id, term, seq, score, public_key, signature]`."""
    return m.HubClaim(
        _node(f[0], "node_id"),
        _int(f[1], "term", U64),
        _int(f[2], "seq", U64),
        _int(f[3], "score", U32),
        _bin(f[4], "public_key", PUBLIC_KEY_BYTES),
        _bin(f[5], "signature", SIGNATURE_BYTES),
    )


def _relay(f: list[Any], limits: Limits) -> m.HubRelay:
    """Parse `[origin, public_key, signature, frame]`; the frame is at most one frame long."""
    return m.HubRelay(
        _node(f[0], "origin"),
        _bin(f[1], "public_key", PUBLIC_KEY_BYTES),
        _bin(f[2], "signature", SIGNATURE_BYTES),
        _sized(f[3], "frame", bytes, limits.max_frame_bytes, 1),
    )


def _tier_stats(value: Any) -> m.TierStats:
    """Parse `[tier, syncs_per_min, items_per_batch, latency_ms, p2p, relayed, backlog, conf]`."""
    tier, rate, size, latency, p2p, relayed, backlog, conf = _sized(value, "stats", list, 8, 8)
    conf = _sized(conf, "conflicts", list, MAX_CONFLICT_KINDS)
    pairs = [_sized(c, "conflict", list, 2, 2) for c in conf]
    conflicts = tuple(
        (_sized(k, "resolution", str, MAX_LABEL, 1), _int(n, "conflicts", U64)) for k, n in pairs
    )
    _unique([k for k, _n in conflicts], "conflicts")
    return m.TierStats(
        _tier(tier),
        _float(rate, "syncs_per_min"),
        _float(size, "items_per_batch"),
        _float(latency, "latency_ms"),
        _int(p2p, "p2p", U64),
        _int(relayed, "relayed", U64),
        _int(backlog, "backlog", U64),
        conflicts,
    )


def _report_of(value: Any) -> m.StatsReport:
    """Parse `[node_id, [tier stats]≤3]` with each tier at most once."""
    node, tiers = _sized(value, "report", list, 2, 2)
    stats = tuple(_tier_stats(t) for t in _sized(tiers, "tiers", list, len(KNOWN_TIERS)))
    _unique([s.tier for s in stats], "tiers")
    return m.StatsReport(_node(node, "node_id"), stats)


def _publish(f: list[Any], limits: Limits) -> m.StatsPublish:
    """Parse `[hub_id, term, [report]≤1024]` with each node at most once."""
    reports = tuple(_report_of(r) for r in _sized(f[2], "reports", list, MAX_STATS_NODES))
    _unique([r.node_id for r in reports], "reports")
    return m.StatsPublish(_node(f[0], "hub_id"), _int(f[1], "term", U64), reports)


def _lease_name(value: Any) -> str:
    """Return a lease name: 1..128 characters."""
    return _sized(value, "name", str, MAX_LEASE_NAME, 1)


def _lease_request(f: list[Any], limits: Limits) -> m.LeaseRequest:
    """Parse `[request_id, node_id, name, ttl_ms]`."""
    return m.LeaseRequest(
        _int(f[0], "request_id", U64), _node(f[1], "node_id"), _lease_name(f[2]), _u32(f[3], "ttl")
    )


def _lease_grant(f: list[Any], limits: Limits) -> m.LeaseGrant:
    """Parse `[request_id, name, holder, granted, token, term, ttl_ms]`."""
    return m.LeaseGrant(
        _int(f[0], "request_id", U64),
        _lease_name(f[1]),
        _node(f[2], "holder"),
        _bool(f[3], "granted"),
        _int(f[4], "token", U64),
        _int(f[5], "term", U64),
        _u32(f[6], "ttl_ms"),
    )


_Parser = Callable[[list[Any], Limits], Message]
# Each payload type: its field count after the tag, and its parser (fields, limits) -> message.
_PARSERS: Final[dict[MsgType, tuple[int, _Parser]]] = {
    MsgType.HELLO: (6, _hello),
    MsgType.PING: (2, lambda f, _: m.Ping(_int(f[0], "seq", U64), _gossip(f[1]))),
    MsgType.PING_REQ: (3, lambda f, _: m.PingReq(*_probe(f))),
    MsgType.PING_ACK: (3, lambda f, _: m.PingAck(*_probe(f))),
    MsgType.DIGEST: (2, _digest),
    MsgType.MEMORY_SYNC: (9, _sync),
    MsgType.SYNC_ACK: (2, lambda f, _: m.SyncAck(_id16(f[0], "batch_id"), _node(f[1], "node"))),
    MsgType.RESUME: (2, lambda f, _: m.Resume(_id16(f[0], "transfer_id"), _u32(f[1], "next"))),
    MsgType.MEMORY_QUERY: (5, _query),
    MsgType.MEMORY_RESPONSE: (5, _response),
    MsgType.ERROR: (3, _error),
    MsgType.HUB_CLAIM: (6, _claim),
    MsgType.HUB_RELAY: (4, _relay),
    MsgType.STATS_REPORT: (1, lambda f, _: _report_of(f[0])),
    MsgType.STATS_PUBLISH: (3, _publish),
    MsgType.LEASE_REQUEST: (4, _lease_request),
    MsgType.LEASE_GRANT: (7, _lease_grant),
    MsgType.LEASE_RELEASE: (
        3,
        lambda f, _: m.LeaseRelease(
            _lease_name(f[0]), _node(f[1], "node_id"), _int(f[2], "token", U64)
        ),
    ),
}


def _wire_gossip(gossip: tuple[MemberUpdate, ...]) -> list[Any]:
    """Return gossip as `[[node, state, incarnation, address], ...]`."""
    return [[g.node_id, int(g.state), g.incarnation, g.address] for g in gossip]


def _to_wire(msg: Message) -> tuple[MsgType, list[Any]]:
    """Return the msg_type and the payload fields that follow the tag."""
    match msg:
        case m.Hello():
            fields = [msg.node_id, msg.incarnation, list(msg.tiers), msg.profile]
            return MsgType.HELLO, [*fields, msg.hub_eligible, msg.software]
        case m.Ping():
            return MsgType.PING, [msg.seq, _wire_gossip(msg.gossip)]
        case m.PingReq() | m.PingAck():
            kind = MsgType.PING_REQ if isinstance(msg, m.PingReq) else MsgType.PING_ACK
            return kind, [msg.seq, msg.target, _wire_gossip(msg.gossip)]
        case m.Digest():
            return MsgType.DIGEST, [[[tier, root] for tier, root in msg.roots], msg.reply]
        case m.MemorySync():
            c = msg.chunk
            chunk = None if c is None else [c.transfer_id, c.index, c.total, c.total_bytes]
            checksum = hashlib.sha256(msg.body).digest()
            head = [msg.batch_id, msg.source, msg.target, msg.tier, int(msg.kind), msg.items]
            return MsgType.MEMORY_SYNC, [*head, checksum, chunk, msg.body]
        case m.SyncAck():
            return MsgType.SYNC_ACK, [msg.batch_id, msg.node_id]
        case m.Resume():
            return MsgType.RESUME, [msg.transfer_id, msg.next_index]
        case m.MemoryQuery():
            return MsgType.MEMORY_QUERY, [msg.query_id, msg.tier, msg.vector, msg.k, list(msg.ids)]
        case m.MemoryResponse():
            records = [[i, r] for i, r in msg.records]
            hits = [[i, float(s) if type(s) is int else s] for i, s in msg.hits]  # ints are floats
            return MsgType.MEMORY_RESPONSE, [msg.query_id, msg.ok, records, hits, msg.error]
        case m.ErrorReport():
            detail = [[k, v] for k, v in msg.detail.items()]
            return MsgType.ERROR, [msg.code, msg.message, detail]
        case m.HubClaim():
            fields = [msg.node_id, msg.term, msg.seq, msg.score, msg.public_key]
            return MsgType.HUB_CLAIM, [*fields, msg.signature]
        case m.HubRelay():
            return MsgType.HUB_RELAY, [msg.origin, msg.public_key, msg.signature, msg.frame]
        case m.StatsReport():
            return MsgType.STATS_REPORT, [_wire_report(msg)]
        case m.StatsPublish():
            reports = [_wire_report(r) for r in msg.reports]
            return MsgType.STATS_PUBLISH, [msg.hub_id, msg.term, reports]
        case m.LeaseRequest():
            return MsgType.LEASE_REQUEST, [msg.request_id, msg.node_id, msg.name, msg.ttl_ms]
        case m.LeaseGrant():
            head = [msg.request_id, msg.name, msg.holder, msg.granted]
            return MsgType.LEASE_GRANT, [*head, msg.token, msg.term, msg.ttl_ms]
        case m.LeaseRelease():
            return MsgType.LEASE_RELEASE, [msg.name, msg.node_id, msg.token]
    raise MessageError(f"not a message: {type(msg).__name__}")


def _wire_report(report: m.StatsReport) -> list[Any]:
    """Return a StatsReport as `[node_id, [[tier, rate, size, latency, ...], ...]]`."""
    return [
        report.node_id,
        [
            [
                t.tier,
                float(t.syncs_per_min),
                float(t.items_per_batch),
                float(t.latency_ms),
                t.p2p,
                t.relayed,
                t.backlog,
                [[k, n] for k, n in t.conflicts],
            ]
            for t in report.tiers
        ],
    ]


def stats_report_bytes(report: m.StatsReport) -> int:
    """Return the bytes `report` adds to a STATS_PUBLISH payload (before compression).

    A report that cannot be packed (a lone surrogate in a string) counts as too large to
    publish.
    """
    try:
        return len(msgpack.packb(_wire_report(report), use_bin_type=True))
    except (ValueError, TypeError, OverflowError):
        return U64


def stats_publish_overhead(hub_id: str) -> int:
    """Return an upper bound on a STATS_PUBLISH frame's bytes around its reports.

    Header, payload array, tag, hub id (string header of up to 3 bytes), term (up to 9),
    reports array header (up to 5). With `stats_report_bytes` of every report added, this
    bounds the whole frame: compression is kept only when it makes the payload smaller.
    """
    return HEADER.size + 1 + 1 + 3 + len(hub_id.encode("utf-8", "replace")) + 9 + 5


def response_entry_bytes(item_id: str, value: str | float) -> int:
    """Return the bytes one record or hit adds to a MEMORY_RESPONSE payload (before compression).

    An entry that cannot be packed (a lone surrogate in a string) counts as too large to send.
    """
    try:
        return len(msgpack.packb([item_id, value], use_bin_type=True))
    except (ValueError, TypeError, OverflowError):
        return U64


def response_overhead(response: m.MemoryResponse) -> int:
    """Return an upper bound on a MEMORY_RESPONSE frame's bytes besides its records and hits.

    Header, and the payload with both lists empty plus the 4 bytes each list's header may
    grow by. With `response_entry_bytes` of every entry added, this bounds the whole frame:
    compression is kept only when it makes the payload smaller.
    """
    _kind, fields = _to_wire(m.MemoryResponse(response.query_id, response.ok, error=response.error))
    payload = msgpack.packb([int(MsgType.MEMORY_RESPONSE), *fields], use_bin_type=True)
    return HEADER.size + len(payload) + 2 * 4


def batch_count_of(msg: Message) -> int:
    """Return the header batch_count for `msg`: its entries, or 1 for MEMORY_SYNC."""
    match msg:
        case m.Ping() | m.PingReq() | m.PingAck():
            return len(msg.gossip)
        case m.Digest():
            return len(msg.roots)
        case m.MemorySync():
            return 1
        case m.MemoryQuery():
            return len(msg.ids)
        case m.MemoryResponse():
            return len(msg.records) + len(msg.hits)
        case m.HubRelay():
            return 1
        case m.StatsReport():
            return len(msg.tiers)
        case m.StatsPublish():
            return len(msg.reports)
    return 0


def encode_message(
    msg: Message,
    *,
    priority: Priority = Priority.NORMAL,
    timestamp_ns: int = 0,
    flags: int = Flags.NONE,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Return a whole frame for `msg`; raise MessageError where a decoder with `limits` would."""
    kind, fields = _to_wire(msg)
    batch_count = batch_count_of(msg)
    if flags & _ENVELOPE_FLAGS:
        raise MessageError("ENCRYPTED and SIGNED are reserved for the envelope layer")
    if isinstance(msg, m.HubRelay):
        flags |= Flags.SIGNED  # the one signed envelope: an origin-signed relayed frame
    _int(timestamp_ns, "timestamp_ns", U64)
    _int(batch_count, "batch_count", limits.max_batch_count)
    _PARSERS[kind][1](fields, limits)  # refuse locally what every peer would refuse
    flags = flags & ~Flags.CHUNKED
    if isinstance(msg, m.MemorySync) and msg.chunk is not None:
        flags |= Flags.CHUNKED
    try:
        payload: bytes = msgpack.packb([int(kind), *fields], use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. lone surrogates in a str
        raise MessageError(f"cannot pack {kind.name}: {exc}") from None
    if len(payload) > limits.max_decompressed_bytes:
        raise MessageError(f"{kind.name} payload of {len(payload)} bytes over the cap")
    level = priority if type(priority) is Priority else Priority(priority)
    frame = Frame(kind, payload, level, flags, batch_count, timestamp_ns)
    data = encode_frame(frame)
    if len(data) > limits.max_frame_bytes:
        raise MessageError(f"{kind.name} frame of {len(data)} bytes over the cap: chunk the body")
    return data


# How `_count_objects` steps over each MessagePack lead byte: the whole object's size when
# that is fixed; else the size of the length field of a str, bin or ext (an ext also has a
# type byte), or of the count field of an array or map and the objects per count.
_FIXED_SIZE: Final = {
    **{0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9},  # nil, false, true, float 32/64
    **{0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9},  # (u)int 8-64
    **{0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18},  # fixext 1-16
    **{lead: 1 for lead in (*range(0x80), *range(0xE0, 0x100))},  # fixint
    **{lead: 1 + (lead & 0x1F) for lead in range(0xA0, 0xC0)},  # fixstr
}
_OBJECT_SIZE: Final = tuple(_FIXED_SIZE.get(lead, 0) for lead in range(256))
_LENGTH_SIZE: Final = {
    **{0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)},
    **{0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)},  # ext 8/16/32
}
_COUNT_SIZE: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _count_objects(payload: bytes, cap: int) -> int:
    """Return how many objects the payload declares; refuse over `cap`; build nothing.

    Reads only type and length headers and skips str/bin/ext bodies, so it costs one step
    per object, at most `cap` steps. Without it, 16 MiB inflated from a 28 KiB frame unpack
    to 16 million empty arrays (1 GiB, seconds) before any field check could refuse them.
    It also refuses arrays claiming more objects than bytes remain; anything else wrong
    (a truncated header, the unused lead byte 0xC1, trailing bytes) is left to the unpacker.
    """
    sizes, lengths, counts = _OBJECT_SIZE, _LENGTH_SIZE, _COUNT_SIZE  # locals: a hot loop
    pos, end, pending, declared = 0, len(payload), 1, 1
    try:
        while pending and pos < end:
            pending -= 1
            lead = payload[pos]
            if size := sizes[lead]:
                pos += size
                continue
            if 0x90 <= lead <= 0x9F:  # fixarray
                count = lead - 0x90
                pos += 1
            elif lead == 0xD9 or lead == 0xC4:  # str 8, bin 8: the common lengths
                pos += 2 + payload[pos + 1]
                continue
            elif lead in lengths:  # str, bin, ext: skip the body
                width, extra = lengths[lead]
                pos += 1 + width + extra + int.from_bytes(payload[pos + 1 : pos + 1 + width])
                continue
            elif lead <= 0x8F:  # fixmap: a key and a value per count
                count = 2 * (lead - 0x80)
                pos += 1
            elif lead in counts:
                width, per = counts[lead]
                count = per * int.from_bytes(payload[pos + 1 : pos + 1 + width])
                pos += 1 + width
            else:
                break  # 0xC1 is never used: the unpacker refuses it
            declared += count
            if declared > cap:
                raise MessageError(f"payload declares over the cap of {cap} objects")
            pending += count
            if pending > end - pos:  # every object takes at least one byte
                raise MessageError(f"payload declares {pending} more objects than it has bytes")
    except IndexError:
        pass  # a truncated header: the unpacker refuses it
    return declared


def _unpack(payload: bytes, limits: Limits) -> list[Any]:
    """Return the payload's top-level array, with every length capped before allocation."""
    # An array of n elements needs at least n bytes, so len(payload) also bounds arrays.
    max_array = min(len(payload), max(limits.max_batch_count, 16))
    if len(payload) > MAX_PAYLOAD_OBJECTS:  # each object takes at least one byte
        _count_objects(payload, MAX_PAYLOAD_OBJECTS)
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            max_str_len=limits.max_decompressed_bytes,
            max_bin_len=limits.max_decompressed_bytes,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types: ExtraData, FormatError, Unicode...
        raise MessageError(f"malformed payload: {type(exc).__name__}") from None
    return _sized(obj, "payload", list, max_array)


def decode_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Frame, Message]:
    """Return the frame and its checked message; raise FrameError (only) on anything wrong."""
    frame = decode_frame(data, limits)
    signed = frame.msg_type is MsgType.HUB_RELAY
    if frame.flags & Flags.ENCRYPTED or bool(frame.flags & Flags.SIGNED) != signed:
        raise MessageError("SIGNED is set exactly on HUB_RELAY; ENCRYPTED is reserved")
    entry = _PARSERS.get(frame.msg_type)
    if entry is None:
        raise MessageError(f"no payload codec for {frame.msg_type.name} (reserved)")
    arity, parser = entry
    fields = _unpack(frame.payload, limits)
    tag = fields[0] if fields else None
    if type(tag) is not int or tag != frame.msg_type:
        raise MessageError(f"payload tag {_show(tag)} does not match header {frame.msg_type.name}")
    fields = _sized(fields[1:], frame.msg_type.name, list, arity, arity)
    msg = parser(fields, limits)
    expected = batch_count_of(msg)
    if frame.batch_count != expected:
        raise MessageError(f"batch_count {frame.batch_count} but the payload has {expected}")
    if isinstance(msg, m.MemorySync):
        if hashlib.sha256(msg.body).digest() != fields[_SYNC_CHECKSUM_AT]:
            raise MessageError("checksum mismatch")
        if bool(frame.flags & Flags.CHUNKED) != (msg.chunk is not None):
            raise MessageError("CHUNKED flag disagrees with the payload")
    elif frame.flags & Flags.CHUNKED:
        raise MessageError(f"CHUNKED flag on {frame.msg_type.name}")
    return frame, msg
