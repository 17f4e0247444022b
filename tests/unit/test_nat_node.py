"""NAT where the engine meets the lab: the node's port plan uses the lab's HMARK seed, status
counts bindings, the console row shows them, a cut (GSO) capture is never rewritten."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP

from app.console.model import conn_cells
from engine.core import Engine, Verdict
from engine.decision import NAT_TRUNCATED
from engine.nat import PortPlan, hmark_bucket
from engine.node import NodeConfig, nat_counts, nat_port_plan
from engine.rules import default_rules
from netns.iptables import hmark_rnd, node_rules
from netns.spec import load_lab
from tests.unit.engine_packets import C1, C2, S1, tcp


def _config(tmp_path: Path, lab_id: str) -> NodeConfig:
    raw = {
        "node": "n1", "lab": "t", "lab_id": lab_id, "key_file": str(tmp_path / "key"),
        "nodes": [["n1", "127.0.0.1", 7400]], "buckets": 12, "backups": 1, "policy": "hybrid",
        "interval_ms": 500, "differential": True, "heartbeat_ms": 10, "miss_limit": 3,
        "rules": [], "queue_num": 0, "control_socket": str(tmp_path / "s"), "hold_timeout_ms": 150,
    }
    path = tmp_path / "n1.json"
    path.write_text(json.dumps(raw))
    return NodeConfig.load(path)


def test_the_node_plans_ports_with_the_seed_the_lab_writes_into_its_rules(tmp_path: Path) -> None:
    spec = load_lab(None)
    # The daemon writes the lab id as digits (netns/daemon.py node_config).
    plan = nat_port_plan(_config(tmp_path, str(spec.lab_id)))
    assert plan == PortPlan(buckets=spec.buckets, rnd=hmark_rnd(spec.lab_id))
    rules = node_rules(spec.buckets, hmark_rnd(spec.lab_id), 0)
    assert f"--hmark-mod {plan.buckets} " in rules and f"--hmark-rnd {plan.rnd:#x}" in rules
    # A node without a numeric lab id has no seed to agree with: a split by bucket, never a guess.
    assert nat_port_plan(_config(tmp_path, "t1")) == PortPlan(buckets=12)


def _nat_engine() -> tuple[Engine, int]:
    rnd = 0x1234
    return Engine("n1", default_rules(nat=True), nat_ports=PortPlan(buckets=12, rnd=rnd)), rnd


def _mark(src: str, sport: int, dst: str, dport: int, rnd: int) -> int:
    return hmark_bucket(6, IPv4Address(src).packed, sport, IPv4Address(dst).packed, dport, rnd, 12)


def test_status_counts_bindings_as_own_and_backup() -> None:
    owner, rnd = _nat_engine()
    for sport in (40001, 40002, 40003):
        d = owner.process(tcp(C2, S1, sport, 5001, "S"), 1.0, _mark(C2, sport, S1, 5001, rnd))
        assert d.verdict is Verdict.ACCEPT and d.payload is not None
    owner.process(tcp(C1, S1, 40009, 5001, "S"), 1.0, _mark(C1, 40009, S1, 5001, rnd))  # untranslated
    assert nat_counts(owner) == {"own": 3, "backup": 0, "common": 0}
    peer = Engine("n2", default_rules(nat=True))
    for r in owner.store.records(owner="n1"):
        assert peer.store.apply(r)  # as the sync channel hands them over
    assert nat_counts(peer) == {"own": 0, "backup": 3, "common": 0}
    rows = list(owner.rows("own"))
    translated = [r for r in rows if r["nat"]]
    assert len(translated) == 3 and all(r["nat"].startswith("198.18.2.1:") for r in translated)


def test_the_console_row_shows_the_binding_only_when_there_is_one() -> None:
    row: dict[str, Any] = {"proto": "tcp", "src": f"{C2}:40001", "dst": f"{S1}:5001", "state": "established",
                           "owner": "n1", "synced_to": ["n2"], "age_s": 1.0, "trigger": "rule:c2-snat-tcp",
                           "nat": f"198.18.2.1:40007 -> {S1}:5001"}
    assert conn_cells(row)[1] == f"{C2}:40001 → {S1}:5001 nat 198.18.2.1:40007 -> {S1}:5001"
    assert conn_cells({**row, "nat": ""})[1] == f"{C2}:40001 → {S1}:5001"


def test_a_translated_packet_captured_only_in_part_is_dropped_not_cut() -> None:
    """With GSO on, the queue hands over a super-packet cut at its copy range: rewriting that
    copy would cut the packet (NFQUEUE trims to the bytes given back)."""
    engine, rnd = _nat_engine()
    m = _mark(C2, 40001, S1, 5001, rnd)
    assert engine.process(tcp(C2, S1, 40001, 5001, "S"), 1.0, m).payload is not None
    big = bytearray(tcp(C2, S1, 40001, 5001, "A", 1, 1, b"x" * 3000))
    big[2:4] = (20000).to_bytes(2, "big")  # the IP length of the whole packet, bigger than the capture
    engine.capture_bytes = len(big)
    d = engine.process(bytes(big), 1.1, m)
    assert d.verdict is Verdict.DROP and d.payload is None
    assert engine.counters.get(NAT_TRUNCATED) == 1
    whole = engine.process(tcp(C2, S1, 40001, 5001, "A", 1, 1, b"x" * 100), 1.2, m)
    assert whole.verdict is Verdict.ACCEPT and whole.payload is not None
    assert IP(whole.payload)[TCP].sport != 0
