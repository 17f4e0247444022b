"""The engine-agent binding in the simulated cluster: holds released by ack or at exactly the
lab's hold timeout, pulls answered or not, takeover that promotes state before taking traffic."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from engine.core import Verdict
from engine.replay import ReplayQueue, ReplaySettings
from engine.rules import parse_rules
from sync.events import SyncCompleted
from sync.records import Scope, Trigger
from sync.wire import CODE_TRIGGER, Frame, MsgType, decode_frame, records_from_blob
from tests.unit.engine_packets import C1, S1, S2, TcpFlow, tcp, udp
from tests.unit.engine_sim import SimNodes

PORT = b"PORT 198,18,1,10,195,81\r\n"  # the client will listen on 198.18.1.10:50001


def _ftp_control(sim: SimNodes, x: str, mark: int) -> TcpFlow:
    f = TcpFlow(C1, S2, 40021, 21)
    for p in f.handshake():
        assert sim.packet(x, p, mark).verdict is Verdict.ACCEPT
    return f


def _flow(sim: SimNodes, x: str, mark: int, sport: int = 40000) -> TcpFlow:
    f = TcpFlow(C1, S1, sport, 5001)
    for p in f.handshake():
        assert sim.packet(x, p, mark).verdict is Verdict.ACCEPT
    return f


def test_a_held_port_command_is_released_when_every_node_acked_its_expectation() -> None:
    sim = SimNodes(hold_timeout_ms=200).start()
    b = sim.b["n1"]
    f = _ftp_control(sim, "n1", sim.bucket_of("n1"))
    d = sim.packet("n1", f.c2s(PORT), sim.bucket_of("n1"), handle="port")
    assert d.verdict is Verdict.HOLD and d.sync_id is not None
    assert list(b.holds) == [d.sync_id], "one hold, under the engine's own id"
    assert b.held_packets == 1
    # A second packet of the held connection waits on the same hold.
    assert sim.packet("n1", f.c2s(b"NOOP\r\n"), sim.bucket_of("n1"), handle="noop").sync_id == d.sync_id
    assert sim.run_until(lambda: bool(sim.released["n1"]), 0.2)
    assert [(r.handle, r.accept) for _, r in sim.released["n1"]] == [("port", True), ("noop", True)]
    assert b.counters["released_by_ack"] == 2 and not b.holds
    # When PORT goes on, any node can admit the server's data connection.
    for x in ("n2", "n3"):
        d2 = sim.engine(x).process(tcp(S2, C1, 20, 50001, "S"), sim.now, sim.bucket_of(x))
        assert (d2.verdict, d2.reason) == (Verdict.ACCEPT, "related")


def test_an_unacked_hold_is_released_at_exactly_the_labs_hold_timeout() -> None:
    # Failure detection slower than the hold (1 s): the peers stay up, they just never answer.
    sim = SimNodes(hold_timeout_ms=350, miss_limit=100).start()
    b = sim.b["n1"]
    assert sim.engine("n1").hold_timeout_s == 0.35, "the engine takes the lab's value"
    f = _ftp_control(sim, "n1", sim.bucket_of("n1"))
    sim.c.cut.add("n1")
    t0 = sim.now
    d = sim.packet("n1", f.c2s(PORT), sim.bucket_of("n1"), handle="port")
    assert d.verdict is Verdict.HOLD
    sim.run(0.349)
    assert not sim.released["n1"] and b.held_packets == 1
    assert sim.run_until(lambda: bool(sim.released["n1"]), 0.01)
    ((t, r),) = sim.released["n1"]
    assert r.accept and abs((t - t0) - 0.35) < 0.0011
    assert b.counters["released_by_timeout"] == 1 and b.counters["released_by_ack"] == 0
    assert abs(b.hold_latencies_ms[-1] - 350) < 1.1
    # The agent's notice of the same deadline, when it comes, releases nothing twice.
    sim.c.cut.clear()
    sim.run(0.05)
    assert len(sim.released["n1"]) == 1 and not b.holds
    assert any(isinstance(e, SyncCompleted) and not e.acked for e in sim.c.events["n1"])


def test_a_pull_for_a_session_another_node_carries_is_answered_and_adopted() -> None:
    sim = SimNodes(hold_timeout_ms=300).start()
    bucket = sim.bucket_of("n3")
    # n1 carried a flow in what is now n3's bucket (n3 is not n1's backup: it has no copy).
    assert sim.backup_of("n1") != "n3"
    f = _flow(sim, "n1", bucket)
    key = next(iter(sim.engine("n1").table.conns))
    sim.run(0.02)
    assert sim.engine("n3").store.get(key) is None
    t0 = sim.now
    d = sim.packet("n3", f.c2s(b"mid-stream"), bucket, handle="late")
    assert d.verdict is Verdict.HOLD
    assert sim.run_until(lambda: bool(sim.released["n3"]), 0.3)
    ((t, r),) = sim.released["n3"]
    assert r.accept and t - t0 < 0.3
    (row,) = sim.engine("n3").rows("own")
    assert row["trigger"] == "adopted" and row["owner"] == "n3"


def test_a_pull_nobody_can_answer_drops_the_packet_and_asks_no_more() -> None:
    sim = SimNodes(hold_timeout_ms=300).start()
    bucket = sim.bucket_of("n3")
    f = TcpFlow(C1, S1, 40999, 5001)
    f.handshake()  # a session no node ever saw
    t0 = sim.now
    d = sim.packet("n3", f.c2s(b"who?"), bucket, handle="orphan")
    assert d.verdict is Verdict.HOLD
    assert sim.run_until(lambda: bool(sim.released["n3"]), 0.3)
    ((t, r),) = sim.released["n3"]
    assert not r.accept and t - t0 < 0.3, "every peer said no before the deadline"
    d = sim.packet("n3", f.c2s(b"again"), bucket)
    assert (d.verdict, d.reason) == (Verdict.DROP, "no-state")


def test_an_unanswered_pull_ends_at_the_labs_hold_timeout_not_the_agents_own() -> None:
    sim = SimNodes(hold_timeout_ms=120, miss_limit=100).start()
    bucket = sim.bucket_of("n3")
    f = TcpFlow(C1, S1, 40998, 5001)
    f.handshake()
    sim.c.cut.add("n3")
    t0 = sim.now
    assert sim.packet("n3", f.c2s(b"anyone?"), bucket, handle="lost").verdict is Verdict.HOLD
    assert sim.run_until(lambda: bool(sim.released["n3"]), 0.5)
    ((t, r),) = sim.released["n3"]
    assert not r.accept and abs((t - t0) - 0.12) < 0.0011  # the agent's default would be 0.5 s


def test_takeover_promotes_the_failed_nodes_state_before_accepting_its_buckets() -> None:
    sim = SimNodes().start()
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    f = _flow(sim, "n1", bucket)
    key = next(iter(sim.engine("n1").table.conns))
    assert sim.run_until(lambda: key in sim.engine(backup).backups.copies, 0.1)
    assert key not in sim.engine(backup).table.conns, "a copy stays out of the packet path"
    sim.apply_buckets = False
    b = sim.b[backup]
    before = b.last_takeover  # the buckets it gained when the cluster formed
    sim.kill("n1")

    def took_over() -> bool:
        # Whenever the backup forwards (or is about to accept) the bucket, the state is there.
        if bucket in sim.engine(backup).owned_buckets or bucket in (b.wanted_buckets() or []):
            assert key in sim.engine(backup).table.conns and key not in sim.engine(backup).backups.copies
            return True
        return False

    assert sim.run_until(took_over, 2.0)
    assert b.last_takeover is before, "not complete until the bucket is accepted"
    wanted = b.wanted_buckets()
    assert wanted is not None and bucket in wanted
    sim.run(0.01)  # iptables takes its time
    b.buckets_applied(wanted, sim.now)
    take = b.last_takeover
    assert take is not None and take is not before and bucket in take["buckets"] and take["promoted"] >= 1
    assert take["detect_to_accept_ms"] >= take["apply_ms"] >= 10
    d = sim.packet(backup, f.c2s(b"after the crash"), bucket)
    assert (d.verdict, d.reason) == (Verdict.ACCEPT, "established")


def test_reject_decisions_pass_through_with_their_reply() -> None:
    rules = parse_rules([{"name": "no-telnet", "action": "reject", "proto": "tcp", "dport": 23}])
    sim = SimNodes(rules=rules).start()
    d = sim.packet("n1", tcp(C1, S1, 40000, 23, "S"), sim.bucket_of("n1"))
    assert d.verdict is Verdict.REJECT and d.reply is not None and not sim.b["n1"].holds


# ---- lossless takeover (engine/replay.py) ------------------------------------------------------
def _lossless(**kw: int) -> SimNodes:
    return SimNodes(replay=ReplaySettings(enabled=True, **kw)).start()


def test_a_backup_queues_exactly_the_buckets_it_backs_up_only_when_lossless_is_on() -> None:
    off = SimNodes().start()
    assert all(not off.b[x].shadow and not off.b[x].replay.buckets for x in off.c.names)
    sim = _lossless()
    for x in sim.c.names:
        view = sim.c.agents[x].view
        expect = sorted(b for b, o in enumerate(view.bucket_owner, start=1)
                        if o != x and x in view.backups[o])
        assert expect and sim.b[x].shadow == expect and sim.b[x].applied_shadow == expect
        assert sim.b[x].replay.buckets == frozenset(expect)
        assert not set(expect) & set(sim.b[x].owned)
    b = sim.b["n2"]
    b.set_lossless(False, sim.now)
    assert not b.shadow and b.wanted_buckets() == b.owned, "iptables must stop queueing them"


def test_the_backup_replays_the_held_packets_after_promoting_the_state() -> None:
    sim = _lossless(window_ms=500)
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    f = _flow(sim, "n1", bucket)
    key = next(iter(sim.engine("n1").table.conns))
    assert sim.run_until(lambda: key in sim.engine(backup).backups.copies, 0.1)
    b = sim.b[backup]
    assert bucket in b.replay.buckets
    sim.kill("n1")
    # What the wire brings the backup before it adopts n1's bucket: held, no verdict yet.
    for i in range(3):
        assert b.shadow_packet(f.c2s(b"in flight %d" % i), bucket, f"p{i}", sim.now)
    assert b.replay.packets == 3 and not b.releases()
    assert sim.run_until(lambda: b.last_takeover is not None and bucket in b.last_takeover["buckets"]
                         and b.last_takeover["promoted"] >= 1, 2.0)
    got = [(r.handle, r.accept) for _, r in sim.released[backup]]
    assert got == [("p0", True), ("p1", True), ("p2", True)], "in their order, accepted"
    assert key in sim.engine(backup).table.conns, "state first, then traffic"
    assert b.last_takeover["replayed"] == 3 and b.replay.counters["replayed"] == 3
    assert bucket not in b.replay.buckets and b.replay.packets == 0
    (note,) = [n for n in b.notes() if n.kind == "takeover" and bucket in n.extra["buckets"]]
    assert note.extra["replayed"] == 3 and "replayed 3 packet(s)" in note.text


def test_a_bucket_handed_over_by_a_live_owner_replays_nothing_its_held_packets_are_dropped() -> None:
    """A graceful leave: n1 forwards its buckets until it hands them over, so what its backup
    held of them was forwarded already; a replay would send each UDP datagram twice."""
    sim = _lossless(window_ms=500)
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    f = _flow(sim, "n1", bucket)
    key = next(iter(sim.engine("n1").table.conns))
    assert sim.run_until(lambda: key in sim.engine(backup).backups.copies, 0.1)
    b = sim.b[backup]
    for i in range(3):
        assert b.shadow_packet(f.c2s(b"forwarded by n1 %d" % i), bucket, f"p{i}", sim.now)
    sim.c.agents["n1"].leave(sim.now)
    assert sim.run_until(lambda: bucket in b.owned, 2.0)
    got = [(r.handle, r.accept) for _, r in sim.released[backup]]
    assert got == [("p0", False), ("p1", False), ("p2", False)], "dropped, not replayed"
    assert b.replay.counters["replayed"] == 0 and b.replay.packets == 0
    assert key in sim.engine(backup).table.conns, "the state moved all the same"


def test_held_packets_are_dropped_once_the_window_passes() -> None:
    sim = _lossless(window_ms=50)
    bucket = sim.bucket_of("n1")
    b = sim.b[sim.backup_of("n1")]
    f = _flow(sim, "n1", bucket)
    assert b.shadow_packet(f.c2s(b"x"), bucket, "old", sim.now)
    sim.run(0.049)
    assert not sim.released[sim.backup_of("n1")]
    sim.run(0.01)
    assert [(r.handle, r.accept) for _, r in sim.released[sim.backup_of("n1")]] == [("old", False)]
    assert b.replay.counters["expired"] == 1 and b.replay.packets == 0 and b.replay.bytes == 0


def test_the_cap_evicts_the_oldest_held_packet_and_counts_it() -> None:
    sim = _lossless(cap_packets=2)
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    b = sim.b[backup]
    f = _flow(sim, "n1", bucket)
    assert b.shadow_packet(f.c2s(b"a"), bucket, "a", sim.now)
    assert b.shadow_packet(f.c2s(b"b"), bucket, "b", sim.now)
    assert b.shadow_packet(f.c2s(b"c"), bucket, "c", sim.now), "the newest is held"
    assert [(r.handle, r.accept) for r in b.releases()] == [("a", False)], "the oldest is dropped"
    st = b.replay.status()
    assert (st["held"], st["evicted_by_cap"], st["dropped_by_cap"], st["holding"]) == (3, 1, 0, 2)
    assert sorted(b.drop_all()) == ["b", "c"], "a stopping node drops what it holds"


def test_the_cap_evicts_across_buckets_and_refuses_a_packet_larger_than_the_byte_cap() -> None:
    q: ReplayQueue[str] = ReplayQueue(ReplaySettings(True, 50, 3, 100))
    assert q.put(1, "old", b"x" * 40, 1, 0.0) == []
    assert q.put(2, "mid", b"x" * 40, 2, 0.001) == []
    assert q.put(2, "new", b"x" * 40, 2, 0.002) == ["old"], "bytes: the oldest of any bucket goes"
    assert q.put(1, "huge", b"x" * 101, 1, 0.003) == ["huge"]
    assert (q.counters["evicted_by_cap"], q.counters["dropped_by_cap"], q.packets, q.bytes) == (1, 1, 2, 80)
    assert [h for h, _, _ in q.take([1, 2], 0.004)] == ["mid", "new"]


def test_replayed_udp_datagrams_are_counted_as_possible_duplicates_of_the_takeover() -> None:
    sim = _lossless(window_ms=500)
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    b = sim.b[backup]
    assert sim.packet("n1", udp(C1, S1, 41000, 5001, b"first"), bucket).verdict is Verdict.ACCEPT
    key = next(iter(sim.engine("n1").table.conns))
    assert sim.run_until(lambda: key in sim.engine(backup).backups.copies, 0.1)
    sim.kill("n1")
    # Two datagrams the dead node may or may not have forwarded before it died.
    assert b.shadow_packet(udp(C1, S1, 41000, 5001, b"d1"), bucket, "u1", sim.now)
    assert b.shadow_packet(udp(C1, S1, 41000, 5001, b"d2"), bucket, "u2", sim.now)
    assert sim.run_until(lambda: b.last_takeover is not None and bucket in b.last_takeover["buckets"], 2.0)
    assert [(r.handle, r.accept) for _, r in sim.released[backup]] == [("u1", True), ("u2", True)]
    assert b.last_takeover["replayed"] == 2 and b.last_takeover["replayed_udp"] == 2
    assert b.replay.counters["replayed_udp"] == 2
    (note,) = [n for n in b.notes() if n.kind == "takeover" and bucket in n.extra["buckets"]]
    assert note.extra["replayed_udp"] == 2 and "2 UDP: possible duplicates" in note.text


def test_a_bucket_no_longer_backed_up_but_still_queued_by_iptables_is_dropped_not_pulled() -> None:
    # The view moves on at once; iptables-restore follows some milliseconds later. In between
    # the queue still brings us the packets of a bucket we no longer back up: if they reached
    # the engine, it would pull their state and keep a copy of a connection nobody maintains
    # (a backup ended one copy ahead of its owner after flapping).
    sim = _lossless()
    bucket = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    b = sim.b[backup]
    f = _flow(sim, "n1", bucket)
    assert bucket in b.replay.buckets and b.applied_shadow
    sim.apply_buckets = False
    b.set_lossless(False, sim.now)  # the same as a view in which we no longer back n1 up
    assert not b.shadow and bucket in b.applied_shadow, "iptables has not caught up"
    assert bucket in b.replay.buckets, "the node still routes the bucket's packets to the binding"
    assert not b.shadow_packet(f.c2s(b"late"), bucket, "late", sim.now), "dropped at once"
    assert b.replay.counters["dropped_not_backed_up"] == 1 and b.replay.packets == 0
    assert not b.holds and not sim.engine(backup).drain_sync_requests(), "no state was pulled"
    b.buckets_applied(list(b.owned), sim.now, b.shadow)
    assert not b.replay.buckets


def test_the_engine_does_not_pull_the_state_of_a_mid_stream_packet_in_a_bucket_it_does_not_own() -> None:
    sim = SimNodes().start()
    other = sim.bucket_of("n2")
    f = TcpFlow(C1, S1, 40100, 5001)
    f.handshake()
    e = sim.engine("n1")
    d = e.process(f.c2s(b"data"), sim.now, other)
    assert (d.verdict, d.reason) == (Verdict.DROP, "no-state-not-owned")
    assert not e.drain_sync_requests() and e.held_syncs == 0
    d = e.process(f.c2s(b"data"), sim.now, sim.bucket_of("n1"))
    assert d.verdict is Verdict.HOLD, "in an own bucket it still asks the cluster"


def test_a_put_past_the_window_expires_every_bucket_together() -> None:
    """The expired of all buckets leave at once (one batch drop verdict), not one per put."""
    q: ReplayQueue[str] = ReplayQueue(ReplaySettings(True, 50, 100, 1 << 20))
    assert q.put(1, "a", b"x", 1, 0.000) == []
    assert q.put(2, "b", b"x", 2, 0.001) == []
    assert q.put(1, "c", b"x", 1, 0.052) == [], "within the slack past the window: the tick's job"
    assert sorted(q.put(1, "d", b"x", 1, 0.057)) == ["a", "b"], "both buckets' expired, together"
    assert (q.packets, q.counters["expired"]) == (2, 2)


def test_an_adopted_bucket_still_sent_to_the_shadow_queue_is_flagged_until_iptables_follows() -> None:
    # The node reads the shadow queue only now and then while it holds nothing but copies there;
    # after a takeover, until iptables-restore moves the adopted buckets, it carries packets to
    # forward, and the node reads it at once (engine/queue_io.py watch_shadow).
    sim = _lossless()
    bucket = sim.bucket_of("n1")
    b = sim.b[sim.backup_of("n1")]
    assert not b.owned_in_shadow
    sim.apply_buckets = False
    sim.kill("n1")
    assert sim.run_until(lambda: b.last_takeover is not None and bucket in b.last_takeover["buckets"], 2.0)
    assert b.owned_in_shadow, "adopted, still queued as a backed-up bucket"
    b.buckets_applied(list(b.owned), sim.now, b.shadow)
    assert not b.owned_in_shadow


def _sent_this_turn(sim: SimNodes, x: str) -> dict[str, list[Frame]]:
    """What `x` sends at the end of a turn, decoded, by destination; delivered by hand."""
    c = sim.c
    by_dst: dict[str, list[Frame]] = {}
    for addr, data in sim.b[x].datagrams():
        dst = next(n for n, a in c.addrs.items() if a == addr)
        by_dst.setdefault(dst, []).append(decode_frame(data, c.base.key, c.base.lab_id, 65535))
        sim.b[dst].receive(data, c.addrs[x], sim.now)
    return by_dst


@pytest.mark.parametrize(("changes", "to_backup"), [(10, 1), (20, 2)])
def test_a_turns_holds_and_changes_share_the_fewest_datagrams_per_peer(changes: int, to_backup: int) -> None:
    """New connections and 3 held PORT commands (3 pushes) in one turn of n1's loop: to each
    peer the fewest RECORDS datagrams the frame size allows, not one per push plus those of
    the changes (5 to the backup, 3 to the other node before). 10 changes and 3 pushes fit
    in one datagram to each; 20 changes, 3 expectations and their ~75-byte records do not fit
    in 1400 bytes: two. Each hold is still released by the acks of those datagrams."""
    sim = SimNodes(hold_timeout_ms=200).start()
    b = sim.b["n1"]
    mark = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    other = next(x for x in sim.c.names if x not in ("n1", backup))
    ftp = [TcpFlow(C1, S2, 40021 + i, 21) for i in range(3)]
    for f in ftp:
        for p in f.handshake():
            assert sim.packet("n1", p, mark).verdict is Verdict.ACCEPT
    sim.run(0.05)  # everything so far acked; nothing left to retransmit this turn
    now = sim.now
    for i in range(changes):
        assert b.engine.process(tcp(C1, S1, 41000 + i, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
    for i, f in enumerate(ftp):
        pkt = f.c2s(f"PORT 198,18,1,10,195,{81 + i}\r\n".encode())
        d = b.engine.process(pkt, now, mark)
        assert d.verdict is Verdict.HOLD
        assert b.held(d, pkt, mark, f"port{i}", now).verdict is Verdict.HOLD
    assert len(b.holds) == 3
    b.settle(now)
    sent = _sent_this_turn(sim, "n1")
    assert sorted(sent) == sorted([backup, other])
    assert [f.type for f in sent[backup]] == [MsgType.RECORDS] * to_backup
    assert [f.type for f in sent[other]] == [MsgType.RECORDS], "one datagram to the other node"
    assert all(CODE_TRIGGER[f.payload[0]] is Trigger.RELATED for fs in sent.values() for f in fs), \
        "acked at once: the holds wait on them"
    recs = [r for f in sent[backup] for r in records_from_blob(f.payload[1])]
    # The new connections and the 3 expectations (the PORT commands changed no connection).
    assert len(recs) == changes + 3 and sum(r.scope is Scope.COMMON for r in recs) == 3
    assert len(records_from_blob(sent[other][0].payload[1])) == 3, "the expectations alone"
    assert sim.run_until(lambda: b.counters["released_by_ack"] == 3, 0.05)
    assert not b.holds and b.counters["released_by_timeout"] == 0
    copies = sim.engine(backup).backups
    assert all(copies.get(r.key) is not None for r in recs if r.scope is Scope.NODE)


def test_flushing_1000_changed_records_keeps_no_memory_block_per_record() -> None:
    """The send path keeps nothing per record once the turn is sent: a few blocks per
    datagram (the frame, its payload, the channel's entry), none per record. Its provenance
    was a dict, a set, a dict and an ordered-dict node per record (5.7 blocks per record)."""
    sim = SimNodes().start()
    b = sim.b["n1"]
    mark = sim.bucket_of("n1")
    now = sim.now
    for i in range(1000):
        assert b.engine.process(tcp(C1, S1, 20000 + i, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
    gc.collect()
    tracemalloc.start()
    try:
        b.flush_engine(now)
        out = b.datagrams()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*/sync/*"), tracemalloc.Filter(True, "*/engine/*")])
    finally:
        tracemalloc.stop()
    blocks = sum(s.count for s in snap.statistics("filename"))
    assert 50 <= len(out) <= 70, "1000 records of ~75 bytes in 1400-byte datagrams"
    assert blocks <= 20 * len(out) + 100, snap.statistics("lineno")[:5]


# ---- batched plain changes (batch_ms) ----------------------------------------------------------
def _records_to(sim: SimNodes, x: str, dst: str) -> list[int]:
    """Records in each RECORDS datagram `x` sends `dst` this turn (delivered by hand)."""
    return [len(records_from_blob(f.payload[1])) for f in _sent_this_turn(sim, x).get(dst, [])
            if f.type is MsgType.RECORDS]


@pytest.mark.parametrize("batch_ms", [0, 5])
def test_plain_changes_of_several_turns_share_one_datagram_within_batch_ms(batch_ms: int) -> None:
    """One new connection per loop turn, 1 ms apart: with batch_ms 0 each turn sends its own
    datagram to the backup; with 5 they wait, and the turn 5 ms after the first sends them
    all in one."""
    sim = SimNodes(hold_timeout_ms=200).start()
    b = sim.b["n1"]
    b.batch_s = batch_ms / 1000
    mark = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    sim.run(0.05)
    t0 = sim.now
    per_turn = []
    for i in range(6):  # turns at t0 + 0, 1, ... 5 ms
        now = t0 + i * 0.001
        assert b.engine.process(tcp(C1, S1, 42000 + i, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
        b.settle(now)
        per_turn.append(_records_to(sim, "n1", backup))
    if batch_ms == 0:
        assert per_turn == [[1]] * 6
    else:
        assert per_turn == [[], [], [], [], [], [6]], "waited until the oldest was 5 ms old"
    assert all(sim.engine(backup).backups.get(k) is not None for k in sim.engine("n1").table.conns)


def test_a_hold_never_waits_and_takes_the_waiting_changes_with_it() -> None:
    sim = SimNodes(hold_timeout_ms=200).start()
    b = sim.b["n1"]
    b.batch_s = 0.005
    mark = sim.bucket_of("n1")
    backup = sim.backup_of("n1")
    f = _ftp_control(sim, "n1", mark)
    sim.run(0.05)
    now = sim.now
    for i in range(2):
        assert b.engine.process(tcp(C1, S1, 43000 + i, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
    b.settle(now)
    assert _records_to(sim, "n1", backup) == [], "plain changes wait"
    pkt = f.c2s(PORT)
    d = b.engine.process(pkt, now, mark)
    assert d.verdict is Verdict.HOLD and b.held(d, pkt, mark, "port", now).verdict is Verdict.HOLD
    b.settle(now)
    sent = _sent_this_turn(sim, "n1")[backup]
    recs = [r for fr in sent for r in records_from_blob(fr.payload[1])]
    assert len(sent) == 1 and CODE_TRIGGER[sent[0].payload[0]] is Trigger.RELATED
    assert len(recs) == 3, "the expectation and the 2 waiting changes, in the hold's datagram"


def test_a_datagrams_worth_of_waiting_changes_goes_at_once() -> None:
    from engine.binding import BATCH_MAX_CHANGES

    sim = SimNodes(hold_timeout_ms=200).start()
    b = sim.b["n1"]
    b.batch_s = 0.5
    mark = sim.bucket_of("n1")
    sim.run(0.05)
    now = sim.now
    for i in range(BATCH_MAX_CHANGES - 1):
        assert b.engine.process(tcp(C1, S1, 44000 + i, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
    b.settle(now)
    assert _records_to(sim, "n1", sim.backup_of("n1")) == []
    assert b.engine.process(tcp(C1, S1, 45000, 5001, "S"), now, mark).verdict is Verdict.ACCEPT
    b.settle(now)
    assert sum(_records_to(sim, "n1", sim.backup_of("n1"))) == BATCH_MAX_CHANGES
