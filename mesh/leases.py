"""Advisory leases from the hub, for the asyncio API (`Mesh.lease`) and `memmesh lease`.

A lease is advisory: the hub grants `name` to one node at a time until it expires or is
released, with a fencing token that grows with every grant and every hub term. Nothing
stops a node from writing without a lease; a lease dies with the hub that granted it (the
new hub starts an empty table in a higher term). Whoever acts on a leased resource must
check the token: a larger token seen means the holder's lease is over. See README and
docs/ARCHITECTURE.md, "Leases".
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from crdt.errors import MemmeshError
from mesh.effects import LeaseAnswered
from mesh.inputs import LeaseReleased, LeaseRequested

if TYPE_CHECKING:
    from mesh.runtime import NodeRuntime

DEFAULT_TIMEOUT_S = 5.0


class LeaseError(MemmeshError):
    """A lease was not granted (held by another node, no hub, timed out, no daemon)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: fenced by `token` (from hub term `term`), valid until `expires_at`.

    `expires_at` is Unix time on this node's clock: the hub's ttl counted from when the
    answer arrived, so it is never later than the hub's own expiry (clocks aside).
    """

    name: str
    token: int
    term: int
    holder: str
    ttl_s: float
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        """Return the `memmesh lease --json` object."""
        return {
            "name": self.name,
            "granted": True,
            "token": self.token,
            "term": self.term,
            "holder": self.holder,
            "ttl_s": self.ttl_s,
            "expires_at": self.expires_at,
        }


async def acquire(
    runtime: NodeRuntime, name: str, ttl_s: float, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Lease:
    """Ask the hub for `name` for `ttl_s` seconds; return the Lease or raise LeaseError."""
    request_id, future = runtime.new_request_id()
    runtime.submit(LeaseRequested(request_id, name, float(ttl_s), float(timeout_s)))
    try:
        async with asyncio.timeout(timeout_s + 1.0):
            answer = await future
    except TimeoutError:
        raise LeaseError(f"lease {name!r}: no answer from the hub within {timeout_s:g} s") from None
    assert isinstance(answer, LeaseAnswered)
    if answer.granted:
        return Lease(
            name,
            answer.token,
            answer.term,
            answer.holder,
            answer.ttl_s,
            runtime.wall_time(runtime.now()) + answer.ttl_s,
        )
    if answer.error:
        raise LeaseError(f"lease {name!r} not granted: {answer.error}")
    raise LeaseError(
        f"lease {name!r} not granted: held by {answer.holder} for {answer.ttl_s:.1f} s more "
        f"(term {answer.term})"
    )


def release(runtime: NodeRuntime, name: str, token: int) -> None:
    """Give up the lease `name` held under `token` (fire and forget; expiry is the backstop)."""
    runtime.submit(LeaseReleased(name, int(token)))


class LeaseRequest:
    """`await mesh.lease(...)` returns the Lease; `async with mesh.lease(...)` releases it."""

    def __init__(self, runtime: NodeRuntime | None, name: str, ttl_s: float, timeout_s: float):
        """Remember the request; nothing is sent until awaited or entered."""
        self._runtime = runtime
        self._name, self._ttl_s, self._timeout_s = name, ttl_s, timeout_s
        self._lease: Lease | None = None

    async def _acquire(self) -> Lease:
        if self._runtime is None:
            raise LeaseError("leases need a running daemon (`memmesh run`): the hub grants them")
        return await acquire(self._runtime, self._name, self._ttl_s, self._timeout_s)

    def __await__(self) -> Generator[Any, None, Lease]:
        """Acquire the lease."""
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        """Acquire the lease for the block."""
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the lease held for the block."""
        if self._lease is not None and self._runtime is not None:
            release(self._runtime, self._lease.name, self._lease.token)
            self._lease = None
