"""IPv6 through the cluster on the dual-stack default lab: neighbour discovery, HMARK's symmetry,
TCP flows surviving a kill, FTP's EPRT and EPSV held and synced like PORT and PASV."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from demos import flows as flow_judge
from netns import iptables
from netns.build import ns_name
from netns.spec import load_lab
from tests.integration.labtools import nodes, running_lab, snapshot, status, sw, sw_json, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = load_lab(None)
C1_6, S1_6 = str(SPEC.host("c1").ip6), str(SPEC.host("s1").ip6)
FLOWS = 40
SESSIONS = 8


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    with running_lab() as up:
        yield up


def _in(host: str, *argv: str, text: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns_name(SPEC, host), *argv], input=text,
                          capture_output=True, text=True, check=True, timeout=20).stdout


def _settled() -> dict[str, Any]:
    for n in status()["nodes"]:
        if n["state"] in ("failed", "offline"):
            sw("revive", n["name"])

    def owned_once() -> dict[str, Any] | None:
        st = status()
        ns = nodes(st)
        ok = all(n["state"] == "active" for n in ns.values()) and sorted(
            b for n in ns.values() for b in n["buckets"]) == list(range(1, st["buckets"] + 1))
        return st if ok else None

    st: dict[str, Any] = wait_for("every node active, every bucket owned once", owned_once, 30)
    return st


# An ICMPv6 echo over a raw socket (the lab hosts have no ping; the kernel fills the checksum).
_PING6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(2)
for seq in range(3):
    s.sendto(bytes((128, 0, 0, 0, 0x53, 0x57, 0, seq)) + b"syncwall", (sys.argv[1], 0))
    while True:
        data, _ = s.recvfrom(200)
        if data[0] == 129 and data[4:8] == bytes((0x53, 0x57, 0, seq)):
            print("reply")
            break
"""


def test_hosts_and_gateway_are_dual_stack_and_neighbour_discovery_answers(lab: dict[str, Any]) -> None:
    _settled()
    assert C1_6 in _in("c1", "ip", "-6", "-o", "addr", "show", "dev", "eth0")
    # Through the cluster: the engine screens ICMPv6 echo (rule ping-v6) and tracks its reply.
    assert _in("c1", "python3", "-c", _PING6, S1_6).split() == ["reply"] * 3
    # Every node answered the solicitation for the shared gateway address with the shared MAC.
    neigh = _in("c1", "ip", "-6", "neigh", "show", str(SPEC.gateway_ip6("inside")))
    assert SPEC.gateway_mac_inside in neigh.lower(), neigh


