"""Pausing Python's cyclic garbage collector around bounded bursts of allocation."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector inside the block, restoring its previous state after.

    Memory work makes tens of thousands of long-lived objects per call (a 1,000-item batch,
    a sync slice) and almost no cyclic garbage: reference counting frees what dies. With the
    collector running, each burst triggers many collections, and the full ones walk the
    whole replica. Paused, what the block made is counted once and collected afterwards.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
