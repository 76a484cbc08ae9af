"""What a node advertises about itself: the PeerRecord and its short mDNS TXT encoding."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION: Final = 2
VALID_TIERS: Final = ("L1", "L2", "L3")
_HEX16: Final = re.compile(r"[0-9a-f]{16}")
_NUMBER: Final = re.compile(r"[0-9]{1,5}")
_PROFILE: Final = re.compile(r"[A-Za-z0-9_.-]{0,32}")
_MAX_TXT_VALUE: Final = 255

# Mapping keys are invariant, so zeroconf's dict[bytes, ...] and a dict[str, str] each need a
# member of this union.
TxtProps = (
    Mapping[bytes, bytes | None]
    | Mapping[str, str | None]
    | Mapping[bytes | str, bytes | str | None]
)


def _text(value: bytes | str | None, key: str) -> str:
    """Decode one TXT value to str, rejecting absent or undecodable values."""
    if value is None:
        raise ValueError(f"TXT key {key!r} has no value")
    if isinstance(value, bytes):
        if len(value) > _MAX_TXT_VALUE:
            raise ValueError(f"TXT key {key!r} is too long")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"TXT key {key!r} is not UTF-8") from None
    return value


def _port(value: int, what: str) -> int:
    """Return `value` if it is a TCP port number (1-65535), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what} must be a port number 1-65535, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One node as discovery sees it: identity, mesh, signaling endpoint and capabilities."""

    node_id: str
    mesh_id: str
    address: str
    port: int
    protocol_version: int = PROTOCOL_VERSION
    tiers: tuple[str, ...] = VALID_TIERS
    profile: str = "default"
    hub_eligible: bool = True

    def __post_init__(self) -> None:
        """Reject fields that could not be advertised or parsed back."""
        if not isinstance(self.node_id, str) or not _HEX16.fullmatch(self.node_id):
            raise ValueError(f"node id must be 16 lowercase hex chars, got {self.node_id!r}")
        if not isinstance(self.mesh_id, str) or not _HEX16.fullmatch(self.mesh_id):
            raise ValueError(f"mesh id must be 16 lowercase hex chars, got {self.mesh_id!r}")
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError:
            raise ValueError(f"address must be an IPv4 address, got {self.address!r}") from None
        _port(self.port, "signaling port")
        if isinstance(self.protocol_version, bool) or not isinstance(self.protocol_version, int):
            raise ValueError(f"protocol version must be an int, got {self.protocol_version!r}")
        if not 0 <= self.protocol_version <= 65535:
            raise ValueError(f"protocol version out of range: {self.protocol_version}")
        if not isinstance(self.tiers, tuple) or not self.tiers:
            raise ValueError(f"tiers must be a non-empty tuple, got {self.tiers!r}")
        if len(set(self.tiers)) != len(self.tiers) or not set(self.tiers) <= set(VALID_TIERS):
            raise ValueError(f"tiers must be distinct values of {VALID_TIERS}, got {self.tiers!r}")
        if not isinstance(self.profile, str) or not _PROFILE.fullmatch(self.profile):
            raise ValueError(
                f"profile must be up to 32 chars of [A-Za-z0-9_.-], got {self.profile!r}"
            )
        if not isinstance(self.hub_eligible, bool):
            raise ValueError(f"hub_eligible must be a bool, got {self.hub_eligible!r}")

    def to_txt(self) -> dict[str, str]:
        """Return the TXT properties that advertise this record (address and port go in A/SRV)."""
        return {
            "id": self.node_id,
            "mesh": self.mesh_id,
            "v": str(self.protocol_version),
            "sig": str(self.port),
            "tiers": ",".join(self.tiers),
            "prof": self.profile,
            "hub": "1" if self.hub_eligible else "0",
        }

    @classmethod
    def from_txt(cls, props: TxtProps, address: str, port: int) -> PeerRecord:
        """Parse TXT properties; `sig` overrides `port` (the SRV port); raise ValueError if bad."""
        txt: dict[str, str | bytes | None] = {}
        for raw_key, value in props.items():
            key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key
            txt[key.lower()] = value

        def field(key: str) -> str:
            """Return the decoded value of a required TXT key."""
            if key not in txt:
                raise ValueError(f"TXT key {key!r} is missing")
            return _text(txt[key], key)

        version_text = field("v")
        if not _NUMBER.fullmatch(version_text):
            raise ValueError(f"TXT key 'v' is not a number: {version_text!r}")
        signaling = port
        if "sig" in txt:
            sig_text = field("sig")
            if not _NUMBER.fullmatch(sig_text):
                raise ValueError(f"TXT key 'sig' is not a number: {sig_text!r}")
            signaling = int(sig_text)
        hub = field("hub")
        if hub not in ("0", "1"):
            raise ValueError(f"TXT key 'hub' must be '0' or '1', got {hub!r}")
        tiers_text = field("tiers")
        return cls(
            node_id=field("id"),
            mesh_id=field("mesh"),
            address=address,
            port=_port(signaling, "TXT key 'sig'"),
            protocol_version=int(version_text),
            tiers=tuple(tiers_text.split(",")) if tiers_text else (),
            profile=field("prof"),
            hub_eligible=hub == "1",
        )
