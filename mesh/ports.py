"""Ports: the small interfaces the asyncio runtime needs from its adapters."""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    """Carries frames to peers over links it opens on request (WebRTC in production)."""

    async def connect(self, peer_id: str, address: str, port: int) -> None:
        """Open a link to `peer_id` at `address:port`; raise on refusal or timeout."""
        ...

    def send(self, peer_id: str, frame: bytes, *, urgent: bool = False) -> bool:
        """Queue a frame on the link to `peer_id`; return False if there is no open link."""
        ...

    def disconnect(self, peer_id: str) -> None:
        """Close the link to `peer_id`, if any."""
        ...


class Clock(Protocol):
    """Where the runtime reads time (seconds); the core only ever receives it."""

    def __call__(self) -> float:
        """Return the current time in seconds."""
        ...
