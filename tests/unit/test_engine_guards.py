"""The intrusion blocklist and authenticated users: the pure detector, one engine, and engines
bound to sync agents in the simulator (a scan seen by one node is blocked by all)."""

from __future__ import annotations

import pytest

from engine.auth import user_key, user_record
from engine.blocklist import ScanDetector, ScanSettings, block_key, block_record
from engine.core import Engine, Verdict
from engine.guard_control import guard_counts
from engine.rules import RuleError, parse_rules
from sync.records import Record, Scope
from tests.unit.engine_packets import C1, C2, S1, TcpFlow, tcp
from tests.unit.engine_sim import SimNodes

RULES = [
    {"name": "web", "action": "accept", "proto": "tcp", "dst": S1, "dport": 5001},
    {"name": "members", "action": "accept", "proto": "tcp", "dst": S1, "dport": 5002, "auth": True},
]


def ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def scan(engine: Engine, src: str, ports: range, now: float) -> list[str]:
    return [engine.process(tcp(src, S1, 40000, p, "S"), now).reason for p in ports]


def test_detector_counts_distinct_ports_in_the_window() -> None:
    d = ScanDetector(ScanSettings(ports=3, window_s=1.0))
    src = ip(C2)
    assert d.refused(src, 1, 0.0) == 0
    assert d.refused(src, 2, 0.1) == 0
    assert d.refused(src, 2, 0.2) == 0  # the same port again is no new evidence
    assert d.refused(src, 3, 1.05) == 0  # port 1 left the window
    assert d.refused(src, 4, 1.1) == 3
    assert len(d) == 0  # a detected source starts over


def test_detector_off_and_bad_settings() -> None:
    assert ScanDetector(ScanSettings(ports=0)).refused(ip(C2), 1, 0.0) == 0
    with pytest.raises(ValueError, match="window_s > 0"):
        ScanSettings(window_s=0)


def test_a_scan_blocklists_its_source_until_the_timeout() -> None:
    e = Engine("n1", parse_rules(RULES))
    e.guards.scan = ScanDetector(ScanSettings(ports=4, window_s=1.0, block_s=5.0))
    reasons = scan(e, C2, range(1, 5), 10.0)
    assert reasons == ["no-rule-match"] * 4
    assert e.counters["blocklisted"] == 1
    rec = e.store.get(block_key(ip(C2)))
    assert rec is not None and rec.scope is Scope.COMMON and rec.owner == "n1"
    assert [ev.key for ev in e.drain_events()] == [block_key(ip(C2))]
    # Even what the rules accept is dropped now, from that source only.
    assert e.process(tcp(C2, S1, 40001, 5001, "S"), 11.0).reason == "blocklisted-source"
    assert e.process(tcp(C1, S1, 40001, 5001, "S"), 11.0).verdict is Verdict.ACCEPT
    (row,) = [r for r in e.rows("common") if r["kind"] == "blocklist"]
    assert row["src"] == C2 and row["owner"] == "n1"
    assert e.guards.counts(11.0) == {"blocklisted": 1, "users": 0}
    e.expire(15.1)
    assert block_key(ip(C2)) not in e.store.common
    assert e.store.get(block_key(ip(C2))).deleted  # type: ignore[union-attr]
    assert e.process(tcp(C2, S1, 40002, 5001, "S"), 15.2).verdict is Verdict.ACCEPT


def test_a_peer_entry_is_forgotten_by_its_own_until() -> None:
    e = Engine("n2", parse_rules(RULES))
    assert e.store.apply(block_record(ip(C2), "n1", 7, 1.0, 3.0, 8))
    assert e.process(tcp(C2, S1, 40001, 5001, "S"), 2.0).reason == "blocklisted-source"
    assert e.process(tcp(C2, S1, 40001, 5001, "S"), 3.0).verdict is Verdict.ACCEPT
    e.expire(3.0)
    assert e.store.common == {}


