"""NAT on the real default lab (docs/nat.md): c2 leaves as the cluster's outside address, c1
does not; the port forward 198.18.2.1:8080 -> s1:5001 works whichever node takes the
connection; c2's translated TCP flows survive a kill of each node in turn."""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from demos import flows as flow_judge
from engine.nat import hmark_bucket, hmark_rnd
from netns.build import ns_name
from netns.control import ControlClient
from netns.lab import load_lab_of
from tests.integration.labtools import (
    RUN_ROOT,
    bucket_counting,
    hits,
    nodes,
    running_lab,
    snapshot,
    status,
    sw,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = Path(__file__).with_name("labprobe.py")
GW = "198.18.2.1"
C1, C2, S1, S2 = "198.18.1.10", "198.18.1.11", "198.18.2.10", "198.18.2.11"
C1_FLOWS, C2_FLOWS = 10, 30
CURRENT: list[str] = []  # the TCP workloads _flows() started last


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    with running_lab() as up:
        yield up


def _settled() -> dict[str, Any]:
    for n in status()["nodes"]:
        if n["state"] in ("failed", "offline"):
            sw("revive", n["name"])
    return dict(wait_for("every node active, every bucket owned once", lambda: (s := status()) and all(
        n["state"] == "active" for n in s["nodes"]) and sorted(
        b for n in s["nodes"] for b in n["buckets"]) == list(range(1, s["buckets"] + 1)) and s, 30))


def _tcp_flows() -> list[dict[str, Any]]:
    return [f for f in snapshot().get("flows", []) if f.get("workload") in CURRENT]


def _all_healthy() -> bool:
    fl = _tcp_flows()
    return len(fl) >= C1_FLOWS + C2_FLOWS and all(f["health"] == "healthy" for f in fl)


def _flows() -> None:
    """Long-lived TCP flows from c1 (untranslated) and c2 (translated), all healthy."""
    if CURRENT and _all_healthy():
        return
    sw("traffic", "stop")
    CURRENT.clear()
    for client, n in (("c1", C1_FLOWS), ("c2", C2_FLOWS)):
        out = sw("traffic", "start", "tcp", "--flows", str(n), "--client", client,
                 "--interval-ms", "100").stdout
        CURRENT.append(json.loads(out)["name"])
    wait_for("healthy flows", _all_healthy, 30)


def _peers(host: str, filt: str) -> list[tuple[str, int]]:
    """(address, port) of the far end of every established TCP connection of `host` matching `filt`."""
    out = sw("exec", host, "--", "ss", "-Htn", "state", "established", filt).stdout
    peers = []
    for line in out.splitlines():
        addr, _, port = line.split()[-1].rpartition(":")
        peers.append((addr, int(port)))
    return peers


def _rows(node: str) -> list[dict[str, Any]]:
    c = ControlClient(RUN_ROOT / "default" / "nodes" / f"{node}.sock")
    try:
        return list(c.request({"cmd": "table", "scope": "own", "limit": 100000})["rows"])
    finally:
        c.close()


def _endpoint(text: str) -> tuple[bytes, int]:
    addr, _, port = text.rpartition(":")
    return ipaddress.IPv4Address(addr).packed, int(port)


def test_s1_sees_only_the_cluster_address_as_the_source_of_c2(lab: dict[str, Any]) -> None:
    _settled()
    _flows()
    at_s1 = _peers("s1", "( sport = :5001 )")
    sources = [a for a, _ in at_s1]
    assert C2 not in sources, "c2's own address reached s1"
    assert sources.count(GW) >= C2_FLOWS and sources.count(C1) >= C1_FLOWS, sorted(set(sources))
    # To c2 the translation is invisible: its connections are to s1 itself.
    assert [a for a, _ in _peers("c2", "( dport = :5001 )")].count(S1) >= C2_FLOWS
    # status --json counts the bindings: every c2 flow is bound once as own, once as a copy.
    ns = wait_for("NAT bindings counted", lambda: (n := nodes(status())) and sum(
        x["nat"]["own"] for x in n.values()) >= C2_FLOWS and sum(
        x["nat"]["backup"] for x in n.values()) >= C2_FLOWS and n, 5)
    assert all(x["nat"]["own"] > 0 for x in ns.values()), {k: v["nat"] for k, v in ns.items()}


def test_each_translated_reply_hashes_to_its_connections_bucket_and_owner(lab: dict[str, Any]) -> None:
    """The kernel's HMARK and the engine agree on the real lab: for every binding a node holds,
    the translated tuple (the reply's) hashes into the bucket of the original one, and the node
    holding it owns that bucket (so the reply never reaches a node without the binding)."""
    st = _settled()
    _flows()
    rnd = hmark_rnd(load_lab_of("default").lab_id)
    buckets = st["buckets"]
    seen = 0
    for name, n in nodes(st).items():
        for r in _rows(name):
            if not r["nat"]:
                continue
            src, dst = _endpoint(r["src"]), _endpoint(r["dst"])
            t_src, t_dst = (_endpoint(x) for x in r["nat"].split(" -> "))
            b = hmark_bucket(6, *src, *dst, rnd, buckets)
            assert b == r["bucket"], "the engine's hash is the kernel's mark"
            assert hmark_bucket(6, *t_dst, *t_src, rnd, buckets) == b, r  # the reply's mark
            assert b in n["buckets"], (name, r)
            seen += 1
    assert seen >= C2_FLOWS


def _bindings(st: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    """(node, bucket, original src, translated src) of every translated connection of c2, as
    each node's own table shows it."""
    out = []
    for name in nodes(st):
        for r in _rows(name):
            if r["nat"] and r["src"].startswith(f"{C2}:"):
                out.append((name, int(r["bucket"]), str(r["src"]), r["nat"].split(" -> ")[0]))
    return out


def test_no_two_connections_on_any_nodes_share_a_translated_tuple(lab: dict[str, Any]) -> None:
    """Ports are allocated so that no two nodes ever collide: gathered from every node's own
    table (each connection is owned once), no translated tuple appears twice, and each is the
    cluster's address."""
    st = _settled()
    _flows()
    seen: dict[tuple[str, str], list[str]] = {}
    for name in nodes(st):
        for r in _rows(name):
            if r["nat"]:
                seen.setdefault((r["proto"], r["nat"]), []).append(f"{name} {r['src']}")
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"translated tuples held for more than one connection: {twice}"
    assert len(seen) >= C2_FLOWS and all(t.startswith(f"{GW}:") for _, t in seen), sorted(seen)[:3]


def _port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def _tcp(src: str, sport: int, dst: str, dport: int) -> str:
    """iptables arguments matching one direction of one TCP connection."""
    return f"-p tcp -s {src} --sport {sport} -d {dst} --dport {dport}"


def test_translated_replies_come_home_to_the_owner_marked_with_its_bucket(lab: dict[str, Any]) -> None:
    """The kernel's own marks, counted in every node's namespace (labtools.bucket_counting):
    for each translated connection, c2's request (arriving inside), s1's reply to the
    cluster's address and port q (arriving outside) and that reply translated back (leaving
    inside, to c2) are all marked with the connection's bucket on the node holding its
    binding, and no other node sends the reply on: the reply reached the node that knows the
    binding, and c2 got its data."""
    st = _settled()
    _flows()
    # Only the connections of the flows running now: a table also lists connections an
    # earlier test closed (their entries linger in closing states), which carry no packets.
    live = {str(f.get("src")) for f in _tcp_flows()}
    bound = [b for b in _bindings(st) if b[2] in live]
    assert len(bound) >= C2_FLOWS, (len(bound), sorted(live)[:3], _bindings(st)[:3])
    chains: dict[str, tuple[str, str]] = {}
    for i, (_, _, src, t_src) in enumerate(bound):
        sport, q = _port(src), _port(t_src)
        chains[f"SWN_REQ{i}"] = ("PREROUTING", f"-i inside {_tcp(C2, sport, S1, 5001)}")
        chains[f"SWN_REP{i}"] = ("PREROUTING", f"-i outside {_tcp(S1, 5001, GW, q)}")
        chains[f"SWN_BACK{i}"] = ("POSTROUTING", f"-o inside {_tcp(S1, 5001, C2, sport)}")
    with ExitStack() as stack:
        read = {n: stack.enter_context(bucket_counting(ns_name("default", n), chains, st["buckets"]))
                for n in nodes(st)}
        before = {n: r() for n, r in read.items()}

        def counted() -> dict[str, dict[str, dict[int, int]]] | None:
            got = {n: hits(before[n], r()) for n, r in read.items()}
            done = all(sum(got[owner][f"SWN_{d}{i}"].values()) >= 3 for i, (owner, *_) in enumerate(bound)
                       for d in ("REQ", "REP", "BACK"))
            return got if done else None

        got = wait_for("every translated connection's packets counted on its owner", counted, 10)
    for i, (owner, bucket, src, t_src) in enumerate(bound):
        marks = {d: sorted(got[owner][f"SWN_{d}{i}"]) for d in ("REQ", "REP", "BACK")}
        assert marks == {"REQ": [bucket], "REP": [bucket], "BACK": [bucket]}, (owner, src, t_src, marks)
        others = {n: got[n][f"SWN_BACK{i}"] for n in got if n != owner}
        assert not any(others.values()), f"{src}: a node without the binding sent s1's reply on: {others}"
    assert _all_healthy(), "c2's translated flows stayed healthy while counted"


def _forward(sports: list[int]) -> dict[str, str]:
    p = sw("exec", "s2", "--", sys.executable, str(PROBE), "tcp-clients", GW, "8080",
           ",".join(map(str, sports)), "--timeout-s", "3", check=False)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def test_the_port_forward_works_whichever_node_takes_the_connection(lab: dict[str, Any]) -> None:
    st = _settled()
    rnd = hmark_rnd(load_lab_of("default").lab_id)
    s2 = ipaddress.IPv4Address(S2).packed
    gw = ipaddress.IPv4Address(GW).packed
    # Two source ports whose connection lands on each node, chosen by the lab's own hash.
    sports: dict[str, list[int]] = {n["name"]: [] for n in st["nodes"]}
    owner = {b: n["name"] for n in st["nodes"] for b in n["buckets"]}
    port = 43000 + int(time.time()) % 1000 * 10  # fresh ports: none in TIME_WAIT from a rerun
    while any(len(v) < 2 for v in sports.values()):
        port += 1
        node = owner[hmark_bucket(6, s2, port, gw, 8080, rnd, st["buckets"])]
        if len(sports[node]) < 2:
            sports[node].append(port)
    before = {k: v["counters"].get("rule-accept:web-forward", 0) for k, v in nodes(st).items()}
    # The kernel's marks, as for SNAT: each forward's request (from s2, arriving outside) and
    # s1's reply translated back (leaving outside, from 198.18.2.1:8080 to s2) carry one bucket,
    # the request's, on the node it was chosen to land on; no other node sends the reply on.
    chains = {}
    for p in (p for v in sports.values() for p in v):
        chains[f"SWF_REQ{p}"] = ("PREROUTING", f"-i outside {_tcp(S2, p, GW, 8080)}")
        chains[f"SWF_BACK{p}"] = ("POSTROUTING", f"-o outside {_tcp(GW, 8080, S2, p)}")
    with ExitStack() as stack:
        read = {n: stack.enter_context(bucket_counting(ns_name("default", n), chains, st["buckets"]))
                for n in sports}
        was = {n: r() for n, r in read.items()}
        got = _forward([p for v in sports.values() for p in v])
        marks = {n: hits(was[n], r()) for n, r in read.items()}
    assert got and all(v == "ok" for v in got.values()), got
    for node, ports in sports.items():
        for p in ports:
            b = hmark_bucket(6, s2, p, gw, 8080, rnd, st["buckets"])
            mine = {d: sorted(marks[node][f"SWF_{d}{p}"]) for d in ("REQ", "BACK")}
            assert mine == {"REQ": [b], "BACK": [b]}, (node, p, mine)
            others = {n: marks[n][f"SWF_BACK{p}"] for n in marks if n != node}
            assert not any(others.values()), f"port {p}: a node without the binding sent it on: {others}"
    after = wait_for("forwards counted", lambda: (n := nodes(status())) and all(
        n[k]["counters"].get("rule-accept:web-forward", 0) >= before[k] + 2 for k in n) and n, 5)
    assert all(after[k]["counters"]["rule-accept:web-forward"] >= before[k] + 2 for k in after)


@pytest.mark.parametrize("victim", ["n1", "n2", "n3"])
def test_translated_flows_survive_the_kill_of_each_node(lab: dict[str, Any], victim: str) -> None:
    st = _settled()
    _flows()
    gone = set(nodes(st)[victim]["buckets"])
    wait_for(f"{victim} holds translated connections", lambda: nodes(status())[victim]["nat"]["own"] > 0, 5)
    t0 = time.time()
    sw("kill", victim)
    wait_for(f"{victim}'s buckets taken over", lambda: (s := nodes(status()))
             and s[victim]["state"] == "failed"
             and gone <= {b for k, n in s.items() if k != victim for b in n["buckets"]}, 10)
    verdict = flow_judge.judge(_tcp_flows, t0, 30)
    assert verdict.ok and len(verdict.survived) >= C1_FLOWS + C2_FLOWS, f"kill {victim}: {verdict.text()}"
    # Still translated after the takeover.
    assert C2 not in [a for a, _ in _peers("s1", "( sport = :5001 )")]
    sw("revive", victim)
    _settled()


def test_c2s_udp_flows_are_translated_both_ways(lab: dict[str, Any]) -> None:
    _settled()
    name = json.loads(sw("traffic", "start", "udp", "--flows", "6", "--client", "c2",
                         "--interval-ms", "100").stdout)["name"]
    try:
        def udp_flows() -> list[dict[str, Any]]:
            return [f for f in snapshot().get("flows", []) if f.get("workload") == name]
        wait_for("healthy UDP flows from c2", lambda: len(fl := udp_flows()) >= 6 and all(
            f["health"] == "healthy" for f in fl), 20)
        got = wait_for("udp bindings", lambda: sum(
            c.get("rule-accept:c2-snat-udp", 0) for c in (n["counters"] for n in status()["nodes"])) >= 6, 5)
        assert got
    finally:
        sw("traffic", "stop", "--name", name, check=False)
