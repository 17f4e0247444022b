"""The intrusion blocklist and authenticated users on a real lab: a port scan from c2, seen by
whichever node its SYNs land on, is blocked on every node and admitted again after the timeout;
once c1 logs in its connections are admitted on every node, after logout refused on every node."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from demos.bench.block import connects_code, one_entry, scan_code
from netns.build import ns_name
from tests.integration.labtools import running_lab, status, sw, sw_json, wait_for

pytestmark = pytest.mark.integration

C1, C2, S1 = "198.18.1.10", "198.18.1.11", "198.18.2.10"
BLOCK_S = 3
SPORTS = list(range(47000, 47030))  # 30 flows: each node's buckets get some of them


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = "g" + secrets.token_hex(3)  # never collides with a lab someone else runs
    path = tmp_path_factory.mktemp("guards") / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        scan_ports = 6
        scan_window_ms = 2000
        block_s = {BLOCK_S}
        [[rules]]
        name = "members"
        action = "accept"
        proto = "tcp"
        src = "{C1}/32"
        dst = "{S1}/32"
        dport = 5001
        auth = true
        [[rules]]
        name = "tcp-services"
        action = "accept"
        proto = "tcp"
        src = "198.18.1.0/24"
        dst = "198.18.2.0/24"
        dport = "5000-5999"
    """))
    with running_lab(name, path):
        yield name


