"""Lossless takeover in the default lab: with it on, a kill under 100 TCP flows causes no
retransmission on the clients; with it off, the segments in flight are lost and retransmitted.

Counted: the clients' RetransSegs less their tail loss probes (TcpExt TCPLossProbes). A probe is
sent when an ACK is ~2 RTTs late, lost or not: the takeover's pause (~20 ms against a sub-ms RTT)
triggers a few even when nothing was lost, and each counts in RetransSegs. A quiet interval as
long, without a kill, is the background allowed for."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from demos import flows as flow_judge
from netns.lab import load_lab_of
from netns.spec import ns_name
from tests.integration.labtools import nodes, running_lab, snapshot, status, sw, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOWS = 100
INTERVAL_MS = 20  # every flow sends a record every 20 ms: a kill always finds segments in flight
# From the kill to the count: a segment the kill lost is retransmitted by a tail loss probe
# (~2 RTTs + a few ms) or the first RTO (>= 200 ms), long before this.
WINDOW_S = 1.2
SETTLE_S = 1.0  # the flows' start settles (a fresh lab, nothing revived)
SETTLE_AFTER_REVIVE_S = 2.0  # and a revive's handback
PROBES: dict[bool, int] = {}
LOSSLESS: dict[bool, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    with running_lab() as up:
        yield up


def _counter(path: str, prefix: str, name: str) -> int:
    spec = load_lab_of("default")
    total = 0
    for client in ("c1", "c2"):
        out = subprocess.run(["ip", "netns", "exec", ns_name(spec.name, client), "cat", path],
                             capture_output=True, text=True, check=True).stdout
        head, vals = [ln.split() for ln in out.splitlines() if ln.startswith(prefix)][:2]
        total += int(vals[head.index(name)])
    return total


def _retrans() -> int:
    """RetransSegs summed over the clients' namespaces (/proc/net/snmp is per namespace)."""
    return _counter("/proc/net/snmp", "Tcp:", "RetransSegs")


def _probes() -> int:
    """Tail loss probes sent by the clients (they count in RetransSegs too)."""
    return _counter("/proc/net/netstat", "TcpExt:", "TCPLossProbes")


def _settled() -> bool:
    """Every node active again (revived if it was not); whether any was revived."""
    revived = False
    for n in status()["nodes"]:
        if n["state"] in ("failed", "offline") or n.get("intent", "active") != "active":
            sw("revive", n["name"])
            revived = True
    wait_for("every node active, every bucket owned once", lambda: (s := status()) and all(
        n["state"] == "active" for n in nodes(s).values()) and sorted(
        b for n in nodes(s).values() for b in n["buckets"]) == list(range(1, s["buckets"] + 1)), 30)
    return revived


def _flows() -> list[str]:
    sw("traffic", "stop")
    sw("traffic", "clear")
    names = []
    for client in ("c1", "c2"):
        out = sw("traffic", "start", "tcp", "--flows", str(FLOWS // 2), "--client", client,
                 "--interval-ms", str(INTERVAL_MS)).stdout
        names.append(json.loads(out)["name"])
    wait_for(f"{FLOWS} healthy flows", lambda: len(fl := _tcp(names)) >= FLOWS and all(
        f["health"] == "healthy" for f in fl), 30)
    return names


def _tcp(workloads: list[str]) -> list[dict[str, Any]]:
    return [f for f in snapshot().get("flows", []) if f.get("workload") in workloads]


def _kill_under_flows(lossless: bool, victim: str = "n1", adopter: str = "n2",
                      workloads: list[str] | None = None) -> tuple[int, int, list[str]]:
    """(retransmissions across a kill of `victim`, over a quiet interval as long, the workloads)
    in one mode. With `workloads` the flows already running are reused: the cluster is left as
    the previous kill made it (no revive, no new flows, so nothing new to settle)."""
    revived = _settled() if workloads is None else False
    sw("lossless", "on" if lossless else "off")
    wait_for("every running node in the mode", lambda: all(
        (n.get("lossless") or {}).get("enabled") is lossless for n in nodes(status()).values()
        if n["state"] not in ("failed", "offline")), 5)
    if workloads is None:
        workloads = _flows()
        # A revive's handback, and the flows' start, settle before anything is counted.
        settle_s = SETTLE_AFTER_REVIVE_S if revived else SETTLE_S
    else:
        settle_s = 0.0
    wait_for(f"{victim} owns connections", lambda: nodes(status())[victim]["own"] > 0, 5)
    time.sleep(settle_s)
    r0 = _retrans() - _probes()
    time.sleep(WINDOW_S)
    # At least 0: a tail loss probe of new data counts in TCPLossProbes but not in RetransSegs,
    # so under load the difference over a quiet interval went below 0 (-15) and failed `on <= quiet`.
    quiet = max(0, _retrans() - _probes() - r0)
    r1, p1 = _retrans(), _probes()
    t0 = time.time()
    sw("kill", victim)
    wait_for(f"{adopter} took over", lambda: (t := nodes(status())[adopter].get("last_takeover"))
             and float(t["t"]) > t0, 10)
    left = WINDOW_S - (time.time() - t0)
    if left > 0:
        time.sleep(left)
    PROBES[lossless] = _probes() - p1
    by_kill = _retrans() - r1 - PROBES[lossless]
    LOSSLESS[lossless] = nodes(status())[adopter].get("lossless") or {}
    verdict = flow_judge.judge(lambda: _tcp(workloads), t0, 30)
    assert verdict.ok and len(verdict.survived) >= FLOWS, verdict.text()
    assert all(f["health"] in ("healthy", "done") for f in _tcp(workloads))
    return by_kill, quiet, workloads


def test_lossless_takeover_causes_no_retransmission_and_without_it_there_are(lab: dict[str, Any]) -> None:
    on, quiet_on, workloads = _kill_under_flows(True)
    replayed = nodes(status())["n2"]["last_takeover"].get("replayed")
    # The headline, as the real daemon builds it from the real engine's takeover (netns/headline.py).
    head = str(status()["headline"])
    said = re.match(r"n2 took over \d+ connections? of n1 in \d+ ms, replayed (\d+) packets?", head)
    # Without lossless a kill drops what was in flight to the dead node; TCP recovers it by a
    # retransmission or a tail loss probe (both count here). The same flows go on through n2 and
    # n3: n2 (which now carries n1's flows too) is killed with lossless off and n3 takes over.
    # A kill that happens to meet no packet in flight is possible at a 15 ms takeover, so up to
    # two more kills are tried, of n1 on a revived cluster with fresh flows.
    off, quiet_off, _ = _kill_under_flows(False, "n2", "n3", workloads)
    off += PROBES[False]
    for _attempt in range(2):
        if off > quiet_off:
            break
        off, quiet_off, _ = _kill_under_flows(False)
        off += PROBES[False]
    sw("traffic", "stop")
    sw("lossless", "on")
    # The background (no kill, same length) is allowed for; here it is 0 on an idle machine.
    seen = (f"lossless on: {on} retransmission(s) across the kill (besides {PROBES[True]} tail loss probes), "
            f"{quiet_on} without; replayed {replayed}; n2 {LOSSLESS[True]}. lossless off: {off} "
            f"({PROBES[False]} probes), {quiet_off} without")
    print(seen)
    assert on <= quiet_on, seen
    assert off > quiet_off, f"lossless off: {off} retransmission(s) across the kill, {quiet_off} without"
    assert replayed and replayed > 0
    assert said and int(said.group(1)) == replayed, head
