"""The console and the lab daemon agree on the control API: the console's own requests, sent to a
real lab, are accepted and do what the console promises; what the daemon refuses, the console's
fake lab refuses in the same words."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from app.console import requests
from app.console.fake import FakeLab
from app.console.model import flow_cells, flow_counts
from netns import api
from netns.control import ControlClient
from netns.record import RUN_ROOT
from tests.integration.labtools import flows_of, nodes, running_lab, sw, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces (root)")]

LAB = "default"


@pytest.fixture(scope="module")
def link() -> Iterator[ControlClient]:
    with running_lab(LAB), ControlClient(RUN_ROOT / LAB / "control.sock", timeout_s=30) as c:
        yield c


def _status(link: ControlClient) -> dict[str, Any]:
    return link.call(api.Status())


def _all_active(link: ControlClient) -> bool:
    st = nodes(_status(link))
    owners = [n["buckets"] for n in st.values()]
    return all(n["state"] == "active" for n in st.values()) and sorted(
        b for o in owners for b in o) == list(range(1, 13))


def _stop_traffic(link: ControlClient) -> None:
    link.call(api.TrafficStop())
    wait_for("traffic workloads to end", lambda: all(
        w["kind"] == "server" for w in _status(link)["workloads"].values()), 20)
    link.call(api.TrafficClear())


def test_the_traffic_dialog_starts_what_its_labels_say(link: ControlClient) -> None:
    _stop_traffic(link)
    started = {}
    for ident, label, req in requests.TRAFFIC:
        reply = link.call(req)
        started[ident] = reply["name"]
        assert reply["options"] == req.options(), label
    workloads = _status(link)["workloads"]
    assert workloads[started["tcp"]]["flows"] == 3
    assert workloads[started["udp"]]["flows"] == 1
    assert workloads[started["ftp"]]["mode"] == "passive"
    assert workloads[started["burst"]]["count"] == 200

    def flows(ident: str) -> list[dict[str, Any]]:
        return flows_of(link.call(api.Snapshot(max_events=0)), started[ident])

    # The workloads themselves ran what was asked: 3 TCP flows, 1 UDP flow, a passive FTP session.
    wait_for("3 healthy TCP flows", lambda: len(f := flows("tcp")) == 3
             and all(x["health"] == "healthy" for x in f), 30)
    wait_for("1 UDP flow", lambda: len(flows("udp")) == 1, 30)
    ftp = wait_for("the FTP session to finish", lambda: [
        f for f in flows("ftp") if f["health"] in ("done", "failed")], 30)
    assert [f["mode"] for f in ftp] == ["passive"] and ftp[0]["health"] == "done", ftp
    _stop_traffic(link)


def test_the_flows_board_shows_the_daemons_flows(link: ControlClient) -> None:
    _stop_traffic(link)
    tcp = link.call(requests.traffic("tcp"))["name"]
    ftp = link.call(requests.traffic("ftp"))["name"]
    snap = wait_for("the TCP flows to move and the FTP session to end", lambda: (
        s if len(flows_of(s := link.call(api.Snapshot(max_events=0)), tcp)) == 3
        and all(f["bytes"] > 0 for f in flows_of(s, tcp))
        and any(f["health"] == "done" for f in flows_of(s, ftp)) else None), 30)
    for flow in flows_of(snap, tcp):
        cells = dict(zip(("name", "kind", "path", "health", "bytes", "pause"), flow_cells(flow),
                         strict=False))
        # client → server: the client's address first, the server's last
        assert cells["path"] == f"{flow['src']} → {flow['dst']}"
        assert flow["src"].startswith("198.18.1.") and flow["dst"].startswith("198.18.2.")
        assert cells["pause"].endswith(" ms")  # the longest pause the README promises
    counts = flow_counts(snap["flows"])
    assert counts["done"] >= 1 and sum(counts.values()) == len(snap["flows"])
    _stop_traffic(link)


def test_every_request_the_console_builds_is_accepted(link: ControlClient) -> None:
    wait_for("every node active", lambda: _all_active(link), 30)
    node = "n3"
    for req in requests.every_request(node):
        if isinstance(req, (api.NodeAction, api.TrafficStart)):
            continue  # below, in an order in which each applies; traffic: the test above
        reply = link.request(req)
        assert reply.get("ok"), (req, reply)
    assert _status(link)["frozen"] is False  # freeze, step, resume went through in that order
    for action in ("kill", "revive", "offline", "revive", "crash", "revive"):
        reply = link.request(requests.node_action(action, node))
        assert reply.get("ok"), (action, reply)
        if action == "revive":
            wait_for(f"{node} back and every node active", lambda: _all_active(link), 40)
        else:
            want = "offline" if action == "offline" else "failed"
            wait_for(f"{node} {want}", lambda w=want: nodes(_status(link))[node]["state"] == w, 20)


BAD = [
    {"cmd": "traffic", "action": "start", "kind": "tcp", "count": 3},
    {"cmd": "traffic", "action": "start", "kind": "ftp", "flows": 2},
    {"cmd": "traffic", "action": "start", "kind": "tcp", "flows": -5},
    {"cmd": "traffic", "action": "begin"},
    {"cmd": "table", "node": "n1", "limit": "many"},
    {"cmd": "snapshot", "since": "x"},
    {"cmd": "policy", "policy": "sometimes"},
    {"cmd": "policy", "policy": "hybrid", "interval_ms": 5},
    {"cmd": "kill"},
    {"cmd": "kill", "node": "n1", "force": True},
    {"cmd": "fault", "kind": "loss", "rate": 7},
    {"cmd": "explode"},
]


def test_the_daemon_and_the_fake_lab_refuse_the_same_requests_in_the_same_words(
        link: ControlClient) -> None:
    fake = FakeLab()
    before = _status(link)["workloads"]
    for msg in BAD:
        real, pretend = link.request(msg), fake.request(msg)
        assert real["ok"] is False and pretend["ok"] is False, msg
        assert real["error"] == pretend["error"] and real["field"] == pretend["field"], msg
        with pytest.raises(api.RequestError):
            api.parse_request(msg)
    assert _status(link)["workloads"] == before  # nothing was started
    # An unknown node is the lab's to know: refused as the operator's mistake, not a crash.
    assert link.request(api.Kill("n9")) == {"ok": False,
                                            "error": "no node 'n9'; nodes are n1, n2, n3"}


def test_the_cli_says_one_line_and_starts_nothing_on_bad_input(link: ControlClient) -> None:
    before = _status(link)["workloads"]
    p = sw("kill", "n9", check=False)
    assert (p.returncode, p.stderr) == (1, "syncwall: no node 'n9'; nodes are n1, n2, n3\n")
    for args in (("traffic", "start", "tcp", "--flows", "-5"),
                 ("traffic", "start", "tcp", "--count", "3"),
                 ("policy", "hybrid", "--interval-ms", "5")):
        p = sw(*args, check=False)
        assert p.returncode in (1, 2) and p.stderr.count("\n") == 1, (args, p.stderr)
        assert "Traceback" not in p.stderr
    assert _status(link)["workloads"] == before
