"""Engines under real sync agents in the simulator: a flow survives its node's crash; an FTP
expectation synced on demand opens the data connection on another node."""

from __future__ import annotations

from typing import Any

from engine.core import Engine, SyncKind, Verdict
from engine.rules import default_rules
from sync.agent import BucketsGained, SyncCompleted
from sync.records import Scope
from sync.sim import SimCluster
from tests.unit.engine_packets import C1, S1, S2, TcpFlow, tcp


def _cluster() -> tuple[SimCluster, dict[str, Engine]]:
    c = SimCluster(3, buckets=6)
    engines = {x: Engine(x, default_rules()) for x in c.names}
    for x, e in engines.items():
        store: Any = e.store  # an EngineStore is a StateStore; the simulator's hint says MemoryStore
        c.start([x], store=store)
    assert c.run_until(c.all_active, 2.0)
    return c, engines


def _publish(c: SimCluster, engines: dict[str, Engine]) -> None:
    """What the node process does after each packet: tell its agent about every state event."""
    for x, e in engines.items():
        if x in c.agents:
            for ev in e.drain_events():
                c.agents[x].changed(ev.key, c.now)


def test_a_flow_survives_the_crash_of_its_node() -> None:
    c, engines = _cluster()
    owner = "n1"
    bucket = c.agents[owner].owned_buckets[0]
    backup = c.agents[owner].view.backups[owner][0]
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        assert engines[owner].process(p, c.now, bucket).verdict is Verdict.ACCEPT
    _publish(c, engines)
    c.run(0.05)
    assert [r["owner"] for r in engines[backup].rows("backup")] == [owner]

    c.kill(owner)
    assert c.run_until(lambda: bucket in c.agents[backup].owned_buckets, 2.0)
    gained = [e for e in c.events[backup] if isinstance(e, BucketsGained)]
    assert gained and gained[-1].promoted >= 1
    d = engines[backup].process(f.c2s(b"after the crash"), c.now, bucket)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")
    (row,) = engines[backup].rows("own")
    assert row["owner"] == backup and row["state"] == "established"


def test_ftp_expectation_is_synced_before_the_port_command_goes_on() -> None:
    c, engines = _cluster()
    ctl_node, data_node = "n1", "n3"
    f = TcpFlow(C1, S2, 40021, 21)
    for p in f.handshake():
        engines[ctl_node].process(p, c.now, 1)
    d = engines[ctl_node].process(f.c2s(b"PORT 198,18,1,10,195,81\r\n"), c.now, 1)
    assert d.verdict is Verdict.HOLD and d.sync_id is not None
    (req,) = engines[ctl_node].drain_sync_requests()
    assert req.kind is SyncKind.PUSH and req.scope is Scope.COMMON
    token = c.agents[ctl_node].sync_and_notify(list(req.keys), c.now, 0.2)
    _publish(c, engines)
    assert c.run_until(
        lambda: any(isinstance(e, SyncCompleted) and e.token == token for e in c.events[ctl_node]), 1.0
    )
    done = next(e for e in c.events[ctl_node] if isinstance(e, SyncCompleted) and e.token == token)
    assert done.acked
    engines[ctl_node].sync_done(d.sync_id, done.acked, c.now)
    # By the time the server sees PORT, every node can admit its data connection.
    d2 = engines[data_node].process(tcp(S2, C1, 20, 50001, "S"), c.now, 2)
    assert (d2.verdict, d2.reason) == (Verdict.ACCEPT, "related")
    _publish(c, engines)
    c.run(0.05)
    for e in engines.values():
        assert not list(e.rows("common")), "the used expectation is gone everywhere"
