"""Chunked transfers: split a MEMORY_SYNC body too large for one frame, and reassemble it.

A sender splits a body with `split_body` and sends one MEMORY_SYNC frame per piece; to resume
after an interruption it sends `split_body(...)[next_index:]` for the receiver's RESUME. The
receiver feeds pieces to a `Reassembler`, which buffers many transfers within a byte bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from mesh.codec import ID_BYTES, U32, MessageError
from mesh.frames import Limits
from mesh.messages import Chunk

FRAME_OVERHEAD: Final = 1024  # header + every MEMORY_SYNC field but the body, with room to spare
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_TRANSFERS: Final = 256


def max_chunk_for(limits: Limits) -> int:
    """Return the largest piece whose MEMORY_SYNC frame stays within `limits`."""
    size = min(limits.max_frame_bytes, limits.max_decompressed_bytes) - FRAME_OVERHEAD
    if size < 1:
        raise ValueError(f"limits leave no room for a chunk ({limits.max_frame_bytes} bytes)")
    return size


def split_body(body: bytes, *, max_chunk: int, transfer_id: bytes) -> list[tuple[Chunk, bytes]]:
    """Return (Chunk, piece) pairs covering `body` in order; every piece is 1..max_chunk bytes."""
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be positive, got {max_chunk}")
    if len(transfer_id) != ID_BYTES:
        raise ValueError(f"transfer_id must be {ID_BYTES} bytes, got {len(transfer_id)}")
    total = max(1, -(-len(body) // max_chunk))
    if total > U32:
        raise ValueError(f"{total} pieces exceed the u32 chunk index")
    return [
        (Chunk(transfer_id, i, total, len(body)), body[i * max_chunk : (i + 1) * max_chunk])
        for i in range(total)
    ]


def check_chunk(chunk: Chunk, piece: bytes, max_bytes: int) -> None:
    """Raise MessageError unless `chunk` is self-consistent, fits `max_bytes`, and fits `piece`."""
    if len(chunk.transfer_id) != ID_BYTES:
        raise MessageError(f"transfer_id of {len(chunk.transfer_id)} bytes, not {ID_BYTES}")
    if not 0 <= chunk.index < chunk.total <= U32:
        raise MessageError(f"chunk index {chunk.index} of {chunk.total} is out of range")
    if not 0 <= chunk.total_bytes <= max_bytes:
        raise MessageError(f"transfer of {chunk.total_bytes} bytes over the bound of {max_bytes}")
    if chunk.total > max(chunk.total_bytes, 1):
        raise MessageError(f"{chunk.total} pieces cannot carry {chunk.total_bytes} bytes")
    if len(piece) > chunk.total_bytes:
        raise MessageError(f"piece of {len(piece)} bytes over the total of {chunk.total_bytes}")
    if chunk.total > 1 and not piece:
        raise MessageError("empty piece in a multi-piece transfer")
    if chunk.total == 1 and len(piece) != chunk.total_bytes:
        raise MessageError(f"single piece of {len(piece)} bytes, declared {chunk.total_bytes}")


@dataclass(slots=True)
class _Transfer:
    """Pieces received so far of one transfer."""

    total: int
    total_bytes: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    next_missing: int = 0


class Reassembler:
    """Reassembles chunked bodies of concurrent transfers within `max_bytes` of buffered pieces."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_transfers: int = DEFAULT_MAX_TRANSFERS
    ) -> None:
        """Bound the buffered bytes and the number of open transfers (both evict, never fail)."""
        if max_bytes < 1 or max_transfers < 1:
            raise ValueError("max_bytes and max_transfers must be positive")
        self._max_bytes = max_bytes
        self._max_transfers = max_transfers
        # Least recently progressing first: a transfer moves to the end when a new piece lands.
        self._transfers: OrderedDict[tuple[str, bytes], _Transfer] = OrderedDict()
        self._buffered = 0
        self.evictions = 0

    @property
    def buffered_bytes(self) -> int:
        """Return the bytes currently buffered across all transfers."""
        return self._buffered

    def __len__(self) -> int:
        """Return the number of open (incomplete) transfers."""
        return len(self._transfers)

    def add(self, peer_id: str, chunk: Chunk, piece: bytes) -> bytes | None:
        """Buffer a piece; return the whole body when it completes its transfer, else None."""
        check_chunk(chunk, piece, self._max_bytes)
        key = (peer_id, chunk.transfer_id)
        state = self._transfers.get(key)
        declared = (chunk.total, chunk.total_bytes)
        if state is not None and (state.total, state.total_bytes) != declared:
            self._forget(key)
            raise MessageError("chunk totals disagree with earlier pieces of the transfer")
        if state is None:
            if chunk.total == 1:
                return piece
            if len(self._transfers) >= self._max_transfers:
                self._evict_oldest()
            state = self._transfers[key] = _Transfer(chunk.total, chunk.total_bytes)
        if chunk.index in state.pieces:
            return None  # duplicate
        pieces_left = state.total - len(state.pieces) - 1
        bytes_left = state.total_bytes - state.received - len(piece)
        if bytes_left < pieces_left or (pieces_left == 0 and bytes_left != 0):
            self._forget(key)
            raise MessageError("pieces disagree with the declared total_bytes")
        state.pieces[chunk.index] = piece
        state.received += len(piece)
        self._buffered += len(piece)
        self._transfers.move_to_end(key)
        if pieces_left == 0:
            self._forget(key)
            return b"".join(state.pieces[i] for i in range(state.total))
        while state.next_missing in state.pieces:
            state.next_missing += 1
        while self._buffered > self._max_bytes and next(iter(self._transfers)) != key:
            self._evict_oldest()
        return None

    def next_missing(self, peer_id: str, transfer_id: bytes) -> int:
        """Return the first piece index not yet received (0 for an unknown transfer)."""
        state = self._transfers.get((peer_id, transfer_id))
        return 0 if state is None else state.next_missing

    def holds(self, peer_id: str, transfer_id: bytes) -> bool:
        """Return True while the transfer is open here (neither complete nor evicted)."""
        return (peer_id, transfer_id) in self._transfers

    def progress(self, peer_id: str, transfer_id: bytes) -> tuple[int, int]:
        """Return (bytes received, total bytes) of a transfer; (0, 0) when unknown."""
        state = self._transfers.get((peer_id, transfer_id))
        return (0, 0) if state is None else (state.received, state.total_bytes)

    def drop(self, peer_id: str, transfer_id: bytes) -> None:
        """Forget one transfer (its sender cannot resume it)."""
        self._forget((peer_id, transfer_id))

    def drop_peer(self, peer_id: str) -> None:
        """Forget every transfer from `peer_id`."""
        for key in [k for k in self._transfers if k[0] == peer_id]:
            self._forget(key)

    def _forget(self, key: tuple[str, bytes]) -> None:
        """Drop a transfer and release its bytes."""
        state = self._transfers.pop(key, None)
        if state is not None:
            self._buffered -= state.received

    def _evict_oldest(self) -> None:
        """Drop the least recently progressing transfer."""
        self._forget(next(iter(self._transfers)))
        self.evictions += 1
