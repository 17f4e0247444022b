"""IPv6 through the cluster on the dual-stack default lab: neighbour discovery, HMARK's symmetry,
TCP flows surviving a kill of each node, UDP flows surviving a kill, a burst of short
connections, FTP's EPRT and EPSV held and synced like PORT and PASV."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from demos import flows as flow_judge
from netns.build import ns_name
from netns.spec import load_lab
from tests.integration.labtools import (
    bucket_counting,
    hits,
    nodes,
    running_lab,
    snapshot,
    status,
    sw,
    sw_json,
    wait_for,
)

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


def test_hmark_gives_both_directions_of_an_ipv6_flow_the_same_bucket(lab: dict[str, Any]) -> None:
    """Counted on n1, which sees every frame (the bridges flood the shared MAC): a chain per
    direction, placed after HMARK and before the owned-bucket split, counts each bucket."""
    _settled()
    chains = {"SWT6_IN": ("PREROUTING", "-i inside -p udp"), "SWT6_OUT": ("PREROUTING", "-i outside -p udp")}
    with bucket_counting(ns_name(SPEC, "n1"), chains, SPEC.buckets, ipv6=True) as read:
        seen: dict[int, int] = {}
        for sport in range(41000, 41016):
            before = read()
            assert _in("c1", "python3", "-c", _UDP_ROUND_TRIP, S1_6, str(sport)).strip() == "hmark"
            hit = {c: sorted(v) for c, v in hits(before, read()).items()}
            assert len(hit["SWT6_IN"]) == 1 and hit["SWT6_IN"] == hit["SWT6_OUT"], (sport, hit)
            seen[sport] = hit["SWT6_IN"][0]
        assert len(set(seen.values())) > 1, f"16 flows all hashed to one bucket: {seen}"


CURRENT: list[str] = []


def _tcp6_flows() -> list[dict[str, Any]]:
    return [f for f in snapshot().get("flows", []) if f.get("workload") in CURRENT]


def _all_healthy() -> bool:
    fl = _tcp6_flows()
    return len(fl) >= FLOWS and all(f["health"] == "healthy" for f in fl)


def _kill_and_judge(victim: str, flows: Callable[[], list[dict[str, Any]]], least: int, what: str) -> None:
    """Kill `victim` (which must own some of the flows' connections), wait for its buckets to be
    taken over, judge the flows, and revive it (every bucket owned once again)."""
    st = nodes(_settled())
    gone = set(st[victim]["buckets"])
    wait_for(f"{victim} owns connections", lambda: nodes(status())[victim]["own"] > 0, 5)
    t0 = time.time()
    sw("kill", victim)
    try:
        wait_for(f"{victim} failed and its buckets taken over", lambda: (
            (s := nodes(status())) and s[victim]["state"] == "failed"
            and gone <= {b for k, n in s.items() if k != victim for b in n["buckets"]}), 10)
        verdict = flow_judge.judge(flows, t0, 30)
        assert verdict.ok and len(verdict.survived) >= least, f"{what}, kill {victim}: {verdict.text()}"
    finally:
        _settled()


def test_ipv6_tcp_flows_survive_a_kill_of_each_node_in_turn(lab: dict[str, Any]) -> None:
    """The failover test's parity over IPv6: the same flows, each node killed in turn and
    revived before the next (one start of the flows for the three kills)."""
    _settled()
    sw("traffic", "stop")
    CURRENT.clear()
    for client in ("c1", "c2"):
        out = sw("traffic", "start", "tcp", "--ipv6", "--flows", str(FLOWS // 2), "--client", client,
                 "--interval-ms", "100").stdout
        CURRENT.append(json.loads(out)["name"])
    try:
        wait_for(f"{FLOWS} healthy IPv6 flows", _all_healthy, 30)
        assert all(f["dst"].startswith(f"[{S1_6}]") for f in _tcp6_flows()), _tcp6_flows()[0]
        owned = wait_for("every node owns IPv6 connections", lambda: (
            (n := nodes(status())) and all(x["own"] > 0 for x in n.values())
            and sum(x["own"] for x in n.values()) >= FLOWS and n), 5)
        assert all(n["own"] > 0 for n in owned.values()), {k: v["own"] for k, v in owned.items()}
        for victim in ("n1", "n2", "n3"):
            _kill_and_judge(victim, _tcp6_flows, FLOWS, "IPv6 TCP")
            wait_for("the flows healthy again", _all_healthy, 10)
    finally:
        sw("traffic", "stop")
        _settled()


UDP_FLOWS = 12


def test_ipv6_udp_flows_are_healthy_and_survive_a_kill(lab: dict[str, Any]) -> None:
    """`traffic start udp --ipv6`: numbered datagrams to s1's IPv6 echo, every flow healthy
    through the cluster, and every flow moving again after a kill of a node owning some."""
    _settled()
    name = sw_json("traffic", "start", "udp", "--ipv6", "--flows", str(UDP_FLOWS), "--client", "c1",
                   "--interval-ms", "50")["name"]

    def udp6() -> list[dict[str, Any]]:
        return [f for f in snapshot().get("flows", []) if f.get("workload") == name]

    try:
        fl = wait_for(f"{UDP_FLOWS} healthy IPv6 UDP flows", lambda: len(f := udp6()) >= UDP_FLOWS and all(
            x["health"] == "healthy" for x in f) and f, 20)
        assert all(str(f["dst"]).startswith(f"[{S1_6}]") for f in fl), fl[0]
        def on_nodes() -> list[dict[str, Any]] | None:
            f = udp6()
            return f if f and all(x.get("node") for x in f) else None

        mapped = wait_for("the UDP flows mapped to nodes", on_nodes, 5, 0.2)
        # The node carrying the most of them (the lab maps each flow to its bucket's owner).
        victim = Counter(str(f["node"]) for f in mapped).most_common(1)[0][0]
        _kill_and_judge(victim, udp6, UDP_FLOWS, "IPv6 UDP")
    finally:
        sw("traffic", "stop", "--name", name, check=False)


BURST = 60


def test_an_ipv6_burst_of_short_connections_all_succeed(lab: dict[str, Any]) -> None:
    """`traffic start burst --ipv6`: short connections, each from a new source port (so over
    every node's buckets), to s1's IPv6 echo; every one connects, echoes and closes."""
    _settled()
    name = sw_json("traffic", "start", "burst", "--ipv6", "--count", str(BURST), "--rate", "100")["name"]
    try:
        def finished() -> dict[str, Any] | None:
            fl = [f for f in snapshot().get("flows", []) if f.get("workload") == name]
            return fl[0] if fl and fl[0]["health"] in ("done", "failed") else None

        f = wait_for("the IPv6 burst finished", finished, 20)
        assert f["health"] == "done" and f["successes"] == BURST, f
        assert str(f["dst"]).startswith(f"[{S1_6}]"), f
    finally:
        sw("traffic", "stop", "--name", name, check=False)


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
