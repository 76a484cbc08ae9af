"""A Yjs update with values nested too deep is refused before yrs decodes it (no crash)."""

from __future__ import annotations

import pytest

from crdt.memory import TieredMemory
from crdt.tier import CorruptUpdateError
from crdt.yslice import MAX_ANY_DEPTH, check_update
from crdt.ywire import WireFormatError, write_var_uint


def _string(text: str) -> bytes:
    raw = text.encode()
    return write_var_uint(len(raw)) + raw


def nested_update(depth: int, *, client: int = 999) -> bytes:
    """One map entry `a/w` of the root map whose value is [[[...null...]]] `depth` deep."""
    value = bytes([117, 1]) * depth + bytes([126])  # lib0 any: array of 1, ..., null
    struct = bytes([8 | 0x20]) + write_var_uint(1) + _string("items") + _string("a/w")
    struct += write_var_uint(1) + value  # ContentAny with one value
    header = b"".join(map(write_var_uint, (1, 1, client, 0)))  # 1 group of 1 struct, clock 0
    return header + struct + b"\x00"


def test_check_update_accepts_the_limit_and_refuses_one_more() -> None:
    check_update(nested_update(MAX_ANY_DEPTH))
    with pytest.raises(WireFormatError, match="nested deeper"):
        check_update(nested_update(MAX_ANY_DEPTH + 1))


@pytest.mark.parametrize("depth", [MAX_ANY_DEPTH + 1, 5_000, 30_000])
def test_apply_remote_refuses_a_deep_value_and_changes_nothing(depth: int) -> None:
    memory = TieredMemory(node_id="r", client_ids={"L1": 1, "L2": 2, "L3": 3})
    before = memory.tier_doc("L1").state_vector()
    with pytest.raises(CorruptUpdateError, match="nested deeper"):
        memory.apply_remote("L1", nested_update(depth), 1_000)  # 30,000 deep crashed yrs
    assert memory.tier_doc("L1").state_vector() == before
