"""`memmesh sim hub-failover`: the seeded failover study and its JSON."""

from __future__ import annotations

import json

import pytest

from mesh.cli import main as memmesh_main
from simulations.runner import run
from simulations.scenarios import make_params


def test_hub_failover_is_fast_and_loses_nothing() -> None:
    summary = run(make_params("hub-failover", nodes=30, seed=4)).summary
    assert summary["converged"] is True
    assert summary["failover_s"] is not None and summary["failover_s"] <= 3.0
    assert summary["new_hub"] not in (None, summary["killed_hub"])
    assert summary["lost_acked_writes"] == 0
    assert summary["acked_writes"] == summary["writes"]
    assert summary["hub_ack_writes"] > 0
    # The restarted old hub does not unseat the new one (stickiness).
    assert summary["hub"]["id"] == summary["new_hub"]
    assert 0.0 < summary["p2p_share"] < summary["relayed_share"] < 1.0
    assert summary["hub"]["max_links"] == 29


def test_same_seed_same_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sim", "hub-failover", "--nodes", "20", "--seed", "9", "--json", "--quiet"]
    outputs = []
    for _ in range(2):
        assert memmesh_main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    summary = json.loads(outputs[0])
    for field in ("failover_s", "lost_acked_writes", "relayed_share", "p2p_share", "hub"):
        assert field in summary


def test_hub_option_on_other_scenarios() -> None:
    summary = run(make_params("partition-heal", nodes=10, seed=2, duration_s=4.0, hub_role=True))
    result = summary.summary
    assert result["converged"] is True
    assert result["lost_acked_writes"] == 0
    assert result["hub"]["id"] is not None
    assert result["hub"]["relayed_batches"] > 0


def test_hub_failover_needs_the_hub_role() -> None:
    with pytest.raises(ValueError, match="hub role"):
        make_params("hub-failover", nodes=10, hub_role=False)
