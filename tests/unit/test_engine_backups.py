"""Backup copies live apart from the packet path's table until a takeover moves them in one step."""

from __future__ import annotations

from engine.conntrack import TRANSIENT_TCP_STATES
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


def test_key_sweeps_see_announced_keys_and_forget_only_a_peers_copies() -> None:
    """The engine's side of sync/sweep.py: an owner names the entries its peers heard of (a
    connection still in a quiet state is not one), and a backup forgets copies, never its own."""
    owner, _ = _owner_with_flows(3, mark=2)
    assert sorted(owner.store.sweep_keys("n1")) == sorted(owner.table.conns)
    quiet = Engine("n1", default_rules(), quiet_states=TRANSIENT_TCP_STATES)
    quiet.process(TcpFlow(C1, S1, 42000, 5001).handshake()[0], 1.0, 2)  # a SYN: not announced
    assert len(quiet.table.conns) == 1 and list(quiet.store.sweep_keys("n1")) == []

    peer = Engine("n2", default_rules())
    peer.process(TcpFlow(C1, S1, 41000, 5001).handshake()[0], 1.0, 5)
    for rec in owner.store.records():
        peer.store.apply(rec)
    copies = sorted(peer.store.sweep_keys("n1"))
    assert len(copies) == 3
    (mine,) = peer.table.conns
    assert peer.store.forget("n2", [mine]) == 0 and mine in peer.table.conns
    assert peer.store.forget("n3", copies) == 0  # not n3's
    assert peer.store.forget("n1", copies[:2]) == 2
    assert list(peer.store.sweep_keys("n1")) == copies[2:]
    # No tombstone: the owner's record of a forgotten key is taken again.
    rec = owner.store.get(copies[0])
    assert rec is not None and peer.store.apply(rec)