_UDP_ROUND_TRIP = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[2])))
s.settimeout(2)
s.sendto(b"hmark", (sys.argv[1], 5002))
print(s.recvfrom(100)[0].decode())
"""


def _bucket_counts(node_ns: str, chain: str) -> dict[int, int]:
    out = iptables.run_in_ns(node_ns, ["ip6tables", "-w", "-t", "mangle", "-nvxL", chain]).stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+\d+\s+RETURN.*mark match 0x([0-9a-f]+)", line)
        if m:
            counts[int(m.group(2), 16)] = int(m.group(1))
    return counts


def test_hmark_gives_both_directions_of_an_ipv6_flow_the_same_bucket(lab: dict[str, Any]) -> None:
    """Counted on n1, which sees every frame (the bridges flood the shared MAC): a chain per
    direction, placed after HMARK and before the owned-bucket split, counts each bucket."""
    _settled()
    n1 = ns_name(SPEC, "n1")
    chains = {"inside": "SWT6_IN", "outside": "SWT6_OUT"}
    save = iptables.run_in_ns(n1, ["ip6tables-save", "-t", "mangle"]).stdout
    rules = [ln for ln in save.splitlines() if ln.startswith("-A PREROUTING")]
    at = next(i for i, ln in enumerate(rules) if "SW_OWNED" in ln) + 1  # 1-based position
    text = ["*mangle", *(f":{c} - [0:0]" for c in chains.values())]
    text += [f"-A {c} -m mark --mark {b} -j RETURN"
             for c in chains.values() for b in range(1, SPEC.buckets + 1)]
    text += [f"-I PREROUTING {at} -i {i} -p udp -j {c}" for i, c in chains.items()]
    iptables.run_in_ns(n1, ["ip6tables-restore", "-w", "--noflush"],
                       input_text="\n".join([*text, "COMMIT", ""]))
    try:
        seen: dict[int, int] = {}
        for sport in range(41000, 41016):
            before = {c: _bucket_counts(n1, c) for c in chains.values()}
            assert _in("c1", "python3", "-c", _UDP_ROUND_TRIP, S1_6, str(sport)).strip() == "hmark"
            after = {c: _bucket_counts(n1, c) for c in chains.values()}
            hit = {c: [b for b in after[c] if after[c][b] > before[c].get(b, 0)] for c in chains.values()}
            assert len(hit["SWT6_IN"]) == 1 and hit["SWT6_IN"] == hit["SWT6_OUT"], (sport, hit)
            seen[sport] = hit["SWT6_IN"][0]
        assert len(set(seen.values())) > 1, f"16 flows all hashed to one bucket: {seen}"
    finally:
        undo = [f"-D PREROUTING -i {i} -p udp -j {c}" for i, c in chains.items()]
        undo += [f"-F {c}" for c in chains.values()] + [f"-X {c}" for c in chains.values()]
        iptables.run_in_ns(n1, ["ip6tables-restore", "-w", "--noflush"],
                           input_text="\n".join(["*mangle", *undo, "COMMIT", ""]))


CURRENT: list[str] = []


def _tcp6_flows() -> list[dict[str, Any]]:
    return [f for f in snapshot().get("flows", []) if f.get("workload") in CURRENT]


def _all_healthy() -> bool:
    fl = _tcp6_flows()
    return len(fl) >= FLOWS and all(f["health"] == "healthy" for f in fl)


def test_ipv6_tcp_flows_survive_a_kill_of_their_node(lab: dict[str, Any]) -> None:
    ns = nodes(_settled())
    sw("traffic", "stop")
    CURRENT.clear()
    for client in ("c1", "c2"):
        out = sw("traffic", "start", "tcp", "--ipv6", "--flows", str(FLOWS // 2), "--client", client,
                 "--interval-ms", "100").stdout
        CURRENT.append(json.loads(out)["name"])
    wait_for(f"{FLOWS} healthy IPv6 flows", _all_healthy, 30)
    assert all(f["dst"].startswith(f"[{S1_6}]") for f in _tcp6_flows()), _tcp6_flows()[0]
    owned = wait_for("n1 owns IPv6 connections", lambda: (
        (n := nodes(status())) and n["n1"]["own"] > 0 and sum(x["own"] for x in n.values()) >= FLOWS
        and n), 5)
    assert all(n["own"] > 0 for n in owned.values()), {k: v["own"] for k, v in owned.items()}
    n1_buckets = set(ns["n1"]["buckets"])
    t0 = time.time()
    sw("kill", "n1")
    try:
        wait_for("n1 failed and its buckets at n2", lambda: (
            (s := nodes(status())) and s["n1"]["state"] == "failed"
            and n1_buckets <= set(s["n2"]["buckets"])), 10)
        verdict = flow_judge.judge(_tcp6_flows, t0, 30)
        assert verdict.ok and len(verdict.survived) >= FLOWS, f"after kill n1: {verdict.text()}"
    finally:
        sw("traffic", "stop")
        _settled()


def _counters() -> dict[str, dict[str, int]]:
    return {name: n["counters"] for name, n in nodes(status()).items()}


def _ftp6(mode: str) -> list[dict[str, Any]]:
    name = sw_json("traffic", "start", "ftp", "--ipv6", "--mode", mode, "--sessions", str(SESSIONS))["name"]

    def finished() -> list[dict[str, Any]] | None:
        fl = [f for f in snapshot()["flows"] if f.get("workload") == name]
        done = [f for f in fl if f["health"] in ("done", "failed")]
        return done if len(done) >= SESSIONS else None

    names = {f["name"] for f in wait_for(f"{SESSIONS} IPv6 FTP sessions", finished, 60)}

    def mapped() -> list[dict[str, Any]] | None:
        fl = [f for f in snapshot()["flows"] if f["name"] in names]
        return fl if len(fl) >= len(names) and all(
            f.get("node") and (f["health"] != "done" or f.get("data_node")) for f in fl) else None

    return list(wait_for("the sessions mapped to nodes", mapped, 5, 0.2))


@pytest.mark.parametrize("mode", ["active", "passive"])
def test_ftp_over_ipv6_eprt_and_epsv_open_cross_node_data_connections(lab: dict[str, Any], mode: str) -> None:
    """Active mode is EPRT |2|addr|port| and passive is EPSV over IPv6 (ftplib and pyftpdlib
    choose them for an IPv6 control connection); either names a data connection that HMARK may
    put on another node, which the synced expectation admits."""
    _settled()
    sw("policy", "hybrid")
    before = _counters()
    sessions = _ftp6(mode)
    failed = [s for s in sessions if s["health"] != "done"]
    assert not failed, f"IPv6 FTP {mode} sessions failed: {[s.get('detail') for s in failed]}"
    assert all(str(s["dst"]).startswith("[2001:2:0:2::b]:21") for s in sessions), sessions[0]
    crossed = [s for s in sessions if s["node"] != s["data_node"]]
    assert crossed, f"no IPv6 data connection landed on another node in {SESSIONS} sessions: {sessions}"
    after = _counters()
    released = sum(after[n].get("released_by_ack", 0) - before[n].get("released_by_ack", 0) for n in after)
    assert released >= SESSIONS, "each EPRT / 229 reply was held until its expectation was acked"
