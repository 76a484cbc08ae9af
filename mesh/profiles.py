"""Device profiles (from the edge-deployment design): what a device replicates and does.

| profile     | RAM          | tiers        | L3 codec | batching | hub eligible |
|-------------|--------------|--------------|----------|----------|--------------|
| minimal     | < 512 MiB    | L1           | i8       | 500 ms   | no           |
| light       | 512 MiB-2 GiB| L1, L2       | i8       | 200 ms   | no           |
| standard    | 2-4 GiB      | L1, L2, L3   | i8       | 50 ms    | yes          |
| performance | > 4 GiB      | L1, L2, L3   | f16      | 20 ms    | yes          |

A device on battery is never hub eligible. A node that does not replicate a tier can
still query it on a peer (MEMORY_QUERY).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from crdt.codecs import EmbeddingCodec
from crdt.config import MemoryConfig, TierPolicy
from hub_role.config import HubConfig
from mesh.config import NodeConfig
from mesh.swim_config import SwimConfig

GIB = 1 << 30
# Digests repair what no update carried (a lost frame); a link that comes up syncs at once.
IDLE_DIGEST_S = 5.0


class Profile(StrEnum):
    """The four device profiles."""

    MINIMAL = "minimal"
    LIGHT = "light"
    STANDARD = "standard"
    PERFORMANCE = "performance"


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """What a profile decides."""

    tiers: tuple[str, ...]
    l3_codec: EmbeddingCodec
    sync_interval_s: float
    hub_eligible: bool


SETTINGS = MappingProxyType(
    {
        Profile.MINIMAL: ProfileSettings(("L1",), EmbeddingCodec.I8, 0.5, False),
        Profile.LIGHT: ProfileSettings(("L1", "L2"), EmbeddingCodec.I8, 0.2, False),
        Profile.STANDARD: ProfileSettings(("L1", "L2", "L3"), EmbeddingCodec.I8, 0.05, True),
        Profile.PERFORMANCE: ProfileSettings(("L1", "L2", "L3"), EmbeddingCodec.F16, 0.02, True),
    }
)


def profile_for(ram_bytes: int) -> Profile:
    """Return the profile the source design assigns to a device with this much RAM."""
    if ram_bytes < GIB // 2:
        return Profile.MINIMAL
    if ram_bytes < 2 * GIB:
        return Profile.LIGHT
    if ram_bytes <= 4 * GIB:
        return Profile.STANDARD
    return Profile.PERFORMANCE


def detect(
    proc: Path = Path("/proc"), sys_power: Path = Path("/sys/class/power_supply")
) -> tuple[Profile, bool]:
    """Return (profile from total RAM, whether the device runs on a battery)."""
    ram = 4 * GIB
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    battery = False
    try:
        battery = any((p / "type").read_text().strip() == "Battery" for p in sys_power.iterdir())
    except OSError:
        battery = False
    return profile_for(ram), battery


# Idle traffic on a real link is mostly per-packet overhead (~110 B of IP/UDP/DTLS/SCTP plus
# a SACK), so the daemon sends fewer, rarer hub frames than the simulator's default:
# heartbeats every 0.8 s (skipped on links that carried anything else) with a 2 s timeout
# still replace a dead hub within 3 s; stats every 10 s are plenty for a dashboard.
DAEMON_HUB = HubConfig(heartbeat_s=0.8, timeout_s=2.0, stats_interval_s=10.0)


def node_config(profile: Profile, *, on_battery: bool = False) -> NodeConfig:
    """Return the LAN node configuration for a profile."""
    settings = SETTINGS[profile]
    base = MemoryConfig()
    tiers = dict(base.tiers)
    l3 = tiers["L3"]
    tiers["L3"] = TierPolicy("L3", l3.resolver, settings.l3_codec, l3.tombstone_retention_ms)
    memory = dataclasses.replace(base, tiers=MappingProxyType(tiers))
    return NodeConfig.lan(
        swim=SwimConfig.lan_idle(),
        anti_entropy_interval_s=IDLE_DIGEST_S,
        tiers=settings.tiers,
        memory=memory,
        sync_interval_s=settings.sync_interval_s,
        profile=profile.value,
        hub_eligible=settings.hub_eligible and not on_battery,
        hub=DAEMON_HUB,
    )