def test_malformed_guard_records_are_refused() -> None:
    e = Engine("n2", parse_rules(RULES))
    bad = Record(block_key(ip(C2)), Scope.COMMON, "n1", 5, -1, [ip(C1), 1.0, 9.0, 8])
    assert not e.store.apply(bad)
    bad_user = Record(user_key(ip(C1)), Scope.COMMON, "n1", 5, -1, [3, ip(C1), 1.0])
    assert not e.store.apply(bad_user)
    assert e.store.rejected == 2
    with pytest.raises(ValueError, match="user name"):
        user_record("", ip(C1), "n1", 1, 0.0)


def test_an_auth_rule_admits_only_logged_in_sources() -> None:
    e = Engine("n1", parse_rules(RULES))
    assert e.process(tcp(C1, S1, 40001, 5002, "S"), 1.0).reason == "auth-required:members"
    e.guards.login("alice", ip(C1), 1.0)
    assert e.process(tcp(C1, S1, 40002, 5002, "S"), 1.1).verdict is Verdict.ACCEPT
    assert e.process(tcp(C2, S1, 40002, 5002, "S"), 1.1).reason == "auth-required:members"
    (row,) = [r for r in e.rows("common") if r["kind"] == "user"]
    assert row["state"] == "user alice" and row["src"] == C1
    assert e.guards.logout(ip(C1), 1.2)
    assert not e.guards.logout(ip(C1), 1.3)
    assert e.process(tcp(C1, S1, 40003, 5002, "S"), 1.4).reason == "auth-required:members"


def test_auth_only_on_accept_rules() -> None:
    with pytest.raises(RuleError, match="auth"):
        parse_rules([{"name": "x", "action": "drop", "auth": True}])
    with pytest.raises(RuleError, match="true or false"):
        parse_rules([{"name": "x", "action": "accept", "auth": "yes"}])


def test_one_node_sees_the_scan_and_every_node_blocks_it() -> None:
    sim = SimNodes(rules=parse_rules(RULES)).start()
    for x in sim.c.names:
        sim.engine(x).guards.scan = ScanDetector(ScanSettings(ports=4, window_s=1.0, block_s=2.0))
    for port in range(1, 5):
        sim.packet("n1", tcp(C2, S1, 40000, port, "S"), 0)
    t0 = sim.now
    key = block_key(ip(C2))
    assert sim.run_until(lambda: all(key in sim.engine(x).store.common for x in sim.c.names), 0.5)
    assert sim.now - t0 < 0.05
    for x in sim.c.names:
        d = sim.packet(x, TcpFlow(C2, S1, 41000, 5001).handshake()[0], 0)
        assert d.reason == "blocklisted-source", x
    sim.run(2.0)
    for x in sim.c.names:  # admitted by the entry's own end, before any expiry sweep ran
        d = sim.packet(x, TcpFlow(C2, S1, 41001, 5001).handshake()[0], 0)
        assert d.verdict is Verdict.ACCEPT, x
    assert sim.run_until(lambda: all(key not in sim.engine(x).store.common for x in sim.c.names), 2.0)


def test_two_nodes_that_see_one_scan_at_once_end_with_the_same_entry() -> None:
    # Both detect within the same millisecond: equal versions, and each node's own record
    # must not stay beside the other's forever (every node ends with one and the same entry).
    sim = SimNodes(rules=parse_rules(RULES)).start()
    for x in sim.c.names:
        sim.engine(x).guards.scan = ScanDetector(ScanSettings(ports=4, window_s=1.0, block_s=5.0))
    for port in range(1, 5):
        sim.packet("n1", tcp(C2, S1, 40000, port, "S"), 0)
        sim.packet("n2", tcp(C2, S1, 40001, port, "S"), 0)
    key = block_key(ip(C2))
    mine = {x: sim.engine(x).store.common[key] for x in ("n1", "n2")}
    assert mine["n1"].version == mine["n2"].version and mine["n1"].owner != mine["n2"].owner

    def held() -> set[tuple[str, int]]:
        return {(r.owner, r.version) for x in sim.c.names
                if (r := sim.engine(x).store.common.get(key)) is not None}

    assert sim.run_until(lambda: len(held()) == 1 and all(
        key in sim.engine(x).store.common for x in sim.c.names), 0.5), held()
    assert held() == {("n2", mine["n2"].version)}  # the higher owner name wins the tie


