"""Hub election: pure, no I/O, no clock; time comes in as `now`, signing via protocols.

Rules (docs/ARCHITECTURE.md, "Hub role"):

- A claim is `(node_id, term, seq, score)` signed by the claimant. Claims are ranked by
  `(term, score, node_id)`; within a term the higher `(score, node_id)` wins.
- A node with no live hub *campaigns*: after a delay that grows with the number of live
  members whose id sorts above its own (so the best usually claims first and the others
  then stay quiet), an eligible node (score > 0, has a signer) claims `known_term + 1`.
- On a claim that outranks its hub, a node adopts it, except a campaigning node or the
  hub itself, which counter-claims at the same term when its own `(score, id)` is higher
  (bully rule): the best eligible live node wins the election.
- Stickiness: a node with a live hub adopts no same-term rival that the hub outranks, and
  unseats a healthy hub (claims `term + 1`) only if its score beats the hub's by
  `unseat_margin`.
- The hub re-sends its claim every `heartbeat_s` with a new `seq`; a hub not heard from for
  `timeout_s`, or declared dead by SWIM, is lost.
- A claim with a bad signature, a key not bound to its node id, a term below the adopted
  hub's or above MAX_TERM is ignored and counted in `rejected` by reason.
- A hub that learns another node claimed its term (a boot race, a healed split brain)
  marks it contested; it moves to the next term before granting a lease, so fencing tokens
  stay larger than every one granted before, by either hub.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from hub_role.config import HubConfig
from hub_role.signing import Signer, Verifier
from mesh.messages import HubClaim

_DOMAIN: Final = b"memmesh/hub-claim/v1\x00"
_NUMBERS: Final = struct.Struct(">QQQH")
# The highest term a claim may carry: lease tokens are `term << 32 | n` in a u64, and a
# campaign claims term + 1. A signed claim above it (a member's, with any term up to
# 2**64 - 1) made every node's next campaign overflow the claim encoding, mesh-wide.
MAX_TERM: Final = 2**32 - 2
_SEEN_CAPACITY: Final = 4096
_STAGGER_RANKS: Final = 20


def claim_bytes(node_id: str, term: int, seq: int, score: int, public_key: bytes) -> bytes:
    """Return the exact bytes a claim's signature covers (domain-separated, length-prefixed)."""
    raw_id = node_id.encode("utf-8")
    return _DOMAIN + _NUMBERS.pack(term, seq, score, len(raw_id)) + raw_id + public_key


@dataclass(frozen=True, slots=True)
class HubInfo:
    """The hub a node follows: who, in which term, with what score, adopted at `since`."""

    id: str
    term: int
    score: int
    since: float  # the node's `now` when it adopted this hub (this id)


@dataclass(slots=True)
class ClaimOutcome:
    """What to do after a claim: forward it (new and valid), and claims to send ourselves."""

    accepted: bool
    forward: bool
    reason: str = ""  # why it was refused or ignored ("" when accepted)
    claims: list[HubClaim] = field(default_factory=list)


