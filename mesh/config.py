"""Node configuration: one frozen dataclass with presets, never module-level globals."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from crdt.config import MemoryConfig
from hub_role.config import HubConfig
from mesh.frames import DEFAULT_LIMITS, Limits
from mesh.membership import SwimConfig


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a Node needs to know, fixed for its life."""

    tiers: tuple[str, ...] = ("L1", "L2", "L3")
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    swim: SwimConfig = field(default_factory=SwimConfig.lan)
    limits: Limits = DEFAULT_LIMITS
    sync_interval_s: float = 0.05
    anti_entropy_interval_s: float = 1.0
    full_mesh_max: int = 16
    random_links: int = 4
    reconnect_base_s: float = 0.5
    reconnect_max_s: float = 30.0
    dead_retry_max_s: float = 3.0
    max_transfer_bytes: int = 256 << 20  # one chunked body (an initial sync) in memory
    dedup_capacity: int = 50_000
    transfer_cache: int = 32
    query_timeout_s: float = 5.0
    bad_frames_before_disconnect: int = 20
    step1_guard_s: float = 2.0
    step2_batch_bytes: int = 1 << 20  # an initial sync goes out in applicable slices of this
    step2_window: int = 4  # slices sent ahead of the receiver's acks
    step2_idle_s: float = 5.0  # an incoming sliced sync this quiet is over (digests resume)
    profile: str = "standard"
    hub_eligible: bool = True
    hub: HubConfig = field(default_factory=HubConfig)  # election and relay (hub_role)

    @classmethod
    def lan(cls, **overrides: object) -> NodeConfig:
        """Return the LAN preset (fast failure detection, 50 ms batching)."""
        return replace(cls(), **overrides)  # type: ignore[arg-type]

    @classmethod
    def sim(cls, **overrides: object) -> NodeConfig:
        """Return the simulation preset (SWIM sim timings, cheaper idle traffic)."""
        base = cls(swim=SwimConfig.sim(), sync_interval_s=0.1, anti_entropy_interval_s=1.0)
        return replace(base, **overrides)  # type: ignore[arg-type]
