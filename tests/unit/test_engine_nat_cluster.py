"""NAT across the simulated cluster: the binding is synced with its entry, so after a takeover
the backup translates exactly as the owner did; with the HMARK-aware port plan, a translated
reply hashes into the bucket of its connection and so reaches the node holding the binding."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP

from engine.core import Verdict
from engine.nat import PortPlan, hmark_bucket
from engine.rules import parse_rules
from tests.unit.engine_packets import C2, S1, tcp
from tests.unit.engine_sim import SimNodes
from tests.unit.test_engine_nat import GW_OUT, NAT_RULES

BUCKETS = 6
RND = 0x1D2C3B4A
GWb = bytes((198, 18, 2, 1))
C2b = bytes((198, 18, 1, 11))
S1b = bytes((198, 18, 2, 10))


def nat_cluster(plan: PortPlan) -> SimNodes:
    sim = SimNodes(buckets=BUCKETS, rules=parse_rules(NAT_RULES)).start()
    for x in sim.c.names:
        sim.engine(x).nat_ports = plan
    return sim


def mark(src: bytes, sport: int, dst: bytes, dport: int) -> int:
    """The mark HMARK gives this TCP packet in the lab (the same seed and modulus)."""
    return hmark_bucket(6, src, sport, dst, dport, RND, BUCKETS)


def test_after_a_takeover_the_backup_translates_exactly_as_the_owner_did() -> None:
    sim = nat_cluster(PortPlan(buckets=BUCKETS, rnd=RND))
    sport = 40000
    b = mark(C2b, sport, S1b, 5001)
    owner = sim.owner_of(b)
    d = sim.packet(owner, tcp(C2, S1, sport, 5001, "S", 100), b)
    assert d.payload is not None
    q = IP(d.payload)[TCP].sport
    assert mark(S1b, 5001, GWb, q) == b, "the reply hashes into the connection's bucket"
    assert sim.packet(owner, tcp(S1, GW_OUT, 5001, q, "SA", 900, 101), b).payload is not None
    assert sim.packet(owner, tcp(C2, S1, sport, 5001, "A", 101, 901), b).payload is not None
    # One packet each way, translated by the owner: the reference.
    data = tcp(C2, S1, sport, 5001, "PA", 101, 901, b"request")
    reply = tcp(S1, GW_OUT, 5001, q, "PA", 901, 108, b"response")
    by_owner = [sim.packet(owner, p, b).payload for p in (data, reply)]
    assert None not in by_owner
    sim.run(0.05)
    backup = sim.backup_of(owner)
    (copy,) = sim.engine(backup).rows("backup")
    assert copy["nat"] == f"{GW_OUT}:{q} -> {S1}:5001"

    sim.kill(owner)
    assert sim.run_until(lambda: b in sim.b[backup].applied, 2.0)
    # The retransmissions of both packets come out of the backup byte for byte as before.
    by_backup = [sim.packet(backup, p, b) for p in (data, reply)]
    assert [x.verdict for x in by_backup] == [Verdict.ACCEPT, Verdict.ACCEPT]
    assert [x.payload for x in by_backup] == by_owner
    nxt = sim.packet(backup, tcp(C2, S1, sport, 5001, "PA", 108, 909, b"more"), b)
    assert nxt.payload is not None
    out = IP(nxt.payload)
    assert (out.src, out[TCP].sport, bytes(out[TCP].payload)) == (GW_OUT, q, b"more")
    (row,) = sim.engine(backup).rows("own")
    assert row["owner"] == backup and row["state"] == "established"
    # The adopter keeps the dead node's binding: its translated tuple is taken there now.
    assert sim.engine(backup)._nat_in_use(sim.engine(backup).table.conns[bytes.fromhex(row["key"])].nat.key)  # type: ignore[union-attr]


def test_every_translated_reply_reaches_the_node_holding_its_binding() -> None:
    sim = nat_cluster(PortPlan(buckets=BUCKETS, rnd=RND))
    owners = set()
    for i in range(60):
        sport = 41000 + i
        b = mark(C2b, sport, S1b, 5001)
        node = sim.owner_of(b)
        owners.add(node)
        d = sim.packet(node, tcp(C2, S1, sport, 5001, "S"), b)
        assert d.payload is not None
        q = IP(d.payload)[TCP].sport
        rb = mark(S1b, 5001, GWb, q)
        assert rb == b
        back = sim.packet(sim.owner_of(rb), tcp(S1, GW_OUT, 5001, q, "SA"), rb)
        assert back.verdict is Verdict.ACCEPT and back.payload is not None
        assert (IP(back.payload).dst, IP(back.payload)[TCP].dport) == (C2, sport)
    assert len(owners) == 3, "the flows were spread over every node"


def test_without_the_hash_a_translated_reply_lands_where_no_binding_is() -> None:
    """Why the allocator computes HMARK: ports merely partitioned by bucket send most replies
    to another bucket, whose node knows no binding for them (it holds them for a pull that
    cannot find the translated tuple, and never passes them)."""
    sim = nat_cluster(PortPlan(buckets=BUCKETS))
    elsewhere = 0
    for i in range(30):
        sport = 42000 + i
        b = mark(C2b, sport, S1b, 5001)
        d = sim.packet(sim.owner_of(b), tcp(C2, S1, sport, 5001, "S"), b)
        assert d.payload is not None
        q = IP(d.payload)[TCP].sport
        rb = mark(S1b, 5001, GWb, q)
        if sim.owner_of(rb) != sim.owner_of(b):
            elsewhere += 1
            back = sim.packet(sim.owner_of(rb), tcp(S1, GW_OUT, 5001, q, "SA"), rb)
            assert back.verdict is not Verdict.ACCEPT
    assert elsewhere > 5


def test_a_packet_held_for_a_pull_is_released_translated() -> None:
    """The bucket's owner meets a mid-stream packet of a translated connection it never saw
    (another node admitted it): it pulls the entry (claim 14), adopts it, and releases the
    packet rewritten as the binding says, never untranslated."""
    sim = nat_cluster(PortPlan(buckets=BUCKETS, rnd=RND))
    sport = 43000
    b = mark(C2b, sport, S1b, 5001)
    owner = sim.owner_of(b)
    other = next(x for x in sim.c.names if x != owner and x != sim.backup_of(owner))
    d = sim.packet(other, tcp(C2, S1, sport, 5001, "S", 100), b)
    assert d.payload is not None
    q = IP(d.payload)[TCP].sport
    held = sim.packet(owner, tcp(C2, S1, sport, 5001, "A", 101, 901), b, handle="ack")
    assert held.verdict is Verdict.HOLD
    assert sim.run_until(lambda: bool(sim.released[owner]), 1.0)
    ((_, r),) = sim.released[owner]
    assert r.handle == "ack" and r.accept and r.payload is not None
    out = IP(r.payload)
    assert (out.src, out[TCP].sport, out.dst, out[TCP].dport) == (GW_OUT, q, S1, 5001)
