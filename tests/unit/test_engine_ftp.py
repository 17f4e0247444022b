"""The FTP helper through the engine: PORT/EPRT/227/229 open exactly the data connection, once."""

from __future__ import annotations

import pytest

from engine.conntrack import EventKind, Timeouts
from engine.core import Engine, SyncKind, Verdict
from engine.ftp import Anomaly, Expect, FtpHelper, Refuse
from engine.packet import Reason
from engine.rules import default_rules
from sync.records import Scope
from tests.unit.engine_packets import C1, C2, EVIL, S1, S2, TcpFlow, tcp

C1_B = bytes((198, 18, 1, 10))
S2_B = bytes((198, 18, 2, 11))


def _control(engine: Engine, now: float = 1.0) -> TcpFlow:
    f = TcpFlow(C1, S2, 40021, 21)
    for p in [*f.handshake(), f.s2c(b"220 syncwall ftp ready\r\n"), f.c2s(b"USER anonymous\r\n")]:
        assert engine.process(p, now).verdict is Verdict.ACCEPT
    return f


def _hold_then_release(engine: Engine, pkt: bytes, now: float = 2.0) -> bytes:
    """Send the segment that names a data connection; it is held until its expectation is synced."""
    d = engine.process(pkt, now)
    assert (d.verdict, d.reason) == (Verdict.HOLD, "hold-related")
    (req,) = engine.drain_sync_requests()
    assert (req.sync_id, req.kind, req.scope) == (d.sync_id, SyncKind.PUSH, Scope.COMMON)
    assert req.deadline > now
    (key,) = req.keys
    assert engine.store.get(key) is not None
    assert d.sync_id is not None
    engine.sync_done(d.sync_id, True, now + 0.001)
    return key


def _only_once(engine: Engine, first: bytes, again: bytes) -> None:
    d = engine.process(first, 3.0)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "related")
    assert not list(engine.rows("common")), "the expectation is used up"
    d = engine.process(again, 3.1)
    assert d.verdict is Verdict.DROP


def test_active_port_admits_exactly_the_data_connection_once() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    key = _hold_then_release(engine, f.c2s(b"PORT 198,18,1,10,195,81\r\n"))
    row = next(iter(engine.rows("common")))
    assert (row["src"], row["dst"], row["kind"]) == (f"{S2}:*", f"{C1}:50001", "expect")
    # Only the server may connect, and only to the named port.
    assert engine.process(tcp(S1, C1, 20, 50001, "S"), 2.5).verdict is Verdict.DROP
    assert engine.process(tcp(S2, C1, 20, 50002, "S"), 2.5).verdict is Verdict.DROP
    data = TcpFlow(S2, C1, 20, 50001)
    _only_once(engine, data.syn(), tcp(S2, C1, 21000, 50001, "S"))
    assert engine.process(data.synack(), 3.0).verdict is Verdict.ACCEPT
    events = engine.drain_events()
    assert any(e.key == key and e.kind is EventKind.DELETE and e.scope is Scope.COMMON for e in events)
    row = next(r for r in engine.rows("own") if r["src"] == f"{S2}:20")
    assert row["state"] == "syn-recv"
    rec = engine.store.get(bytes.fromhex(row["key"]))
    assert rec is not None
    control = next(r for r in engine.rows("own") if r["dst"] == f"{S2}:21")
    assert rec.data[6] == ["master", control["key"]]  # extra: the control connection it belongs to


def test_active_eprt() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    _hold_then_release(engine, f.c2s(b"EPRT |1|198.18.1.10|50003|\r\n"))
    _only_once(engine, tcp(S2, C1, 20, 50003, "S"), tcp(S2, C1, 2020, 50003, "S"))


def test_passive_227_admits_the_client_only() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    engine.process(f.c2s(b"PASV\r\n"), 1.5)
    _hold_then_release(engine, f.s2c(b"227 Entering Passive Mode (198,18,2,11,195,80).\r\n"))
    assert engine.process(tcp(C2, S2, 41000, 50000, "S"), 2.5).verdict is Verdict.DROP
    _only_once(engine, tcp(C1, S2, 41000, 50000, "S"), tcp(C1, S2, 41001, 50000, "S"))


def test_passive_229() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    engine.process(f.c2s(b"EPSV\r\n"), 1.5)
    _hold_then_release(engine, f.s2c(b"229 Entering Extended Passive Mode (|||50004|)\r\n"))
    _only_once(engine, tcp(C1, S2, 41000, 50004, "S"), tcp(C1, S2, 41002, 50004, "S"))


def test_a_command_split_across_segments_is_read_whole() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    for part in (b"PO", b"RT 198,18,1,10,", b"195,85\r"):
        assert engine.process(f.c2s(part), 1.5).verdict is Verdict.ACCEPT
    _hold_then_release(engine, f.c2s(b"\n"))
    _only_once(engine, tcp(S2, C1, 20, 50005, "S"), tcp(S2, C1, 2020, 50005, "S"))


