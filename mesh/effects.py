"""Effects of the sans-IO Node: imperative instructions the driver carries out in order.

Order matters: a `Persist` must be committed before any later effect of the same list is
carried out, so a `WriteAcked` after it never reveals an uncommitted write. A driver may
make urgent `Send`s of a change that carries no new clock ceiling while it commits (see
`mesh.runtime`): a crash then loses no acknowledged write and the clock restarts above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crdt.events import MemoryEvent
from crdt.item import MemoryItem
from crdt.memory import Change
from mesh.frames import Priority


@dataclass(frozen=True, slots=True)
class Send:
    """Send one encoded frame to a peer on the channel for its priority."""

    peer_id: str
    frame: bytes
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a link to a peer (the driver reports LinkUp or LinkDown later)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the link to a peer."""

    peer_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Persist:
    """Commit a change durably before carrying out any later effect."""

    change: Change


@dataclass(frozen=True, slots=True)
class Emit:
    """Deliver memory events to local subscribers (already persisted)."""

    events: tuple[MemoryEvent, ...]


@dataclass(frozen=True, slots=True)
class WriteAcked:
    """A requested write (or import) reached its durability level.

    `changed_ids` lists, for an import, the ids whose versions it changed here (sorted).
    """

    request_id: int
    items: tuple[MemoryItem, ...] = ()
    acked_by: tuple[str, ...] = ()
    changed_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteFailed:
    """A requested write failed validation or missed its durability level in time.

    When `applied` is True the write is committed locally and will still replicate; only
    the requested durability was not confirmed.
    """

    request_id: int
    reason: str
    applied: bool = False


@dataclass(frozen=True, slots=True)
class QueryAnswered:
    """A peer answered (or failed to answer) a MEMORY_QUERY."""

    request_id: int
    ok: bool
    result: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class LeaseAnswered:
    """The answer to `LeaseRequested` (same `request_id`).

    Granted: this node holds `name` until `ttl_s` from now on the hub's clock, fenced by
    `token` (larger than every earlier grant, in this term and all earlier terms). Refused:
    `holder` holds it for `ttl_s` more; or `error` says why there is no answer (no hub,
    timed out, the hub changed, not the hub, too many leases held, bad request).
    """

    request_id: int
    name: str
    granted: bool
    token: int = 0
    term: int = 0
    holder: str = ""
    ttl_s: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Log:
    """Something worth a log line: refusals, bad frames, membership changes."""

    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


Effect = (
    Send
    | Connect
    | Disconnect
    | Persist
    | Emit
    | WriteAcked
    | WriteFailed
    | QueryAnswered
    | LeaseAnswered
    | Log
)
