"""The simulated world itself: discovery topologies, timers under skew, traffic accounting."""

from __future__ import annotations

import pytest

from crdt.memory import NewItem
from simulations.world import CLOCK_ORIGIN_S, LINK_LOSS_DETECT_S, World


def _mesh(n: int, seed: int, **kwargs: object) -> World:
    world = World(seed, **kwargs)  # type: ignore[arg-type]
    for i in range(n):
        world.add_node(f"n{i:02d}")
    return world


def test_burst_discovery_gives_every_node_full_membership_and_few_random_links() -> None:
    world = _mesh(40, 3, discovery="burst")
    world.run_until(2.0)
    degrees = [len(s.node.links) for s in world.live()]
    assert min(degrees) >= 4  # random_links = 4 opened by each node, plus incoming ones
    assert max(degrees) <= 16
    for sim in world.live():
        assert len(sim.node.membership.alive()) == 39


def test_pairwise_discovery_makes_no_hub() -> None:
    # With every node discovering peers in one fixed order, the 16 lowest ids became hubs
    # linked to everyone; arrival order is now random per pair.
    world = _mesh(40, 5)
    world.run_until(2.0)
    degrees = sorted(len(s.node.links) for s in world.live())
    assert degrees[-1] < 39
    assert degrees[0] >= 16


def test_a_write_reaches_everyone_with_either_discovery() -> None:
    for discovery in ("burst", "pairwise"):
        world = _mesh(20, 1, discovery=discovery)
        world.run_until(1.0)
        world.write("n03", [NewItem("L2", "hello", "item-1")])
        world.run_until(2.0)
        assert world.holds_everything(["item-1"]), discovery
        assert world.digests_equal(), discovery


def test_skewed_clocks_never_spin_a_timer() -> None:
    # Found with seed 0: `deadline - skew` rounded to `now` while `now + skew` rounded one
    # ulp below the deadline, so the same Tick fired forever at one instant.
    world = World(0)
    for i, skew in enumerate((1.261714742492535, -2.5, 0.3, 2.9999)):
        world.add_node(f"n{i}", skew_s=skew)
    world.run_until(30.0)
    assert world.events_processed < 4 * 30 * 200


def test_negative_skew_at_time_zero_is_fine() -> None:
    world = World(2)
    world.add_node("a", skew_s=-3.0)
    world.add_node("b", skew_s=2.0)
    world.run_until(5.0)
    assert world.clock_of(world.nodes["a"]) == pytest.approx(5.0 + CLOCK_ORIGIN_S - 3.0)
    world.write("a", [NewItem("L1", "x", "x1")])
    world.run_until(6.0)
    assert world.holds_everything(["x1"])


def test_traffic_accounting_survives_restarts_and_matches_the_node_counters() -> None:
    world = _mesh(6, 4)
    world.run_until(3.0)
    counted = {s.node_id: s.node.counters.frames_out for s in world.live()}
    assert {s.node_id: s.frames_sent for s in world.live()} == counted
    world.crash("n01")
    world.run_until(4.0)
    world.restart("n01")
    world.run_until(8.0)
    sim = world.nodes["n01"]
    assert sim.frames_sent > sim.node.counters.frames_out > 0
    by_type = world.traffic_by_type()
    assert sum(f for f, _b in by_type.values()) == sum(s.frames_sent for s in world.live())
    assert sum(b for _f, b in by_type.values()) == sum(s.bytes_sent for s in world.live())
    assert {"HELLO", "PING", "PING_ACK", "DIGEST", "MEMORY_SYNC"} <= set(by_type)


def test_burst_restart_learns_the_membership_again() -> None:
    world = _mesh(25, 6, discovery="burst")
    world.run_until(2.0)
    world.crash("n07")
    world.run_until(3.0)
    world.write("n01", [NewItem("L3", "while down", "late")])
    world.run_until(4.0)
    world.restart("n07")
    world.run_until(8.0)
    assert world.nodes["n07"].node.links
    assert world.holds_everything(["late"])


def test_timer_quantum_keeps_the_protocol_working() -> None:
    world = _mesh(20, 8, discovery="burst", timer_quantum_s=0.005)
    world.run_until(1.0)
    world.partition([[f"n{i:02d}" for i in range(10)]])
    world.write("n00", [NewItem("L1", "left", "l")])
    world.write("n15", [NewItem("L1", "right", "r")])
    world.run_until(3.0)
    assert not world.holds_everything(["l", "r"])
    world.heal()
    world.run_until(10.0)
    assert world.holds_everything(["l", "r"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        World(1, discovery="gossip")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        World(1, timer_quantum_s=-1.0)
    world = World(1)
    world.add_node("a")
    with pytest.raises(ValueError):
        world.add_node("a")
    with pytest.raises(ValueError):
        world.add_node("b", skew_s=CLOCK_ORIGIN_S)


def test_links_required_drops_frames_without_an_open_link() -> None:
    world = _mesh(30, 2, discovery="burst", links_required=True)
    world.run_until(3.0)
    assert world.frames_unlinked > 0  # SWIM probes and digests to members with no link
    world.write("n05", [NewItem("L2", "flooded over links", "f1")])
    world.run_until(4.0)
    assert world.holds_everything(["f1"])  # flooding only ever uses links


def test_links_required_small_mesh_heals() -> None:
    world = _mesh(8, 3, links_required=True)
    world.run_until(2.0)
    world.partition([["n00", "n01", "n02", "n03"]])
    world.write("n00", [NewItem("L1", "a", "a")])
    world.write("n06", [NewItem("L1", "b", "b")])
    world.run_until(20.0)
    world.heal()
    world.run_until(40.0)
    assert world.holds_everything(["a", "b"])


def test_with_links_required_a_crash_leaves_no_link_that_still_delivers() -> None:
    """Found in review: a crashed node's peers kept their links, and after a restart their
    frames reached the new node over links it never opened (12% of a churn run's)."""
    world = _mesh(4, 5, links_required=True)
    world.run_until(3.0)
    assert "n01" in world.nodes["n00"].node.links
    world.crash("n01")
    world.run_until(3.5)
    assert "n01" in world.nodes["n00"].node.links  # the transport has not noticed yet
    world.restart("n01")
    world.run_until(3.6)
    for peer in ("n00", "n02", "n03"):  # its new links replaced the old ones everywhere
        assert ("n01" in world.nodes[peer].node.links) == (peer in world.nodes["n01"].node.links)
    world.write("n00", [NewItem("L1", "after the restart", "r1")])
    world.run_until(10.0)
    assert world.holds_everything(["r1"])


def test_with_links_required_stale_links_to_a_restarted_node_go_when_consent_expires() -> None:
    """Found in review: after a quick restart the peers the node did not link to again
    kept their old, one-sided links for good (SWIM saw the node alive through others)."""
    world = _mesh(40, 1, links_required=True)
    world.run_until(5.0)
    world.crash("n07")
    world.run_until(5.2)
    world.restart("n07")
    world.run_until(5.2 + LINK_LOSS_DETECT_S + 5.0)
    fresh = world.nodes["n07"].node.links
    one_sided = [p for p, sim in world.nodes.items() if "n07" in sim.node.links and p not in fresh]
    assert one_sided == []
