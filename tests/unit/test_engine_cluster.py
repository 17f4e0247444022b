"""Engines bound to real sync agents in the simulator: a flow survives its node's crash; an FTP
expectation synced on demand opens the data connection on another node."""

from __future__ import annotations

from engine.core import Verdict
from sync.events import BucketsGained
from tests.unit.engine_packets import C1, S1, S2, TcpFlow, tcp
from tests.unit.engine_sim import SimNodes


def test_a_flow_survives_the_crash_of_its_node() -> None:
    sim = SimNodes().start()
    owner = "n1"
    bucket = sim.bucket_of(owner)
    backup = sim.backup_of(owner)
    f = TcpFlow(C1, S1, 40000, 5001)
    for p in f.handshake():
        assert sim.packet(owner, p, bucket).verdict is Verdict.ACCEPT
    sim.run(0.05)
    assert [r["owner"] for r in sim.engine(backup).rows("backup")] == [owner]

    sim.kill(owner)
    assert sim.run_until(lambda: bucket in sim.b[backup].applied, 2.0)
    gained = [e for e in sim.c.events[backup] if isinstance(e, BucketsGained)]
    assert gained and gained[-1].promoted >= 1
    d = sim.packet(backup, f.c2s(b"after the crash"), bucket)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")
    (row,) = sim.engine(backup).rows("own")
    assert row["owner"] == backup and row["state"] == "established"


def test_ftp_expectation_is_synced_before_the_port_command_goes_on() -> None:
    sim = SimNodes().start()
    ctl_node, data_node = "n1", "n3"
    f = TcpFlow(C1, S2, 40021, 21)
    for p in f.handshake():
        sim.packet(ctl_node, p, 1)
    d = sim.packet(ctl_node, f.c2s(b"PORT 198,18,1,10,195,81\r\n"), 1, handle="port")
    assert d.verdict is Verdict.HOLD
    assert sim.run_until(lambda: bool(sim.released[ctl_node]), 1.0)
    ((_, r),) = sim.released[ctl_node]
    assert r.handle == "port" and r.accept and sim.b[ctl_node].counters["released_by_ack"] == 1
    # By the time the server sees PORT, every node can admit its data connection.
    d2 = sim.packet(data_node, tcp(S2, C1, 20, 50001, "S"), 2)
    assert (d2.verdict, d2.reason) == (Verdict.ACCEPT, "related")
    sim.run(0.05)
    for x in sim.c.names:
        assert not list(sim.engine(x).rows("common")), "the used expectation is gone everywhere"
