"""The runner pauses the cyclic collector during a run and leaves no world behind."""

from __future__ import annotations

import gc
import weakref

import pytest

import simulations.runner as runner_module
from mesh.gc_pause import cyclic_gc_paused
from simulations.runner import Runner, run
from simulations.scenarios import make_params


def test_the_collector_is_paused_during_a_run_and_restored_after() -> None:
    seen: list[bool] = []
    params = make_params("partition-heal", nodes=6, seed=1, duration_s=2.0)
    runner = Runner(params, progress=lambda _msg: seen.append(gc.isenabled()))
    runner_module.PROGRESS_EVERY_S, saved = 0.0, runner_module.PROGRESS_EVERY_S
    try:
        assert gc.isenabled()
        runner.run()
    finally:
        runner_module.PROGRESS_EVERY_S = saved
    assert seen and not any(seen)
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_finished_run_frees_its_world_without_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worlds: list[weakref.ref[object]] = []
    original = Runner.__init__

    def spy(self: Runner, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        worlds.append(weakref.ref(self.world))

    monkeypatch.setattr(Runner, "__init__", spy)
    gc.disable()
    try:
        result = run(make_params("partition-heal", nodes=6, seed=1, duration_s=2.0))
        assert result.summary["converged"] is True
        assert worlds and worlds[0]() is None  # freed by reference counting alone
    finally:
        gc.enable()
