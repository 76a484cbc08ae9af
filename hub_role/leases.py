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

import heapq
from dataclasses import dataclass
from typing import Final

TERM_SHIFT: Final = 32
MAX_GRANTS_PER_TERM: Final = (1 << TERM_SHIFT) - 1
MAX_LEASES: Final = 16_384  # live leases one hub holds, all nodes together
MAX_LEASES_PER_HOLDER: Final = 1_024  # live leases of one node


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: `holder` may act on `name` until `expires_at`, fenced by `token`."""

    name: str
    holder: str
    token: int
    term: int
    expires_at: float


class LeaseLimitReached(Exception):
    """The table refused a new name: it holds as many live leases as it may (the reason)."""


class TermExhausted(Exception):
    """Every token of the table's term is granted: only `set_term` to a higher term helps."""


class LeaseTable:
    """The hub's lease table for one hub node; `set_term` on every new term it serves.

    Bounded: expired leases are pruned (on every request, and by `prune`, which the hub
    calls on its timer), and a request for a name nobody holds is refused with
    `LeaseLimitReached` while `max_leases` names are held, or `max_per_holder` by the
    requester. Renewals are always granted. A refusal takes no token, so tokens keep
    growing grant after grant whatever is pruned or refused. A term has
    `MAX_GRANTS_PER_TERM` tokens; once they are all granted (`exhausted`) the table grants
    nothing more until it serves a higher term.
    """

    def __init__(
        self,
        term: int = 0,
        *,
        max_leases: int = MAX_LEASES,
        max_per_holder: int = MAX_LEASES_PER_HOLDER,
        grants: int = 0,
    ) -> None:
        """Start empty, serving `term`, with `grants` of its tokens already granted."""
        if max_leases < 1 or max_per_holder < 1:
            raise ValueError("max_leases and max_per_holder must be >= 1")
        if not 0 <= grants <= MAX_GRANTS_PER_TERM:
            raise ValueError(f"grants must be in [0, {MAX_GRANTS_PER_TERM}]")
        self._term = term
        self._grants = grants
        self.max_leases = max_leases
        self.max_per_holder = max_per_holder
        self._leases: dict[str, Lease] = {}
        self._held: dict[str, int] = {}  # holder -> leases recorded
        # (expires_at, token, name) of every grant, lazily pruned: an entry whose lease
        # was renewed or released since is skipped when it comes up.
        self._expiry: list[tuple[float, int, str]] = []

    @property
    def term(self) -> int:
        """Return the term the table grants in."""
        return self._term

    @property
    def exhausted(self) -> bool:
        """Return True when every token of the term is granted (serve a higher term to go on)."""
        return self._grants >= MAX_GRANTS_PER_TERM

    def set_term(self, term: int) -> None:
        """Serve a new (higher) term: later tokens exceed every token of earlier terms."""
        if term > self._term:
            self._term = term
            self._grants = 0

    def holder(self, name: str, now: float) -> Lease | None:
        """Return the live lease on `name`, or None."""
        lease = self._leases.get(name)
        if lease is not None and now >= lease.expires_at:
            self._forget(lease)
            return None
        return lease

    def prune(self, now: float) -> int:
        """Forget every lease expired at `now`; return how many were forgotten."""
        pruned = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _at, token, name = heapq.heappop(expiry)
            lease = self._leases.get(name)
            if lease is not None and lease.token == token:
                self._forget(lease)
                pruned += 1
        if len(expiry) > 2 * len(self._leases) + 64:
            # Renewals and releases left stale entries: rebuild from the live leases.
            self._expiry = [(x.expires_at, x.token, x.name) for x in self._leases.values()]
            heapq.heapify(self._expiry)
        return pruned

    def request(self, name: str, node_id: str, ttl_s: float, now: float) -> tuple[bool, Lease]:
        """Grant (or renew, with a new token) `name` to `node_id`; else return the holder's.

        Raise LeaseLimitReached, granting nothing, for a name not held while the table
        (or `node_id`) is at its limit; raise TermExhausted, granting nothing, for a grant
        while `exhausted`.
        """
        self.prune(now)
        current = self.holder(name, now)
        if current is not None and current.holder != node_id:
            return False, current
        if current is None:
            if len(self._leases) >= self.max_leases:
                raise LeaseLimitReached(
                    f"the hub holds {len(self._leases)} leases, its limit: release some first"
                )
            if self._held.get(node_id, 0) >= self.max_per_holder:
                raise LeaseLimitReached(
                    f"{node_id} holds {self.max_per_holder} leases, the limit per node: "
                    "release some first"
                )
        if self.exhausted:
            raise TermExhausted(f"all {MAX_GRANTS_PER_TERM} lease tokens of term {self._term} used")
        self._grants += 1
        token = (self._term << TERM_SHIFT) | self._grants
        lease = Lease(name, node_id, token, self._term, now + ttl_s)
        if current is None:
            self._held[node_id] = self._held.get(node_id, 0) + 1
        self._leases[name] = lease
        heapq.heappush(self._expiry, (lease.expires_at, token, name))
        return True, lease

    def release(self, name: str, node_id: str, token: int) -> bool:
        """Release `name` if `node_id` holds it under `token`; return True if released."""
        lease = self._leases.get(name)
        if lease is None or lease.holder != node_id or lease.token != token:
            return False
        self._forget(lease)
        return True

    def _forget(self, lease: Lease) -> None:
        del self._leases[lease.name]
        left = self._held[lease.holder] - 1
        if left:
            self._held[lease.holder] = left
        else:
            del self._held[lease.holder]

    def __len__(self) -> int:
        """Return the number of leases recorded (expired ones go at the next prune)."""
        return len(self._leases)
