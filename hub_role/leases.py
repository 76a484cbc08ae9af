"""Advisory leases held by the hub: pure, time comes in as `now` (the hub's clock).

What a lease guarantees, and what it does not:

- While one hub serves a term, at most one node holds a given name at a time, until its
  ttl runs out (the hub's clock) or it releases it.
- Every grant carries a **fencing token** that is larger than every token granted before
  by any hub of a lower or equal term: `token = term << 32 | n`, `n` counting grants in
  the term. A resource that remembers the highest token it has seen, and refuses lower
  ones, is safe even when two nodes believe they hold the lease.
- It is advisory: nothing stops a node from acting without a lease. The table lives only
  in the hub's memory. After a failover (or in a split brain, where each side has a hub)
  another node can be granted the same name while an old holder still believes it holds
  it; the old holder's token is then lower (older term), which is what fencing detects.
- Expiry uses the hub's clock only; a holder should treat its lease as lost well before
  `ttl` has passed on its own clock (clock rates differ, messages take time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

TERM_SHIFT: Final = 32
MAX_GRANTS_PER_TERM: Final = (1 << TERM_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: `holder` may act on `name` until `expires_at`, fenced by `token`."""

    name: str
    holder: str
    token: int
    term: int
    expires_at: float


class LeaseTable:
    """The hub's lease table for one hub node; `set_term` on every new term it serves."""

    def __init__(self, term: int = 0) -> None:
        """Start empty, serving `term`."""
        self._term = term
        self._grants = 0
        self._leases: dict[str, Lease] = {}

    @property
    def term(self) -> int:
        """Return the term the table grants in."""
        return self._term

    def set_term(self, term: int) -> None:
        """Serve a new (higher) term: later tokens exceed every token of earlier terms."""
        if term > self._term:
            self._term = term
            self._grants = 0

    def holder(self, name: str, now: float) -> Lease | None:
        """Return the live lease on `name`, or None."""
        lease = self._leases.get(name)
        if lease is not None and now >= lease.expires_at:
            del self._leases[name]
            return None
        return lease

    def request(self, name: str, node_id: str, ttl_s: float, now: float) -> tuple[bool, Lease]:
        """Grant (or renew, with a new token) `name` to `node_id`; else return the holder's."""
        current = self.holder(name, now)
        if current is not None and current.holder != node_id:
            return False, current
        if self._grants >= MAX_GRANTS_PER_TERM:
            raise OverflowError("lease grants exhausted for this term")
        self._grants += 1
        token = (self._term << TERM_SHIFT) | self._grants
        lease = Lease(name, node_id, token, self._term, now + ttl_s)
        self._leases[name] = lease
        return True, lease

    def release(self, name: str, node_id: str, token: int) -> bool:
        """Release `name` if `node_id` holds it under `token`; return True if released."""
        lease = self._leases.get(name)
        if lease is None or lease.holder != node_id or lease.token != token:
            return False
        del self._leases[name]
        return True

    def __len__(self) -> int:
        """Return the number of leases recorded (some may have expired)."""
        return len(self._leases)