def test_later_packets_of_a_held_connection_wait_on_the_same_sync() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    d = engine.process(f.c2s(b"PORT 198,18,1,10,195,81\r\n"), 2.0)
    later = engine.process(f.s2c(b"200 PORT command successful\r\n"), 2.01)
    assert (later.verdict, later.reason, later.sync_id) == (Verdict.HOLD, "hold-waiting", d.sync_id)
    assert d.sync_id is not None
    engine.sync_done(d.sync_id, False, 2.2)  # timed out: released anyway, counted apart
    assert engine.process(f.c2s(b"LIST\r\n"), 2.3).verdict is Verdict.ACCEPT
    c = engine.counters
    assert (c["held"], c["released-by-timeout"], c.get("released-by-ack", 0)) == (2, 1, 0)


@pytest.mark.parametrize(
    "line",
    [b"PORT 198,18,2,66,0,22\r\n", b"EPRT |1|198.18.2.66|22|\r\n", b"port 198,18,1,11,4,1\r\n"],
)
def test_a_port_naming_another_host_is_refused_and_counted(line: bytes) -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    seq = f.cseq
    d = engine.process(f.c2s(line), 2.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "ftp-port-bounce")
    # The client retransmits the dropped segment: it is read (and refused) again.
    f.cseq = seq
    assert engine.process(f.c2s(line), 2.5).reason == "ftp-port-bounce"
    assert engine.counters["ftp-port-bounce"] == 2
    assert not list(engine.rows("common"))
    assert not engine.drain_sync_requests()
    assert engine.process(tcp(EVIL, C1, 20, 22, "S"), 3.0).verdict is Verdict.DROP


def test_a_227_naming_another_host_is_refused() -> None:
    engine = Engine("n1", default_rules())
    f = _control(engine)
    d = engine.process(f.s2c(b"227 Entering Passive Mode (198,18,2,66,0,22).\r\n"), 2.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "ftp-pasv-bounce")


def test_periodic_policy_accepts_at_once_and_still_expects() -> None:
    engine = Engine("n1", default_rules(), hold_related=False)
    f = _control(engine)
    d = engine.process(f.c2s(b"PORT 198,18,1,10,195,81\r\n"), 2.0)
    assert d.verdict is Verdict.ACCEPT
    assert not engine.drain_sync_requests()
    news = [e for e in engine.drain_events() if e.scope is Scope.COMMON]
    assert [e.kind for e in news] == [EventKind.NEW]
    assert engine.process(tcp(S2, C1, 20, 50001, "S"), 3.0).reason == "related"


def test_an_unused_expectation_times_out() -> None:
    engine = Engine("n1", default_rules(), Timeouts(expectation_s=5))
    f = _control(engine)
    _hold_then_release(engine, f.c2s(b"PORT 198,18,1,10,195,81\r\n"), now=2.0)
    engine.drain_events()
    engine.expire(6.9)
    assert list(engine.rows("common"))
    engine.expire(7.0)
    assert not list(engine.rows("common"))
    assert [(e.kind, e.scope) for e in engine.drain_events()] == [(EventKind.DELETE, Scope.COMMON)]
    assert engine.process(tcp(S2, C1, 20, 50001, "S"), 7.5).verdict is Verdict.DROP


def test_the_hold_cap_drops_and_counts() -> None:
    engine = Engine("n1", default_rules(), max_held_syncs=1)
    f = _control(engine)
    assert engine.process(f.c2s(b"PORT 198,18,1,10,195,81\r\n"), 2.0).verdict is Verdict.HOLD
    g = TcpFlow(C1, S2, 40022, 21)
    for p in g.handshake():
        engine.process(p, 2.0)
    d = engine.process(g.c2s(b"PORT 198,18,1,10,195,82\r\n"), 2.0)
    assert (d.verdict, d.reason) == (Verdict.DROP, "hold-cap")
    assert engine.counters["hold-cap"] == 1


def test_helper_ignores_retransmitted_bytes_and_survives_gaps() -> None:
    h = FtpHelper(C1_B, S2_B)
    port = b"PORT 198,18,1,10,195,81\r\n"
    (first,) = h.feed(True, 100, port)
    assert first == Expect(S2_B, 0, C1_B, 50001, "ftp-port")
    assert h.feed(True, 100, port) == []  # a pure retransmission is not read twice
    assert h.feed(True, 100 + len(port) + 50, b"PORT 198,18,1,10,195,82\r\n") == [
        Anomaly("ftp-gap"), Expect(S2_B, 0, C1_B, 50002, "ftp-port"),
    ]
    assert h.feed(False, 7, b"227 Entering Passive Mode (198,18,2,66,1,1)\r\n") == [
        Refuse(Reason.FTP_PASV_BOUNCE)
    ]
    assert h.feed(True, 0x7FFFFFFF, b"PORT 1,2\r\n") == [Anomaly("ftp-gap"), Anomaly("ftp-malformed")]
    restored = FtpHelper.from_state(C1_B, S2_B, h.state())
    assert restored.snapshot() == h.snapshot()