def connects(lab: str, host: str, port: int = 5001, sports: list[int] = SPORTS,
             wait: float = 1.0) -> int:
    code = connects_code(sports, S1, port, wait)
    out = subprocess.run(["ip", "netns", "exec", ns_name(lab, host), sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["connected"])


def settled(lab: str) -> set[str]:
    """Wait until every node is active and every bucket owned once (a node that a busy host
    made miss heartbeats has its buckets back): the nodes. Each test counts per node."""
    def ok() -> set[str] | None:
        st = status(lab)
        owned = sorted(b for n in st["nodes"] for b in n["buckets"])
        if owned != list(range(1, st["buckets"] + 1)) or any(n["state"] != "active" for n in st["nodes"]):
            return None
        return {n["name"] for n in st["nodes"]}
    got: set[str] = wait_for("every node active, every bucket owned once", ok, 30)
    return got


def rose(lab: str, key: str, before: dict[str, dict[str, int]], nodes: set[str]) -> dict[str, dict[str, int]]:
    """Wait until every node's counter `key` is above `before` (the daemon polls the nodes
    every 0.25 s, later on a busy host: one read right after the traffic may be a poll old)."""
    def ok() -> dict[str, dict[str, int]] | None:
        now = counters(lab)
        return now if all(now[n].get(key, 0) > before[n].get(key, 0) for n in nodes) else None
    try:
        got: dict[str, dict[str, int]] = wait_for(f"every node's {key} counter to rise", ok, 5)
    except AssertionError:
        now = counters(lab)
        raise AssertionError(f"{key} did not rise on " + ", ".join(
            n for n in sorted(nodes) if now[n].get(key, 0) <= before[n].get(key, 0))) from None
    return got


def counters(lab: str) -> dict[str, dict[str, int]]:
    st = sw_json("status", "--lab", lab)
    return {n["name"]: n.get("counters", {}) for n in st["nodes"]}


def entries(lab: str, kind: str, addr: str) -> dict[str, dict[str, Any]]:
    reply = sw_json("auth", "list", "--lab", lab)
    out = {}
    for node, r in reply["nodes"].items():
        for e in r.get("entries", []):
            if e["kind"] == kind and e["addr"] == addr and e.get("live", True):
                out[node] = e
    return out


def guard_status(lab: str, kind: str, common: int) -> dict[str, dict[str, int]]:
    """Wait until status --json counts `common` entries of `kind` ("blocklist" or "users") on
    every node, none as backup, and `common` of them as own on one node or another (each entry
    has one writer): {node: {own, backup, common}}. The daemon polls the nodes every 0.25 s,
    so one read may be a poll old."""
    seen: list[dict[str, dict[str, int]]] = []

    def every() -> dict[str, dict[str, int]] | None:
        got = {n["name"]: n[kind] for n in status(lab)["nodes"]}
        seen.append(got)
        ok = all(c["common"] == common and c["backup"] == 0 for c in got.values()) and sum(
            c["own"] for c in got.values()) == common
        return got if ok else None
    try:
        out: dict[str, dict[str, int]] = wait_for(f"status's {kind} counts on every node", every, 5)
    except AssertionError:
        raise AssertionError(f"status --json {kind} counts, want {common} common on every node "
                             f"and one writer each: first {seen[0]}, last {seen[-1]}") from None
    return out


def test_a_scan_seen_by_one_node_is_blocked_by_all_and_admitted_after_the_timeout(lab: str) -> None:
    nodes = settled(lab)
    assert connects(lab, "c2") == len(SPORTS)  # before: c2 is a client like any other
    before = counters(lab)
    subprocess.run(["ip", "netns", "exec", ns_name(lab, "c2"), sys.executable, "-c", scan_code(S1)],
                   timeout=30, check=True)
    # One entry held by all: when two nodes saw the scan at once, the sync layer keeps one.
    got = wait_for("every node holds one and the same blocklist entry for c2",
                   lambda: (e := entries(lab, "blocklist", C2)) and one_entry(e, nodes) and e, 5)
    detected = {e["detected"] for e in got.values()}
    assert len(detected) == 1
    guard_status(lab, "blocklist", 1)  # status --json: one common entry on every node, one writer
    assert connects(lab, "c2") == 0
    rose(lab, "blocklisted-source", before, nodes)  # every node dropped some of c2's connections itself
    time.sleep(max(0.0, detected.pop() + BLOCK_S - time.monotonic()) + 0.2)
    assert connects(lab, "c2") == len(SPORTS)  # the timeout ended it on every node
    guard_status(lab, "blocklist", 0)  # and status stops counting it

    # An operator may lift an entry before its timeout, from the command line.
    subprocess.run(["ip", "netns", "exec", ns_name(lab, "c2"), sys.executable, "-c", scan_code(S1)],
                   timeout=30, check=True)
    wait_for("c2 blocklisted again", lambda: set(entries(lab, "blocklist", C2)) == nodes, 5)
    assert "unblocked on every node" in sw("auth", "unblock", "--host", "c2", "--lab", lab).stdout
    wait_for("no node holds c2's entry", lambda: not entries(lab, "blocklist", C2), 5)
    assert connects(lab, "c2") == len(SPORTS)
    assert "was not blocklisted" in sw("auth", "unblock", "--host", "c2", "--lab", lab).stdout


def test_c1_is_admitted_on_every_node_once_logged_in_and_refused_after_logout(lab: str) -> None:
    nodes = settled(lab)
    assert connects(lab, "c1") == 0
    sw("auth", "login", "alice", "--host", "c1", "--lab", lab)
    wait_for("every node holds alice's user record",
             lambda: set(entries(lab, "user", C1)) == nodes, 5)
    guard_status(lab, "users", 1)  # on every node; the node that took the login wrote it
    before = counters(lab)
    assert connects(lab, "c1") == len(SPORTS)
    mid = rose(lab, "rule-accept:members", before, nodes)
    sw("auth", "logout", "--host", "c1", "--lab", lab)
    wait_for("no node holds alice's user record", lambda: not entries(lab, "user", C1), 5)
    assert connects(lab, "c1") == 0
    rose(lab, "auth-required:members", mid, nodes)
    guard_status(lab, "users", 0)


def test_auth_refuses_an_unknown_host(lab: str) -> None:
    r = sw("auth", "login", "alice", "--host", "nosuch", "--lab", lab, check=False)
    assert r.returncode == 1 and "no host 'nosuch'" in r.stderr
