"""hub_role.leases: exclusive advisory leases with fencing tokens that only grow."""

from __future__ import annotations

from hub_role.leases import LeaseTable


def test_one_holder_at_a_time_until_expiry_or_release() -> None:
    table = LeaseTable(term=1)
    ok, lease = table.request("db", "a", 5.0, now=0.0)
    assert ok and lease.holder == "a" and lease.expires_at == 5.0
    ok, other = table.request("db", "b", 5.0, now=1.0)
    assert not ok and other == lease
    assert not table.release("db", "b", lease.token)
    assert not table.release("db", "a", lease.token + 1)
    assert table.release("db", "a", lease.token)
    ok, second = table.request("db", "b", 5.0, now=2.0)
    assert ok and second.token > lease.token
    ok, third = table.request("db", "c", 1.0, now=7.0)  # b's lease ran out at 7.0
    assert ok and third.holder == "c" and third.token > second.token


def test_renewal_gives_a_new_larger_token() -> None:
    table = LeaseTable(term=3)
    _ok, first = table.request("x", "a", 1.0, now=0.0)
    ok, renewed = table.request("x", "a", 1.0, now=0.5)
    assert ok and renewed.token > first.token and renewed.expires_at == 1.5


def test_tokens_grow_across_terms_and_hubs() -> None:
    old = LeaseTable(term=2)
    tokens = [old.request(f"n{i}", "a", 1.0, now=0.0)[1].token for i in range(100)]
    new_hub = LeaseTable(term=3)  # a new hub knows nothing of the old table
    _ok, fresh = new_hub.request("n0", "b", 1.0, now=0.0)
    assert fresh.token > max(tokens)
    assert fresh.term == 3
    old.set_term(5)
    _ok, later = old.request("n0", "a", 1.0, now=10.0)
    assert later.token > fresh.token
