"""Just enough of the Yjs v1 binary format to order updates: varints and state vectors.
Everything else stays opaque and goes to pycrdt (crdt/yslice.py walks structs)."""

from __future__ import annotations


class WireFormatError(ValueError):
    """The bytes are not the Yjs encoding they claim to be."""


def write_var_uint(value: int) -> bytes:
    """Return the lib0 variable-length encoding of an unsigned int (`read_var_uint`'s input)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """Return (value, next position) of the lib0 variable-length unsigned int at `pos`."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise WireFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise WireFormatError("varint longer than 64 bits")


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Return {client_id: clock} from an encoded Yjs state vector."""
    count, pos = read_var_uint(data, 0)
    vector: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        vector[client] = clock
    return vector
