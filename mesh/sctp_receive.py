"""A guarded tweak of aiortc's SCTP receive path: no reassembly rescan that cannot pop.

aiortc (`aiortc.rtcsctptransport`) keeps the DATA chunks of each inbound stream in a
list, `InboundStream.reassembly`, and after every chunk it calls `pop_messages`, which
rescans that list from its start for complete messages. A 133 kB sync frame is ~110
chunks, so its arrival costs ~6,000 chunk visits, quadratic in the frame size; a bulk
initial sync spent about a tenth of the receiver's loop there.

The rescan can pop nothing when the chunk just added went to the end of the list (its TSN
is above every held one, so it fills no gap) and is not the last fragment of a message:
every message that could complete would have to end in a chunk after it. Any message
complete without it was popped by the previous rescan, or still waits for an earlier
stream sequence number, which only a pop advances. So `_QuickInboundStream` skips
exactly that rescan and leaves every other call to aiortc's code.

The tweak reaches into aiortc internals, so `install()` first compares the source of the
functions involved with the version it was written against (aiortc 1.16.0); if anything
differs, or the source cannot be read, it installs nothing and aiortc runs unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any, Final

from aiortc import rtcsctptransport
from aiortc.utils import uint32_gt

log = logging.getLogger(__name__)

# sha256 (first 16 hex digits) of the source of each function the tweak relies on, aiortc 1.16.0.
EXPECTED: Final = {
    "InboundStream.__init__": "aa0a3c1cd3aa8679",
    "InboundStream.add_chunk": "de934faf324b1b4b",
    "InboundStream.pop_messages": "bd29de9aa7c4f8fd",
    "InboundStream.prune_chunks": "ff5a6cd9b68a26fb",
    "RTCSctpTransport._get_inbound_stream": "7bb5d6a0225afa1c",
    "RTCSctpTransport._receive_data_chunk": "790c2bb8cd0f5dd7",
    "RTCSctpTransport._receive_forward_tsn_chunk": "a7b72a09e9c4bb20",
}


def source_hashes() -> dict[str, str] | None:
    """Return the short sha256 of each function in EXPECTED's source, or None if unreadable."""
    out: dict[str, str] = {}
    for name in EXPECTED:
        owner, attr = name.split(".")
        function = getattr(getattr(rtcsctptransport, owner, None), attr, None)
        if function is None:
            return None
        try:
            text = inspect.getsource(function)
        except (OSError, TypeError):
            return None
        out[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


class _QuickInboundStream(rtcsctptransport.InboundStream):
    """aiortc's InboundStream, minus the rescans that cannot pop a message."""

    def __init__(self) -> None:
        """Start empty, as aiortc's stream does."""
        super().__init__()
        self._cannot_pop = False

    def add_chunk(self, chunk: Any) -> None:
        """Add a chunk; note whether the next `pop_messages` can skip its rescan."""
        reassembly = self.reassembly
        at_end = not reassembly or uint32_gt(chunk.tsn, reassembly[-1].tsn)
        super().add_chunk(chunk)
        self._cannot_pop = at_end and not chunk.flags & rtcsctptransport.SCTP_DATA_LAST_FRAG

    def pop_messages(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield the complete messages, as aiortc does, unless the last add cannot complete one."""
        if self._cannot_pop:
            self._cannot_pop = False
            return iter(())
        return super().pop_messages()

    def prune_chunks(self, tsn: int) -> int:
        """Prune as aiortc does; the next rescan then runs in full."""
        self._cannot_pop = False
        return int(super().prune_chunks(tsn))


def install() -> bool:
    """Install the tweak if aiortc's code is the expected one; return whether it is on.

    The state is aiortc's own: its module names our stream class once installed.
    """
    if installed():
        return True
    if source_hashes() != EXPECTED:
        log.info("aiortc's SCTP receive path differs from the expected one: tweak not installed")
        return False
    rtcsctptransport.InboundStream = _QuickInboundStream  # type: ignore[misc]
    return True


def installed() -> bool:
    """Return True if the tweak is in place."""
    return rtcsctptransport.InboundStream is _QuickInboundStream
