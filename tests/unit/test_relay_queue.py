"""The hub's relay queue (hub_role.relay): priority order, LOW batching, per-origin limits."""

from __future__ import annotations

from hub_role.config import HubConfig
from hub_role.relay import Envelope, Push, RelayQueue
from mesh.frames import Priority


def env(origin: str, priority: Priority, tag: str, at: float = 0.0) -> Envelope:
    return Envelope(origin, priority, tag.encode(), at)


def drain(queue: RelayQueue, until: float, step: float = 0.01) -> list[str]:
    out: list[str] = []
    now = 0.0
    while now <= until:
        out.extend(e.data.decode() for e in queue.pop_ready(now))
        now = round(now + step, 9)
    return out


def test_high_goes_before_normal_and_low_queued_earlier() -> None:
    queue = RelayQueue(HubConfig(relay_burst=2, low_batch_s=0.05))
    for i in range(4):
        queue.push(env("a", Priority.LOW, f"low{i}"), 0.0)
    for i in range(2):
        queue.push(env("b", Priority.NORMAL, f"normal{i}"), 0.0)
    for i in range(2):
        queue.push(env("c", Priority.HIGH, f"high{i}"), 0.0)
    order = drain(queue, 1.0)
    assert order == ["high0", "high1", "normal0", "normal1", "low0", "low1", "low2", "low3"]
    assert len(queue) == 0


def test_low_waits_for_its_batch_window_or_size() -> None:
    queue = RelayQueue(HubConfig(low_batch_s=0.5, low_batch_max=3))
    queue.push(env("a", Priority.LOW, "l0", 0.0), 0.0)
    assert queue.pop_ready(0.1) == []
    assert queue.next_deadline() == 0.5
    assert [e.data for e in queue.pop_ready(0.5)] == [b"l0"]
    for i in range(3):
        queue.push(env("a", Priority.LOW, f"m{i}", 1.0), 1.0)
    assert len(queue.pop_ready(1.0)) == 3


def test_urgent_priorities_queue_as_high() -> None:
    queue = RelayQueue(HubConfig())
    queue.push(env("a", Priority.NORMAL, "n"), 0.0)
    queue.push(env("a", Priority.CRITICAL, "c"), 0.0)
    assert [e.data for e in queue.pop_ready(0.0)] == [b"c", b"n"]


def test_a_flooding_origin_is_deferred_not_dropped() -> None:
    queue = RelayQueue(HubConfig(origin_rate_per_s=10.0, origin_burst=2, relay_burst=100))
    for i in range(5):
        assert queue.push(env("noisy", Priority.HIGH, f"x{i}"), 0.0) is Push.QUEUED
    queue.push(env("quiet", Priority.NORMAL, "q"), 0.0)
    first = [e.data.decode() for e in queue.pop_ready(0.0)]
    assert first == ["x0", "x1", "q"]
    assert queue.deferred_total == 3
    assert queue.next_deadline() == 0.1
    later = drain(queue, 0.5)
    assert later == ["x2", "x3", "x4"]


def test_full_queue_refuses_and_everything_empties_it() -> None:
    queue = RelayQueue(HubConfig(queue_max=2, low_batch_s=10.0))
    assert queue.push(env("a", Priority.LOW, "1"), 0.0) is Push.QUEUED
    assert queue.push(env("b", Priority.LOW, "2"), 0.0) is Push.QUEUED
    assert queue.push(env("c", Priority.LOW, "3"), 0.0) is Push.FULL
    assert queue.refused_total == 1
    assert queue.pop_ready(0.0) == []
    assert len(queue.pop_ready(0.0, everything=True)) == 2


def test_the_queue_is_bounded_in_bytes_too() -> None:
    queue = RelayQueue(HubConfig(queue_max_bytes=10, low_batch_s=10.0))
    assert queue.push(env("a", Priority.LOW, "x" * 6), 0.0) is Push.QUEUED
    assert queue.push(env("b", Priority.LOW, "y" * 5), 0.0) is Push.FULL
    assert queue.push(env("b", Priority.LOW, "y" * 4), 0.0) is Push.QUEUED
    assert len(queue.pop_ready(0.0, everything=True)) == 2
    assert queue.push(env("b", Priority.LOW, "z" * 10), 0.0) is Push.QUEUED  # bytes freed


def test_one_origin_cannot_hold_more_than_its_share_of_deferred_envelopes() -> None:
    """Regression: one member deferred 100,000 envelopes (GBs) past its rate limit."""
    config = HubConfig(origin_rate_per_s=10.0, origin_burst=2, origin_deferred_max=3)
    queue = RelayQueue(config)
    results = [queue.push(env("noisy", Priority.HIGH, f"x{i}"), 0.0) for i in range(8)]
    assert results == [Push.QUEUED] * 5 + [Push.OVER_SHARE] * 3  # 2 at once, 3 deferred
    assert queue.over_share_total == 3 and queue.backlog()["deferred"] == 3
    assert queue.push(env("quiet", Priority.HIGH, "q"), 0.0) is Push.QUEUED
    drain(queue, 1.0)
    assert queue.push(env("noisy", Priority.HIGH, "later"), 1.0) is Push.QUEUED


def test_rate_limit_state_of_many_origins_stays_bounded_and_still_limits() -> None:
    config = HubConfig(origin_rate_per_s=10.0, origin_burst=2, relay_burst=100_000)
    queue = RelayQueue(config)
    now = 0.0
    for i in range(20_000):  # a new self-signed origin every 10 ms (open membership)
        queue.push(env(f"origin-{i}", Priority.NORMAL, "x", now), now)
        queue.pop_ready(now)
        now += 0.01
    assert len(queue._buckets) <= 2 * 1_024  # refilled buckets were forgotten
    for i in range(5):  # a flooding origin is still limited after the prunes
        queue.push(env("noisy", Priority.HIGH, f"n{i}", now), now)
    assert [e.data.decode() for e in queue.pop_ready(now + 1.0)][:2] == ["n0", "n1"]
    assert queue.deferred_total == 3


def test_an_envelope_that_must_go_out_waits_on_the_rate_past_the_share() -> None:
    config = HubConfig(origin_rate_per_s=10.0, origin_burst=1, origin_deferred_max=1)
    queue = RelayQueue(config)
    assert queue.push(env("noisy", Priority.HIGH, "x0"), 0.0) is Push.QUEUED
    assert queue.push(env("noisy", Priority.HIGH, "x1"), 0.0) is Push.QUEUED  # deferred
    assert queue.push(env("noisy", Priority.HIGH, "x2"), 0.0) is Push.OVER_SHARE
    acked = env("noisy", Priority.HIGH, "x3")
    assert queue.push(acked, 0.0, beyond_share=True) is Push.QUEUED  # deferred too
    assert [e.data for e in queue.pop_ready(0.0)] == [b"x0"]  # not fanned out at once
    assert drain(queue, 1.0) == ["x1", "x3"]
