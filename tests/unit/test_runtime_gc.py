"""The runtime pauses the cyclic collector only while the Node handles one input."""

from __future__ import annotations

import gc

import pytest

from mesh.effects import Effect
from mesh.inputs import Input, Tick
from mesh.runtime import NodeRuntime


class Node:
    """Records whether the collector ran during `handle`; raises when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.seen: list[bool] = []
        self.fail = fail

    def handle(self, event: Input, now: float) -> list[Effect]:
        self.seen.append(gc.isenabled())
        if self.fail:
            raise RuntimeError("boom")
        return []


def test_the_collector_is_paused_during_handle_and_back_after() -> None:
    node = Node()
    runtime = NodeRuntime(node, None, None)  # type: ignore[arg-type]
    assert gc.isenabled()
    runtime.submit(Tick())
    assert node.seen == [False]
    assert gc.isenabled()


def test_the_collector_comes_back_when_handle_raises() -> None:
    runtime = NodeRuntime(Node(fail=True), None, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        runtime.submit(Tick())
    assert gc.isenabled()


def test_a_process_that_disabled_the_collector_keeps_it_off() -> None:
    node = Node()
    runtime = NodeRuntime(node, None, None)  # type: ignore[arg-type]
    gc.disable()
    try:
        runtime.submit(Tick())
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert node.seen == [False]
