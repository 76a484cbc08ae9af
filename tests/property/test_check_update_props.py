"""Property test: `check_update` refuses exactly the updates a struct-by-struct walk refuses.

The reference reads every struct with `_read_struct` (what `check_update` did before it took
a shortcut for new root-map entries); updates are real diffs of concurrent replicas, then
truncated, cut or with bytes changed.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.tier import TierDoc
from crdt.yslice import _read_struct, check_update
from crdt.ywire import WireFormatError, read_var_uint


def reference(update: bytes) -> None:
    count, pos = read_var_uint(update, 0)
    for _ in range(count):
        n_structs, pos = read_var_uint(update, pos)
        client, pos = read_var_uint(update, pos)
        _clock, pos = read_var_uint(update, pos)
        for _ in range(n_structs):
            _length, _deps, pos = _read_struct(update, pos, client)


def refuses(check: object, update: bytes) -> bool:
    try:
        check(update)  # type: ignore[operator]
    except WireFormatError:
        return True
    return False


def diff(seed: int) -> bytes:
    rng = random.Random(seed)
    docs = [TierDoc("L3", client_id=c) for c in (5, 6)]
    for _ in range(rng.randrange(1, 12)):
        doc = rng.choice(docs)
        writes = [
            (
                f"i{rng.randrange(8)}" + "k" * rng.choice([0, 0, 100]),
                rng.choice(["a", "b" * 140]),
                None if rng.random() < 0.15 else "x" * rng.choice([1, 40, 200]) + "é",
            )
            for _ in range(rng.randrange(1, 4))
        ]
        doc.write(writes)
        if rng.random() < 0.5:
            docs[0].apply_update(docs[1].encode_diff(docs[0].state_vector()))
    return docs[0].encode_diff()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.data())
def test_check_update_refuses_what_the_struct_walk_refuses(seed: int, data: st.DataObject) -> None:
    update = bytearray(diff(seed))
    how = data.draw(st.sampled_from(["none", "truncate", "byte", "bytes"]))
    if how == "truncate":
        del update[data.draw(st.integers(0, len(update))) :]
    elif how in ("byte", "bytes"):
        for _ in range(1 if how == "byte" else data.draw(st.integers(2, 6))):
            at = data.draw(st.integers(0, len(update) - 1))
            update[at] = data.draw(st.sampled_from([0, 1, 0x28, 0x7F, 0x80, 0xFF, 119, 5]))
    assert refuses(check_update, bytes(update)) == refuses(reference, bytes(update))
