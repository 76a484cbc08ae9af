"""Structured control requests for programs: JSON fields in, JSON out, no argv to parse.

The CLI sends its argv (`{"op": "cli", ...}`) so that a command behaves the same with or
without a daemon. A program that writes often (an agent keeping its memory in the mesh)
sends `{"op": "put", ...}` over one kept-open connection (`mesh.control.ControlClient`)
instead: no argument parser, no captured stdout, and the item comes back as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from mesh.api import Mesh
from mesh.frames import Priority
from mesh.inputs import AckLevel

PUT_FIELDS = frozenset(
    {"op", "tier", "content", "id", "embedding", "metadata", "tags", "confidence"}
    | {"priority", "ack", "timeout_s"}
)


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


def _enum_field(request: Mapping[str, Any], name: str, default: str, choices: list[str]) -> str:
    value = _field(request, name, str) or default
    if value.lower() not in choices:
        raise ValueError(f"put: {name} must be one of {', '.join(choices)}, not {value!r:.40}")
    return str(value.lower())


async def put(mesh: Mesh, request: Mapping[str, Any]) -> dict[str, Any]:
    """Store one item from a `put` request; return it as JSON (`embedding_dim`, no vector).

    Fields: `tier` and `content` (required), `id`, `embedding` (a list of numbers),
    `metadata` (an object), `tags` (strings), `confidence`, `priority` (low … emergency),
    `ack` (local, peer, hub, all) and `timeout_s`. An unknown field or a wrong type raises
    ValueError and stores nothing; `Mesh.put` decides everything else.
    """
    unknown = set(request) - PUT_FIELDS
    if unknown:
        raise ValueError(f"put: unknown field(s) {', '.join(sorted(unknown))}")
    tier, content = _field(request, "tier", str), _field(request, "content", str)
    if tier is None or content is None:
        raise ValueError("put needs tier and content (strings)")
    tags = _field(request, "tags", list) or []
    if not all(isinstance(t, str) for t in tags):
        raise ValueError("put: tags must be a list of strings")
    embedding = _field(request, "embedding", list)
    priority = _enum_field(request, "priority", "normal", [p.name.lower() for p in Priority])
    ack = _enum_field(request, "ack", "local", [a.value for a in AckLevel])
    confidence = _field(request, "confidence", NUMBER)
    timeout_s = _field(request, "timeout_s", NUMBER)
    item = await mesh.put(
        tier,
        content,
        id=_field(request, "id", str),
        embedding=embedding,
        metadata=_field(request, "metadata", dict),
        tags=tags,
        confidence=1.0 if confidence is None else float(confidence),
        priority=Priority[priority.upper()],
        ack=AckLevel(ack),
        timeout_s=10.0 if timeout_s is None else float(timeout_s),
    )
    data = item.to_json()
    vector = data.pop("embedding")
    data["embedding_dim"] = None if vector is None else len(vector)
    return data
