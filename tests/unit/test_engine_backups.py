"""Backup copies live apart from the packet path's table until a takeover moves them in one step."""

from __future__ import annotations

from engine.core import Engine, Verdict
from engine.rules import default_rules
from tests.unit.engine_packets import C1, S1, TcpFlow


def _owner_with_flows(n: int, mark: int) -> tuple[Engine, list[TcpFlow]]:
    owner = Engine("n1", default_rules())
    flows = []
    for i in range(n):
        f = TcpFlow(C1, S1, 40000 + i, 5001)
        for p in f.handshake():
            owner.process(p, 1.0, mark)
        flows.append(f)
    return owner, flows


def test_copies_stay_out_of_the_connection_table_until_promoted() -> None:
    owner, flows = _owner_with_flows(3, mark=2)
    peer = Engine("n2", default_rules())
    peer.process(TcpFlow(C1, S1, 41000, 5001).handshake()[0], 1.0, 5)  # one own connection
    for rec in owner.store.records():
        assert peer.store.apply(rec)
    assert len(peer.table.conns) == 1 and len(peer.backups) == 3
    assert peer.store.counts() == {"own": 1, "backup": 3, "common": 0}
    assert {r.owner for r in peer.store.records(owner="n1")} == {"n1"}

    promoted = peer.store.promote([2], "n2")
    assert len(promoted) == 3 and all(r.owner == "n2" for r in promoted)
    assert len(peer.table.conns) == 4 and len(peer.backups) == 0
    assert peer.store.counts() == {"own": 4, "backup": 0, "common": 0}
    # Promoted entries take the fast path like any own connection.
    d = peer.process(flows[0].c2s(b"after takeover"), 2.0, 2)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")


def test_a_record_that_changes_owner_moves_between_table_and_copies() -> None:
    owner, _ = _owner_with_flows(1, mark=2)
    (rec,) = owner.store.records()
    peer = Engine("n2", default_rules())
    assert peer.store.apply(rec)
    (ours,) = peer.store.promote([2], "n2")
    assert list(peer.table.conns) == [rec.key]
    # A later version says n3 carries it now (a rebalance): it leaves our table.
    moved = type(ours)(ours.key, ours.scope, "n3", ours.version + 1, ours.bucket, list(ours.data))
    assert peer.store.apply(moved)
    assert not peer.table.conns and [e.owner for e in peer.backups] == ["n3"]
    assert peer.store.drop_owner("n3") == 1 and peer.store.counts()["backup"] == 0


def _sync(owner: Engine, peer: Engine) -> int:
    """Deliver the owner's pending changes to the peer, as its backup; how many."""
    keys = [ev.key for ev in owner.drain_events()]
    for k in keys:
        rec = owner.store.get(k)
        assert rec is not None
        peer.store.apply(rec)
    return len(keys)


def test_a_copy_whose_delete_never_came_times_out_like_its_owners_entry() -> None:
    owner, _ = _owner_with_flows(1, mark=2)
    peer = Engine("n2", default_rules())
    _sync(owner, peer)
    assert len(peer.backups) == 1
    # The owner's entry expires and its delete is lost (the peer was thought down then).
    t_out = owner.timeouts.established_s
    owner.expire(1.0 + t_out + 1)
    assert not owner.table.conns
    owner.drain_events()
    peer.expire(1.0 + t_out)
    assert len(peer.backups) == 1, "a copy outlives its owner's timeout by the grace period"
    peer.expire(1.0 + t_out + peer.timeouts.copy_grace_s + 1)
    assert len(peer.backups) == 0 and not peer.table.conns
    assert peer.counters["copies_expired"] == 1
    assert peer.drain_events() == [], "a copy's expiry says nothing: the entry is not ours"
    assert peer.store.records() is not None and list(peer.store.records()) == []


def test_the_owner_of_a_busy_connection_refreshes_its_copies_once_per_timeout() -> None:
    owner, (flow,) = _owner_with_flows(1, mark=2)
    peer = Engine("n2", default_rules())
    _sync(owner, peer)
    t_out = owner.timeouts.established_s
    sent = 0
    t = 1.0
    while t < 1.0 + 4 * t_out:  # 20 minutes of traffic every 10 s, expiry every second
        t += 1.0
        if int(t) % 10 == 0:
            assert owner.process(flow.c2s(b"x"), t, 2).verdict is Verdict.ACCEPT
        owner.expire(t)
        sent += _sync(owner, peer)
        peer.expire(t)
        assert len(peer.backups) == 1, f"the copy of a living connection went at t={t}"
    assert 3 <= sent <= 5, f"about one refresh per {t_out} s, not per packet: {sent}"
    # Promoted after all that, it is the same connection, carried on by the backup.
    (rec,) = peer.store.promote([2], "n2")
    assert rec.owner == "n2"
    assert peer.process(flow.c2s(b"after"), t + 1, 2).verdict is Verdict.ACCEPT


def test_an_idle_connection_is_not_refreshed_and_its_delete_removes_the_copy() -> None:
    owner, _ = _owner_with_flows(1, mark=2)
    peer = Engine("n2", default_rules())
    _sync(owner, peer)
    t_out = owner.timeouts.established_s
    for t in range(2, int(t_out) + 3):
        owner.expire(float(t))
        _sync(owner, peer)
        peer.expire(float(t))
    assert not owner.table.conns and len(peer.backups) == 0
    assert owner.counters["expired"] == 1 and "copies_expired" not in peer.counters
