"""Configuration of the memory core: one frozen dataclass per concern, with presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from crdt.codecs import EmbeddingCodec
from crdt.item import REPLICATED_TIERS, Limits
from crdt.resolvers import Resolver, resolver_named

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """How one replicated tier stores embeddings, resolves conflicts and keeps tombstones."""

    name: str
    resolver: Resolver
    codec: EmbeddingCodec
    tombstone_retention_ms: int = 30 * DAY_MS


def _default_policies() -> Mapping[str, TierPolicy]:
    return MappingProxyType(
        {
            "L1": TierPolicy("L1", resolver_named("lww"), EmbeddingCodec.F32),
            "L2": TierPolicy("L2", resolver_named("merge"), EmbeddingCodec.F16),
            "L3": TierPolicy("L3", resolver_named("confidence_vote"), EmbeddingCodec.I8),
        }
    )


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """Everything the memory core needs to know, fixed for the life of a node."""

    tiers: Mapping[str, TierPolicy] = field(default_factory=_default_policies)
    limits: Limits = field(default_factory=Limits)
    l0_capacity: int = 10_000
    l0_dim: int = 256
    event_capacity: int = 100_000
    event_retention_ms: int | None = 7 * DAY_MS
    max_clock_drift_ms: int = 60_000
    # How far ahead of use the HLC ceiling is persisted (crdt/hlc.py): also how far a restart
    # may push the clock. A long-running daemon persists it less often (mesh/daemon.py).
    hlc_ceiling_window_ms: int = 1

    def policy(self, tier: str) -> TierPolicy:
        """Return the policy of a replicated tier (KeyError if unknown)."""
        return self.tiers[tier]

    @classmethod
    def default(cls) -> MemoryConfig:
        """Return the defaults: L1 lww/f32, L2 merge/f16, L3 confidence_vote/int8."""
        return cls()

    @classmethod
    def with_resolvers(cls, **resolvers: Resolver | str) -> MemoryConfig:
        """Return the defaults with the named tiers' resolvers replaced (name or function)."""
        base = _default_policies()
        unknown = sorted(set(resolvers) - set(REPLICATED_TIERS))
        if unknown:
            raise ValueError(f"unknown tier(s) {', '.join(unknown)}; tiers are L1, L2, L3")
        policies = {}
        for tier in REPLICATED_TIERS:
            chosen = resolvers.get(tier)
            policy = base[tier]
            if chosen is not None:
                fn = resolver_named(chosen) if isinstance(chosen, str) else chosen
                policy = TierPolicy(tier, fn, policy.codec, policy.tombstone_retention_ms)
            policies[tier] = policy
        return cls(tiers=MappingProxyType(policies))
