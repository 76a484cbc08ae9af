"""Hub-role settings: one frozen dataclass, part of `mesh.config.NodeConfig` (`config.hub`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Election and relay tuning; every duration is in seconds of the Node's `now` clock."""

    score: int = 100  # eligibility score of this node when `hub_eligible` (0: never a hub)
    heartbeat_s: float = 0.5  # the hub re-sends its signed claim this often
    timeout_s: float = 1.6  # no heartbeat for this long: the hub is lost
    boot_wait_s: float = 1.0  # a booting node listens this long for a hub before claiming
    claim_stagger_s: float = 0.2  # campaign delay spread by rank, so the best claims first
    unseat_margin: int = 50  # a newcomer must beat a healthy hub's score by this much
    relay_interval_s: float = 0.01  # the hub drains its relay queue this often ...
    relay_burst: int = 64  # ... at most this many envelopes per drain
    low_batch_s: float = 0.5  # LOW envelopes wait up to this long to go out together
    low_batch_max: int = 256  # ... or until this many are queued
    origin_rate_per_s: float = 200.0  # per-origin token bucket: sustained envelopes/s ...
    origin_burst: int = 400  # ... and burst
    relay_ack_timeout_s: float = 1.0  # an origin re-floods P2P what the hub did not ack
    queue_max: int = 100_000  # envelopes held by the hub across all queues ...
    queue_max_bytes: int = 64 << 20  # ... and their bytes
    origin_deferred_max: int = 400  # envelopes of one origin held back by its rate at once
    stats_interval_s: float = 5.0  # every node reports to the hub, the hub publishes, this often
    stats_max_age_s: float = 30.0  # the hub leaves out reports older than this

    def __post_init__(self) -> None:
        """Reject inconsistent settings with ValueError."""
        if self.score < 0 or self.unseat_margin < 0:
            raise ValueError("hub score and unseat_margin must be >= 0")
        if not 0 < self.heartbeat_s < self.timeout_s:
            raise ValueError("need 0 < heartbeat_s < timeout_s")
        for name in (
            "relay_interval_s",
            "low_batch_s",
            "origin_rate_per_s",
            "relay_ack_timeout_s",
            "stats_interval_s",
            "stats_max_age_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        counts = (self.relay_burst, self.low_batch_max, self.origin_burst, self.queue_max)
        if min(*counts, self.queue_max_bytes, self.origin_deferred_max) < 1:
            raise ValueError(
                "relay_burst, low_batch_max, origin_burst, queue_max, queue_max_bytes and "
                "origin_deferred_max must be >= 1"
            )