class Election:
    """One node's view of the hub role; feed it claims, deaths and ticks."""

    def __init__(
        self,
        node_id: str,
        score: int,
        config: HubConfig,
        verifier: Verifier,
        signer: Signer | None = None,
        *,
        now: float = 0.0,
    ) -> None:
        """Start with no hub; an eligible node (score > 0 and a signer) campaigns after boot."""
        self.node_id = node_id
        self.score = score if signer is not None else 0
        self.config = config
        self._verifier = verifier
        self._signer = signer
        self._hub: HubInfo | None = None
        self._heard_at = now
        self._known_term = 0  # the highest valid term seen
        self._lost_term = 0  # a campaign claims above this
        self._campaign_at: float | None = now + config.boot_wait_s if self.eligible else None
        self._staggered = False  # the boot campaign's rank delay is added at its first due tick
        self._seq = 0
        self._next_heartbeat: float | None = None
        self._hub_seq = 0  # the newest seq heard from the hub in its term
        self._hub_claim: HubClaim | None = None  # the newest signed claim of the current hub
        self._lost: tuple[str, int, int] | None = None  # (id, term, seq) of the hub we lost
        # A term in which this node, as hub, knows another node also claimed the hub role
        # (a boot race, a healed split brain): both may have granted lease tokens in it.
        self._contested_term = 0
        self._seen: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self.rejected: dict[str, int] = {}
        self.changes = 0  # how many times the adopted hub (id or term) changed

    # ----------------------------------------------------------------- reading

    @property
    def eligible(self) -> bool:
        """Return True if this node may ever claim the hub role."""
        return self.score > 0 and self._signer is not None

    @property
    def hub(self) -> HubInfo | None:
        """Return the hub this node follows (possibly itself), or None."""
        return self._hub

    @property
    def is_hub(self) -> bool:
        """Return True if this node holds the hub role."""
        return self._hub is not None and self._hub.id == self.node_id

    @property
    def term(self) -> int:
        """Return the highest valid term this node has seen."""
        return self._known_term

    def next_deadline(self) -> float | None:
        """Return when `tick` next has work (heartbeat, hub timeout, campaign)."""
        times = [self._campaign_at, self._next_heartbeat]
        if self._hub is not None and not self.is_hub:
            times.append(self._heard_at + self.config.timeout_s)
        return min((t for t in times if t is not None), default=None)

    @property
    def hub_claim(self) -> HubClaim | None:
        """Return the newest signed claim of the current hub (to pass on to a new link)."""
        hub, claim = self._hub, self._hub_claim
        if hub is None or claim is None or (claim.node_id, claim.term) != (hub.id, hub.term):
            return None
        return claim

    # ----------------------------------------------------------------- inputs

    def on_claim(self, claim: HubClaim, now: float) -> ClaimOutcome:
        """Verify and apply a claim received from the network."""
        if claim.term > MAX_TERM:
            return self._reject("bad_term")
        key = (claim.node_id, claim.term, claim.seq)
        if self._seen.get(key) == claim.signature:
            return ClaimOutcome(False, False, "duplicate")
        if claim.node_id == self.node_id:
            return ClaimOutcome(False, False, "own")  # our own, flooded back
        signed = claim_bytes(claim.node_id, claim.term, claim.seq, claim.score, claim.public_key)
        reason = self._verifier.check(claim.node_id, claim.public_key, signed, claim.signature)
        if reason is not None:
            return self._reject(reason)
        self._seen[key] = claim.signature
        while len(self._seen) > _SEEN_CAPACITY:
            self._seen.popitem(last=False)
        hub = self._hub
        if hub is not None and claim.term < hub.term:
            return self._reject("stale_term")
        lost = self._lost
        if hub is None and lost is not None:
            same = (claim.node_id, claim.term) == (lost[0], lost[1])
            if claim.term < lost[1] or (same and claim.seq <= lost[2]):
                return self._reject("stale_term")
        self._known_term = max(self._known_term, claim.term)
        if hub is not None and claim.node_id == hub.id:
            news = claim.term > hub.term or claim.score != hub.score
            if news:
                self._hub = HubInfo(hub.id, claim.term, claim.score, hub.since)
                self.changes += claim.term > hub.term
            if news or claim.seq > self._hub_seq:  # an old claim passed on proves nothing
                self._heard_at = now
                self._hub_claim = claim
            self._hub_seq = max(self._hub_seq, claim.seq) if claim.term == hub.term else claim.seq
            # A plain heartbeat is not forwarded: the hub sends it to each of its links, and
            # every node links to the hub. Flooding it cost ~2.6 KB/s per node at N=10.
            return ClaimOutcome(True, news)
        mine = (self.score, self.node_id)
        theirs = (claim.score, claim.node_id)
        if self.is_hub and hub is not None and claim.term == hub.term:
            self._contested_term = claim.term  # whoever stays hub, tokens may collide in it
        if hub is not None and claim.term == hub.term:
            # Same term, two hubs. An established one (past its first heartbeats) beats a
            # fresh one whatever their ranks: the fresh claim is a newcomer that campaigned
            # before it heard of the hub, and must not unseat it (stickiness).
            held = self._seq if self.is_hub else self._hub_seq
            if held > 2 and claim.seq <= 2:
                claims = [self._sign_claim(now)] if self.is_hub else []
                return ClaimOutcome(False, False, "established", claims)
            if held <= 2 and claim.seq > 2:
                self._adopt(HubInfo(claim.node_id, claim.term, claim.score, now), now)
                self._hub_seq = claim.seq
                self._hub_claim = claim
                return ClaimOutcome(True, True)
        if hub is not None and claim.term == hub.term and (hub.score, hub.id) >= theirs:
            # A same-term rival the hub outranks: the hub answers at once so it yields.
            claims = [self._sign_claim(now)] if self.is_hub else []
            return ClaimOutcome(False, True, "outranked", claims)
        # Counter-claim only in an election: we are the hub, or the claim is a fresh one
        # (first heartbeats of its term). A newcomer thus adopts an established hub.
        fresh = claim.seq <= 2
        contending = self.is_hub or (hub is None and fresh)
        if contending and self.eligible and mine > theirs:
            self._known_term = claim.term
            self._contested_term = claim.term  # its claimant may have granted tokens in it
            return ClaimOutcome(False, True, "outranked", [self._become_hub(claim.term, now)])
        self._adopt(HubInfo(claim.node_id, claim.term, claim.score, now), now)
        self._hub_seq = claim.seq
        self._hub_claim = claim
        return ClaimOutcome(True, True)

    @property
    def term_contested(self) -> bool:
        """True if this node is hub in a term another node also claimed (see `next_term`)."""
        return self.is_hub and self._hub is not None and self._hub.term == self._contested_term

    def next_term(self, now: float) -> HubClaim:
        """As the hub, serve the next term; return its claim to flood.

        For a term whose lease tokens ran out, or one that is contested: every token of the
        next term is larger than any granted in this one, by whichever hub. Followers take
        a claim of their hub with a higher term as news and follow it there.
        """
        assert self._hub is not None and self.is_hub
        return self._become_hub(max(self._known_term, self._hub.term) + 1, now)

    def vouch(self, now: float) -> None:
        """The hub is known alive by other means (SWIM), though its heartbeats do not reach us."""
        if self._hub is not None and not self.is_hub:
            self._heard_at = now

    def on_member_dead(self, node_id: str, now: float, alive: Sequence[str]) -> None:
        """SWIM declared `node_id` dead or gone: if it was our hub, the hub is lost."""
        if self._hub is not None and self._hub.id == node_id and not self.is_hub:
            self._lose(now, alive)

    def tick(self, now: float, alive: Sequence[str]) -> list[HubClaim]:
        """Run timers; `alive` is this node's live membership view (ids, self excluded)."""
        hub = self._hub
        # Compared as `next_deadline` computes it: `now - heard >= timeout` can be false at
        # now == heard + timeout (float rounding), and a driver ticking at the deadline then
        # finds it due again at once, forever.
        if hub is not None and not self.is_hub and now >= self._heard_at + self.config.timeout_s:
            self._lose(now, alive)
            hub = None
        if self.is_hub and self._next_heartbeat is not None and now >= self._next_heartbeat:
            return [self._sign_claim(now)]
        if (
            hub is not None
            and not self.is_hub
            and self.eligible
            and self.score >= hub.score + self.config.unseat_margin
        ):
            return [self._become_hub(hub.term + 1, now)]
        if hub is None and self._campaign_at is not None and now >= self._campaign_at:
            if not self._staggered:
                self._staggered = True
                self._campaign_at = now + self._stagger(alive)
                if now < self._campaign_at:
                    return []
            return [self._become_hub(max(self._known_term, self._lost_term) + 1, now)]
        return []

    # ----------------------------------------------------------------- internals

    def _reject(self, reason: str) -> ClaimOutcome:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return ClaimOutcome(False, False, reason)

    def _adopt(self, info: HubInfo, now: float) -> None:
        old = self._hub
        if old is not None and old.id == info.id:
            info = HubInfo(info.id, info.term, info.score, old.since)
        self._hub = info
        self._hub_seq = 0
        self._lost = None
        self.changes += 1
        self._heard_at = now
        self._campaign_at = None
        if info.id != self.node_id:
            self._next_heartbeat = None

    def _lose(self, now: float, alive: Sequence[str] = ()) -> None:
        assert self._hub is not None
        self._lost_term = max(self._lost_term, self._hub.term)
        self._lost = (self._hub.id, self._hub.term, self._hub_seq)
        self._hub = None
        self.changes += 1
        if self.eligible:
            self._staggered = True
            self._campaign_at = now + self._stagger(alive)

    def _stagger(self, alive: Sequence[str]) -> float:
        """Return the campaign delay: longer the more live members sort above us."""
        above = sum(1 for peer in alive if peer > self.node_id)
        return self.config.claim_stagger_s * min(above, _STAGGER_RANKS) / _STAGGER_RANKS

    def _become_hub(self, term: int, now: float) -> HubClaim:
        term = min(term, MAX_TERM)  # unreachable in practice: 2**32 elections
        self._known_term = max(self._known_term, term)
        if self._hub is None or self._hub.term != term or not self.is_hub:
            self._seq = 0  # seq restarts per term: seq <= 2 marks a fresh claim
        self._adopt(HubInfo(self.node_id, term, self.score, now), now)
        return self._sign_claim(now)

    def _sign_claim(self, now: float) -> HubClaim:
        assert self._signer is not None and self._hub is not None
        self._seq += 1
        self._next_heartbeat = now + self.config.heartbeat_s
        key = self._signer.public_key
        term = self._hub.term
        signature = self._signer.sign(claim_bytes(self.node_id, term, self._seq, self.score, key))
        claim = HubClaim(self.node_id, term, self._seq, self.score, key, signature)
        self._hub_claim = claim
        return claim
