"""Synthetic own connections for the benches (engine/synthetic.py): what a node holds and syncs."""

from __future__ import annotations

import pytest

from engine.conntrack import ConnState
from engine.core import Engine
from engine.packet import split_key
from engine.rules import default_rules
from engine.synthetic import MAX_SYNTHETIC, fill_synthetic, synthetic_key
from sync.records import Scope


def test_filled_entries_are_own_established_spread_over_the_buckets_and_silent() -> None:
    eng = Engine("n1", default_rules())
    assert fill_synthetic(eng.table, 0, 1000, [3, 5], 10.0) == 1000
    conns = eng.table.conns
    assert len(conns) == 1000 and len({synthetic_key(i) for i in range(1000)}) == 1000
    assert {e.state for e in conns.values()} == {ConnState.ESTABLISHED}
    assert {e.owner for e in conns.values()} == {"n1"}
    assert sorted({e.bucket for e in conns.values()}) == [3, 5]
    assert not eng.drain_events(), "peers learn of them by resync, not one event each"
    # The store reads them like any other entry, and their keys without building records.
    keys = eng.store.keys(owner="n1", scope=Scope.NODE)
    assert sorted(keys) == sorted(conns)
    assert eng.store.keys(owner="n1", scope=Scope.NODE, buckets=[3]) == [
        k for k, e in conns.items() if e.bucket == 3]
    assert len(list(eng.store.records(owner="n1", scope=Scope.NODE))) == 1000
    # A bulk answer leaves out its own keys of the moving buckets (they came with its own).
    assert eng.store.keys(scope=Scope.NODE, buckets=[3], not_owner="n1") == []
    assert len(eng.store.keys(scope=Scope.NODE, buckets=[3], not_owner="n2")) == 500
    assert len(eng.store.keys(scope=Scope.NODE)) == 1000
    # Adding more continues the numbering; what is there already is left alone.
    assert fill_synthetic(eng.table, 500, 1000, [3, 5], 11.0) == 500
    assert len(conns) == 1500
    proto, a, ap, b, bp = split_key(synthetic_key(123_456))
    assert ap == 1024 + 123_456 % 60_000
    assert (proto, a[:2], b, bp) == (6, bytes((198, 18)), bytes((198, 19, 0, 1)), 5001)


def test_filled_entries_expire_like_any_established_entry() -> None:
    eng = Engine("n1", default_rules())
    fill_synthetic(eng.table, 0, 10, [0], 0.0)
    assert eng.table.expire(eng.table.timeouts.established_s + 1) == 10 and not eng.table.conns


def test_fill_refuses_no_buckets_and_numbers_out_of_range() -> None:
    eng = Engine("n1", default_rules())
    with pytest.raises(ValueError):
        fill_synthetic(eng.table, 0, 1, [], 0.0)
    with pytest.raises(ValueError):
        fill_synthetic(eng.table, MAX_SYNTHETIC, 1, [0], 0.0)


def test_expiry_happens_at_the_deadline_exactly_whatever_the_slot() -> None:
    eng = Engine("n1", default_rules())
    t = eng.table
    fill_synthetic(t, 0, 3, [0], 10.0)
    a, b, c = (t.conns[synthetic_key(i)] for i in range(3))
    timeout = t.timeouts.established_s
    b.last_seen = 10.05  # the same 1/8 s slot as a's deadline, but later
    c.last_seen = 12.0  # seen again: its queued deadline is stale, it is filed again
    assert t.expire(10 + timeout - 0.001) == 0
    assert t.expire(10 + timeout) == 1 and a.key not in t.conns
    assert t.expire(10.049 + timeout) == 0 and b.key in t.conns
    assert t.expire(10.05 + timeout) == 1 and b.key not in t.conns
    assert t.expire(11.999 + timeout) == 0 and c.key in t.conns
    assert t.expire(12 + timeout) == 1 and not t.conns
    assert not t._wheel and not t._slots, "nothing left filed"
