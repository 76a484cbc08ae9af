"""Static discovery for networks without multicast: probe bootstrap addresses periodically."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

log = logging.getLogger("memmesh.discovery.static")

_T = TypeVar("_T")

Probe = Callable[[str, int], Awaitable[str | None]]

_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _parse_one(text: str) -> tuple[str, int]:
    """Parse one "host:port" (or "[v6]:port") entry; raise ValueError saying what is wrong."""
    entry = text.strip()
    if entry.startswith("["):
        host, sep, port_text = entry[1:].partition("]:")
        if not sep:
            raise ValueError(f"bootstrap address {text!r}: expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bootstrap address {text!r}: {host!r} is not IPv6") from None
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bootstrap address {text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bootstrap address {text!r}: write IPv6 as [ADDR]:PORT")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"bootstrap address {text!r}: {host!r} is not IPv4") from None
        elif not _HOSTNAME.fullmatch(host):
            raise ValueError(f"bootstrap address {text!r}: {host!r} is not a host name or IP")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bootstrap address {text!r}: port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def parse_bootstrap(addresses: Sequence[str]) -> list[tuple[str, int]]:
    """Parse "host:port" entries into (host, port) pairs, dropping duplicates, keeping order."""
    if isinstance(addresses, str):
        raise ValueError("bootstrap addresses must be a list of HOST:PORT, not one string")
    parsed: list[tuple[str, int]] = []
    for text in addresses:
        pair = _parse_one(text)
        if pair not in parsed:
            parsed.append(pair)
    return parsed


@dataclass(frozen=True, slots=True)
class StaticPeer:
    """A peer answering at a bootstrap address."""

    node_id: str
    host: str
    port: int


class StaticDiscovery:
    """Probes each bootstrap address every `interval_s`; reports who answers and who stops."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        probe: Probe | None = None,
        on_found: Callable[[StaticPeer], None],
        on_lost: Callable[[str], None],
        interval_s: float = 10.0,
        probe_timeout_s: float = 5.0,
    ) -> None:
        """Validate the addresses now; probing starts with `start` (or `async with`)."""
        if probe is None:
            raise ValueError(
                "StaticDiscovery needs a probe: an async (host, port) -> node id | None "
                "(the signaling hello), since only the peer can say who it is"
            )
        if interval_s <= 0 or probe_timeout_s <= 0:
            raise ValueError("interval_s and probe_timeout_s must be positive")
        self.addresses = parse_bootstrap(addresses)
        self._probe = probe
        self._on_found = on_found
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._probe_timeout_s = probe_timeout_s
        self._at: dict[tuple[str, int], StaticPeer] = {}
        self._task: asyncio.Task[None] | None = None

    def peers(self) -> dict[str, StaticPeer]:
        """Return the peers that answered the last probe of their address, by node id."""
        return {peer.node_id: peer for peer in self._at.values()}

    async def __aenter__(self) -> StaticDiscovery:
        """Start probing (the first round runs at once)."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop probing."""
        await self.close()

    async def start(self) -> None:
        """Start the background probing loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="memmesh-static-discovery")

    async def close(self) -> None:
        """Stop the probing loop and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        """Probe every address, then sleep `interval_s`, forever."""
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval_s)

    async def poll_once(self) -> None:
        """Probe every address concurrently once and report changes."""
        answers = await asyncio.gather(*(self._ask(h, p) for h, p in self.addresses))
        for (host, port), node_id in zip(self.addresses, answers, strict=True):
            self._settle((host, port), node_id)

    async def _ask(self, host: str, port: int) -> str | None:
        """Run the probe with a timeout; any failure counts as no answer."""
        try:
            return await asyncio.wait_for(self._probe(host, port), self._probe_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("static probe of %s:%d failed: %r", host, port, exc)
            return None

    def _settle(self, where: tuple[str, int], node_id: str | None) -> None:
        """Report a change of who answers at `where`."""
        old = self._at.get(where)
        if old is not None and old.node_id == node_id:
            return
        if old is not None:
            del self._at[where]
            if old.node_id not in self.peers():
                self._call(self._on_lost, old.node_id)
        if node_id:
            peer = StaticPeer(node_id, *where)
            known = node_id in self.peers()
            self._at[where] = peer
            if not known:
                self._call(self._on_found, peer)

    @staticmethod
    def _call(callback: Callable[[_T], None], value: _T) -> None:
        """Run a user callback, logging (not propagating) its failure."""
        try:
            callback(value)
        except Exception:
            log.exception("static discovery callback failed")
