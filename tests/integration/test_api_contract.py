"""The console and the lab daemon agree on the control API: the console's own requests, sent to a
real lab, are accepted and do what the console promises; what the daemon refuses, the console's
fake lab refuses in the same words."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from app.console import requests
from app.console.fake import FakeLab
from app.console.model import flow_cells, flow_counts
from netns import api
from netns.control import ControlClient
from netns.lab import load_lab_of
from netns.record import RUN_ROOT
from netns.workloads import tcpflows
from tests.integration.labtools import flows_of, nodes, running_lab, sw, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces (root)")]

LAB = "default"


UP: dict[str, Any] = {}  # what `up --traffic` started, and the flows it had soon after


@pytest.fixture(scope="module")
def link() -> Iterator[ControlClient]:
    # Up with its demo traffic (a teacher's first screen moves): the flows are looked at here,
    # before any test stops them; test_up_traffic_starts_a_small_mixed_workload judges them.
    with running_lab(LAB, up_args=("--traffic",)) as up, ControlClient(
            RUN_ROOT / LAB / "control.sock", timeout_s=30) as c:
        UP.update(up)
        names = up.get("traffic", [])

        def started() -> list[dict[str, Any]] | None:
            flows = [f for w in names for f in flows_of(c.call(api.Snapshot(max_events=0)), w)]
            kinds = [f.get("kind") for f in flows]
            moving = all(f["bytes"] > 0 for f in flows if f.get("kind") == "tcp")
            return flows if len(names) == 3 and moving and kinds.count("tcp") == 4 and (
                "udp" in kinds and "ftp" in kinds) else None

        try:
            UP["flows"] = wait_for("up --traffic's flows", started, 30)
        except AssertionError as e:
            UP["flows"] = str(e)
        yield c


def test_up_traffic_starts_a_small_mixed_workload(link: ControlClient) -> None:
    assert len(UP["traffic"]) == 3, UP
    flows = UP["flows"]
    assert isinstance(flows, list), flows
    by_kind = {k: [f for f in flows if f["kind"] == k] for k in ("tcp", "udp", "ftp")}
    assert len(by_kind["tcp"]) == 4 and all(f["src"].startswith("198.18.1.10:") for f in by_kind["tcp"])
    assert len(by_kind["udp"]) == 1 and by_kind["udp"][0]["src"].startswith("198.18.1.11:")
    assert [f["mode"] for f in by_kind["ftp"]] == ["passive"]


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


def _s1_connections() -> list[str]:
    """s1's TCP sockets other than its listeners (TIME-WAIT is the kernel's, not a socket held)."""
    ns = load_lab_of(LAB).ns_name("s1")
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htan"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.split()[0] not in ("LISTEN", "TIME-WAIT")]


def test_s1_lets_go_of_clients_that_vanished(link: ControlClient) -> None:
    """A client whose goodbye never reaches s1 (bug 4: after a loss run s1 held 24 sockets of
    connections closed minutes before): the echo server's keepalive ends them."""
    _stop_traffic(link)
    wait_for("s1 holding only its listeners", lambda: not _s1_connections(), 30, 0.25)
    name = link.call(api.TrafficStart(kind="tcp", flows=4))["name"]
    wait_for("4 healthy TCP flows", lambda: len(f := flows_of(link.call(api.Snapshot(max_events=0)),
                                                              name)) == 4
             and all(x["health"] == "healthy" for x in f), 30)
    assert len(_s1_connections()) >= 4
    # From now on nothing of c1's reaches s1: the clients' FINs (and any reset) are lost.
    c1 = load_lab_of(LAB).ns_name("c1")
    rule = ["OUTPUT", "-p", "tcp", "-d", "198.18.2.10", "--dport", "5001", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", c1, "iptables", "-I", *rule], check=True)
    try:
        _stop_traffic(link)
        assert _s1_connections(), "s1 heard no goodbye"
        wait_for("s1 to close the connections of its vanished clients",
                 lambda: not _s1_connections(), tcpflows.DEAD_AFTER_S + 15, 0.5)
    finally:
        subprocess.run(["ip", "netns", "exec", c1, "iptables", "-D", *rule], check=True)


def test_the_consoles_filter_on_a_real_lab_matches_only_what_is_on_screen(link: ControlClient) -> None:
    """Bug 6 (`/1.11` matched `198.18.1.10:57202`): the daemon matches every field of a row,
    its key, bucket, version and age too; the console, on the daemon's replies, shows only the
    rows whose cells on screen hold the text."""
    import asyncio

    from app.client import DaemonLink
    from app.console.app import ConsoleApp
    from app.console.model import conn_cells
    from tests.tui.snap_app import SIZE
    from tests.tui.test_console import conn_table

    _stop_traffic(link)
    names = [link.call(api.TrafficStart(kind="tcp", client=c, flows=6))["name"] for c in ("c1", "c2")]
    wait_for("12 healthy TCP flows", lambda: sum(
        1 for w in names for f in flows_of(link.call(api.Snapshot(max_events=0)), w)
        if f["health"] == "healthy") == 12, 30)
    own = {n: link.call(requests.table(n, "own", "", 500))["rows"] for n in ("n1", "n2", "n3")}
    node = max(own, key=lambda n: sum(1 for r in own[n] if r["src"].startswith("198.18.1.1")))
    # A text only a hidden field holds (a piece of a row's key): the daemon finds the row.
    c1_row = next(r for r in own[node] if r["src"].startswith("198.18.1.10:"))
    shown = " ".join(" ".join(conn_cells(r)) for rows in own.values() for r in rows)
    hidden = next(c1_row["key"][i:i + 10] for i in range(len(c1_row["key"]) - 10)
                  if c1_row["key"][i:i + 10] not in shown)
    assert link.call(requests.table(node, "own", hidden, 500))["rows"], "the daemon matches keys"

    def visible_rows(app: ConsoleApp) -> list[str]:
        table = conn_table(app)
        return [" ".join(str(c) for c in table.get_row(k)) for k in table.rows]

    async def scenario() -> dict[str, Any]:
        app = ConsoleApp(DaemonLink(RUN_ROOT / LAB / "control.sock", viewer=True), viewer=True,
                         poll_interval_s=0.25)
        seen: dict[str, Any] = {"1.11": [], "hidden": []}
        async with app.run_test(size=SIZE) as pilot:
            await _wait(pilot, lambda: bool(visible_rows(app)))
            await pilot.press(node[-1])
            await _wait(pilot, lambda: f"{node} · own" in _totals(app) and bool(visible_rows(app)))
            await pilot.press("slash", *"1.11")
            await _wait(pilot, lambda: "filter '1.11'" in _totals(app) and bool(visible_rows(app)))
            for _ in range(12):  # three seconds of polls: ages, versions and keys change
                seen["1.11"].append(visible_rows(app))
                await pilot.pause(0.25)
            await pilot.press("escape", "slash", *hidden)
            await _wait(pilot, lambda: f"filter '{hidden}'" in _totals(app))
            for _ in range(4):
                await pilot.pause(0.25)
                seen["hidden"].append(visible_rows(app))
            seen["totals"] = _totals(app)
        return seen

    seen = asyncio.run(scenario())
    for rows in seen["1.11"]:
        assert rows and all("1.11" in r for r in rows), rows
        assert not any("198.18.1.10:" in r and "198.18.1.11" not in r for r in rows), rows
    assert seen["hidden"] == [[]] * 4 and "0 rows" in seen["totals"], seen
    _stop_traffic(link)


def _totals(app: Any) -> str:
    from textual.widgets import Static

    return str(app.query_one("#totals", Static).render())


async def _wait(pilot: Any, ready: Any, timeout_s: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, "the console did not show it in time"
        await pilot.pause(0.1)