def test_an_unblock_on_any_node_lifts_the_entry_on_every_node() -> None:
    sim = SimNodes(rules=parse_rules(RULES)).start()
    sim.engine("n1").guards.scan = ScanDetector(ScanSettings(ports=4, window_s=1.0, block_s=60.0))
    for port in range(1, 5):
        sim.packet("n1", tcp(C2, S1, 40000, port, "S"), 0)
    key = block_key(ip(C2))
    assert sim.run_until(lambda: all(key in sim.engine(x).store.common for x in sim.c.names), 0.5)
    assert sim.engine("n3").guards.unblock(ip(C2), sim.now)  # not the node that wrote it
    assert not sim.engine("n3").guards.unblock(ip(C2), sim.now)
    assert sim.run_until(lambda: all(key not in sim.engine(x).store.common for x in sim.c.names), 0.5)
    for x in sim.c.names:
        d = sim.packet(x, TcpFlow(C2, S1, 41000 + ord(x[-1]), 5001).handshake()[0], 0)
        assert d.verdict is Verdict.ACCEPT, x


def test_a_login_on_one_node_admits_on_all_and_logout_refuses_on_all() -> None:
    sim = SimNodes(rules=parse_rules(RULES)).start()
    sim.engine("n2").guards.login("alice", ip(C1), sim.now)
    key = user_key(ip(C1))
    assert sim.run_until(lambda: all(key in sim.engine(x).store.common for x in sim.c.names), 0.5)
    for i, x in enumerate(sim.c.names):
        assert sim.packet(x, tcp(C1, S1, 42000 + i, 5002, "S"), 0).verdict is Verdict.ACCEPT, x
    sim.engine("n2").guards.logout(ip(C1), sim.now)
    assert sim.run_until(lambda: all(key not in sim.engine(x).store.common for x in sim.c.names), 0.5)
    for i, x in enumerate(sim.c.names):
        d = sim.packet(x, tcp(C1, S1, 43000 + i, 5002, "S"), 0)
        assert d.reason == "auth-required:members", x


def test_guard_counts_split_own_and_common_and_leave_out_an_expired_entry() -> None:
    """What `status --json` shows per node for the blocklist and users (engine/guard_control.py):
    own is what this node wrote, backup is always 0 (common state is no node's backup), common
    is every live entry it honours; a blocklist entry past its `until` is not counted even
    before the expiry sweep removes it."""
    e = Engine("n2", parse_rules(RULES))
    assert guard_counts(e, 1.0) == {"blocklist": {"own": 0, "backup": 0, "common": 0},
                                    "users": {"own": 0, "backup": 0, "common": 0}}
    assert e.store.apply(block_record(ip(C2), "n1", 7, 1.0, 9.0, 8))  # a peer's, live
    assert e.store.apply(block_record(ip(S1), "n3", 7, 1.0, 2.0, 8))  # a peer's, ends at 2.0
    assert e.store.apply(block_record(ip("198.18.1.12"), "n2", 7, 1.0, 9.0, 8))  # its own (a restart)
    e.guards.login("alice", ip(C1), 1.5)  # written here
    assert e.store.apply(user_record("bob", ip("198.18.1.13"), "n1", 3, 1.0))
    assert guard_counts(e, 1.6) == {"blocklist": {"own": 1, "backup": 0, "common": 3},
                                    "users": {"own": 1, "backup": 0, "common": 2}}
    assert guard_counts(e, 3.0) == {"blocklist": {"own": 1, "backup": 0, "common": 2},
                                    "users": {"own": 1, "backup": 0, "common": 2}}
    e.guards.logout(ip(C1), 3.1)
    assert guard_counts(e, 3.2)["users"] == {"own": 0, "backup": 0, "common": 1}
