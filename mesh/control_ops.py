"""Structured control requests for programs: JSON fields in, JSON out, no argv to parse.

The CLI sends its argv (`{"op": "cli", ...}`) so that a command behaves the same with or
without a daemon. A program that writes often (an agent keeping its memory in the mesh)
sends `{"op": "put", ...}` over one kept-open connection (`mesh.control.ControlClient`)
instead: no argument parser, no captured stdout, and the item comes back as JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from crdt.item import MemoryItem
from mesh.api import Mesh
from mesh.frames import Priority
from mesh.inputs import AckLevel

PUT_FIELDS = frozenset(
    {"op", "tier", "content", "id", "embedding", "metadata", "tags", "citations"}
    | {"confidence", "priority", "ack", "timeout_s"}
)
MAX_TIMEOUT_S = 300.0  # an ack wait longer than this is a mistake, not a wish
PRIORITY_NAMES = tuple(p.name.lower() for p in Priority)
ACK_NAMES = tuple(a.value for a in AckLevel)


NUMBER = (int, float)
KIND_NAMES = MappingProxyType(
    {str: "a string", NUMBER: "a number", dict: "a JSON object", list: "a list"}
)


def _field(request: Mapping[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    """Return the field `name` (None when absent); raise ValueError if it has another type."""
    value = request.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise ValueError(f"put: {name} must be {KIND_NAMES[kinds]}, not {value!r:.40}")
    return value


def _strings(request: Mapping[str, Any], name: str) -> list[str]:
    """Return the field `name` as a list of strings (empty when absent)."""
    values = _field(request, name, list) or []
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"put: {name} must be a list of strings")
    return values


def _enum_field(request: Mapping[str, Any], name: str, default: str, choices: Sequence[str]) -> str:
    value = _field(request, name, str)
    if value is None:
        return default
    if value.lower() not in choices:
        raise ValueError(f"put: {name} must be one of {', '.join(choices)}, not {value!r:.40}")
    return str(value.lower())


async def put(mesh: Mesh, request: Mapping[str, Any]) -> dict[str, Any]:
    """Store one item from a `put` request; return it as JSON (see `start_put`)."""
    return await start_put(mesh, request)


def start_put(mesh: Mesh, request: Mapping[str, Any]) -> Awaitable[dict[str, Any]]:
    """Check a `put` request and hand it to `Mesh.start_put` now; await the item as JSON.

    The JSON is the item's without its vector (`embedding_dim` says its size).

    Fields: `tier` and `content` (required), `id`, `embedding` (a list of numbers),
    `metadata` (an object), `tags` and `citations` (strings), `confidence`, `priority`
    (low … emergency), `ack` (local, peer, hub, all) and `timeout_s` (how long a wider ack
    may take, at most MAX_TIMEOUT_S). An unknown field or a wrong type raises ValueError
    and stores nothing; the memory decides everything else, as for `Mesh.put`.
    """
    unknown = set(request) - PUT_FIELDS
    if unknown:
        raise ValueError(f"put: unknown field(s) {', '.join(sorted(unknown))}")
    tier, content = _field(request, "tier", str), _field(request, "content", str)
    if tier is None or content is None:
        raise ValueError("put needs tier and content (strings)")
    embedding = _field(request, "embedding", list)
    if embedding is not None and not all(
        isinstance(v, NUMBER) and not isinstance(v, bool) for v in embedding
    ):
        raise ValueError("put: embedding must be a list of numbers")
    priority = _enum_field(request, "priority", "normal", PRIORITY_NAMES)
    ack = _enum_field(request, "ack", "local", ACK_NAMES)
    confidence = _field(request, "confidence", NUMBER)
    timeout_s = _field(request, "timeout_s", NUMBER)
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:  # NaN fails too
        raise ValueError(f"put: timeout_s must be in (0, {MAX_TIMEOUT_S:g}], not {timeout_s!r}")
    item = mesh.start_put(
        tier,
        content,
        id=_field(request, "id", str),
        embedding=embedding,
        metadata=_field(request, "metadata", dict),
        tags=_strings(request, "tags"),
        citations=_strings(request, "citations"),
        confidence=1.0 if confidence is None else confidence,  # the memory checks its range
        priority=Priority[priority.upper()],
        ack=AckLevel(ack),
        timeout_s=10.0 if timeout_s is None else float(timeout_s),
    )
    return _as_json(item)


async def _as_json(pending: Awaitable[MemoryItem]) -> dict[str, Any]:
    return (await pending).to_json(with_embedding=False)
