"""No split brain on a real lab: a silent cut of each node's links, one at a time (sync, inside, outside)
under sequence-checked TCP flows and sequence-numbered UDP flows loses no flow, duplicates
no datagram, never has a bucket owned by two nodes at a status sample, and heal restores the
normal view. A partition of the sync segment alone takes nothing over. (The same partition
with the extra paths off, a split brain, is the `split-brain` lesson's: tests/integration/
test_demos.py runs it and checks both owners and the duplicated datagrams.)

Run it under the lab lock: `flock /tmp/syncwall-lab.lock ./run-tests tests/integration/test_partition.py`."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demos import flows as flow_judge
from netns import api
from netns.control import ControlClient
from tests.integration.labtools import RUN_ROOT, nodes, sw, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = "splitt"
TCP_FLOWS = 50  # per client: 100 sequence-checked TCP flows
CUT_S = 1.0  # how long each cut lasts: the fence and its takeover happen within 0.2 s of it


def _sw(*args: str, check: bool = True) -> Any:
    return sw(*args, "--lab", LAB, check=check)


def _ask(req: api.Request | dict[str, Any]) -> dict[str, Any]:
    """One request to the daemon's control socket, as the CLI sends it (a CLI call costs 0.4 s
    of start-up; the CLI itself is driven in the flapping test). Fails on a refusal."""
    c = ControlClient(RUN_ROOT / LAB / "control.sock", 30.0)
    try:
        reply = c.request(req)
    finally:
        c.close()
    assert reply.get("ok", True), f"the lab refused {req}: {reply.get('error')}"
    return reply


def _status() -> dict[str, Any]:
    return _ask({"cmd": "status"})


def _cut(node: str, link: str) -> None:
    _ask(api.Fault("cut", node=node, link=link, silent=True))


def _heal() -> None:
    _ask(api.Fault("heal"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    f = Path(tmp_path_factory.mktemp("split")) / f"{LAB}.toml"
    f.write_text(f'name = "{LAB}"\n')
    up = json.loads(sw("up", str(f), "--json", "--lab", LAB).stdout)
    try:
        yield up
    finally:
        _sw("down", check=False)


def _owners(st: dict[str, Any]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for n in st["nodes"]:
        for b in n["buckets"]:
            out.setdefault(b, []).append(n["name"])
    return out


def _owned_once(st: dict[str, Any]) -> bool:
    ns = nodes(st)
    return all(n["state"] == "active" for n in ns.values()) and sorted(
        b for n in ns.values() for b in n["buckets"]) == list(range(1, st["buckets"] + 1))


def _settled() -> dict[str, Any]:
    st: dict[str, Any] = wait_for("every node active, every bucket owned once",
                                  lambda: (s := _status()) and _owned_once(s) and s, 30)
    return st


CURRENT: list[str] = []


def _all_flows() -> list[dict[str, Any]]:
    flows: list[dict[str, Any]] = _ask({"cmd": "snapshot", "max_events": 0}).get("flows", [])
    return flows


def _flows() -> list[dict[str, Any]]:
    return [f for f in _all_flows() if f.get("workload") in CURRENT]


def _start_flows() -> None:
    if CURRENT and all(f["health"] == "healthy" for f in _flows()):
        return
    _ask(api.TrafficStop())
    CURRENT.clear()
    for client in ("c1", "c2"):
        CURRENT.append(_ask(api.TrafficStart("tcp", client=client, flows=TCP_FLOWS, interval_ms=100))["name"])
    CURRENT.append(_ask(api.TrafficStart("udp", client="c1", flows=4, interval_ms=20))["name"])
    wait_for("healthy flows", lambda: len(fl := _flows()) >= 2 * TCP_FLOWS + 4
             and all(f["health"] == "healthy" for f in fl), 30)


def _replayed() -> dict[str, int]:
    """Packets each node replayed at takeovers (lossless on)."""
    return {n["name"]: int((n.get("lossless") or {}).get("replayed", 0)) for n in _status()["nodes"]}


def _replayed_udp() -> int:
    """UDP datagrams the nodes replayed at takeovers (lossless on): each may be a duplicate."""
    return sum(int((n.get("lossless") or {}).get("replayed_udp", 0)) for n in _status()["nodes"])


def _no_duplicates_but_replayed(dups_before: int, replayed_before: int) -> None:
    """No datagram reached the server twice, but for those a lossless takeover replayed and
    counted as possible duplicates (a held datagram the old owner had forwarded before it
    stopped; issue 12 asks for them counted). With lossless off that allows none."""
    dups, replayed = _duplicates() - dups_before, _replayed_udp() - replayed_before
    assert dups <= replayed, f"{dups} datagram(s) reached the server twice; {replayed} replayed UDP"


def _duplicates() -> int:
    return sum(int(f.get("duplicates", f.get("extra", {}).get("duplicates", 0)) or 0)
               for f in _flows() if str(f.get("kind", "")).lower() == "udp"
               or "udp" in str(f.get("workload", "")))


def _watch(seconds: float) -> tuple[int, list[dict[str, Any]]]:
    """Sample the status for `seconds`; how many samples, and those with a bucket owned twice."""
    end = time.monotonic() + seconds
    samples, doubles = 0, []
    while time.monotonic() < end:
        st = _status()
        samples += 1
        twice = {b: o for b, o in _owners(st).items() if len(o) > 1}
        if twice:
            doubles.append(twice)
        time.sleep(0.05)
    return samples, doubles


def _start_ftp(sessions: int = 3) -> str:
    """Active FTP sessions through the cluster (their data connection is admitted on whichever
    node it lands, by the synced expectation); the workload's name."""
    return str(_ask(api.TrafficStart("ftp", mode="active", sessions=sessions))["name"])


def _ftp_finished(name: str, sessions: int = 3) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = wait_for(f"{sessions} FTP sessions", lambda: len(
        d := [f for f in _all_flows() if str(f.get("workload", "")).startswith(name)
              and f["health"] in ("done", "failed")]) >= sessions and d, 30)
    return done


def _healed() -> dict[str, Any]:
    """Sample the status after a heal until every node is active and every bucket owned once
    (at least 0.5 s); fail if a sample has a bucket owned twice."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        st = _status()
        twice = {b: o for b, o in _owners(st).items() if len(o) > 1}
        assert not twice, f"after heal: buckets owned twice: {twice}"
        if _owned_once(st) and time.monotonic() - t0 >= 0.5:
            return st
        time.sleep(0.05)
    raise AssertionError(f"not settled 30 s after heal: {[(n['name'], n['state']) for n in st['nodes']]}")


CELLS = [(n, link) for n in ("n1", "n2", "n3") for link in ("sync", "inside", "outside")]


@pytest.mark.parametrize(("node", "link"), CELLS, ids=[f"{n}-{k}" for n, k in CELLS])
def test_a_silent_cut_of_one_link_loses_no_flow_and_never_owns_a_bucket_twice(
        lab: dict[str, Any], node: str, link: str) -> None:
    """The matrix: every node, each of its three links cut alone (silently, carrier up)."""
    st0 = _settled()
    own0 = {n["name"]: sorted(n["buckets"]) for n in st0["nodes"]}
    _start_flows()
    dups_before, replayed_before = _duplicates(), _replayed_udp()
    t_cut = time.time()
    _cut(node, link)
    healed = False
    try:
        ftp_name = _start_ftp()
        samples, doubles = _watch(CUT_S)
        during = _status()
        cut = nodes(during)[node]
        assert samples >= 10 and not doubles, \
            f"{node} {link} cut: owned twice at {len(doubles)} samples: {doubles[:3]}"
        assert sorted(b for n in during["nodes"] for b in n["buckets"]) == list(
            range(1, during["buckets"] + 1))
        if link == "sync":
            # Nothing is taken over: the node keeps its buckets; its sync goes over a data segment.
            assert sorted(cut["buckets"]) == own0[node] and cut["state"] == "active"
            for other in nodes(during).values():
                if other["name"] != node:
                    assert other["paths"]["peers"][node]["route"] in ("inside", "outside"), other["paths"]
        else:
            # The node cannot carry its flows: degraded, its backups carry its buckets.
            assert cut["buckets"] == [] and cut["paths"]["degraded"], cut["paths"]
            assert link in str(cut["paths"]["fenced"])
        ftp = _ftp_finished(ftp_name)
        assert all(f["health"] == "done" for f in ftp), \
            f"{node} {link} cut: FTP {[f.get('detail') for f in ftp]}"
        verdict = flow_judge.judge(_flows, t_cut, 30)
        assert verdict.ok, f"{node} {link} cut: {verdict.text()}"
        _no_duplicates_but_replayed(dups_before, replayed_before)
        replayed_cut = _replayed()
        _heal()
        healed = True
        st = _healed()
        t_back = time.time()
        assert {n["name"]: sorted(n["buckets"]) for n in st["nodes"]} == own0
        assert all(v["route"] == "sync" for n in st["nodes"] for v in n["paths"]["peers"].values())
        # Every flow moves again after its bucket went back to its owner (a flow whose state did
        # not go along breaks at its next echoes, 100 ms apart).
        verdict = flow_judge.judge(_flows, t_back, 30, watch_s=0.6)
        assert verdict.ok, f"after healing the {node} {link} cut: {verdict.text()}"
        # The handback to the healed node was planned: it replays nothing (engine/binding.py).
        assert _replayed() == replayed_cut, "the handback replayed held packets"
        _no_duplicates_but_replayed(dups_before, replayed_before)
    finally:
        if not healed:  # a failed cell must not leave its cut for the next one
            _heal()


def test_a_link_down_and_a_flapping_sync_link_lose_no_flow_and_never_own_a_bucket_twice(
        lab: dict[str, Any]) -> None:
    _settled()
    _start_flows()
    t_cut = time.time()
    _sw("fault", "cut", "--node", "n1", "--link", "outside")  # carrier gone: fenced at once
    _sw("fault", "cut", "--node", "n2", "--link", "sync", "--silent", "--flap-ms", "200")
    samples, doubles = _watch(2.5)  # a dozen flaps
    n1 = nodes(_status())["n1"]
    assert n1["health"] == "degraded" and n1["buckets"] == [] and not n1["paths"]["carrier"]["outside"]
    _sw("fault", "heal")
    assert samples >= 10 and not doubles, doubles[:3]
    verdict = flow_judge.judge(_flows, t_cut, 30)
    assert verdict.ok, verdict.text()
    _settled()
    # Flapping fast (every 20 ms, about ten flaps), then healed: every node is active again
    # (a node once stayed joining for good here, sync/leader.py newer()).
    _sw("fault", "cut", "--node", "n2", "--link", "sync", "--silent", "--flap-ms", "20")
    time.sleep(0.2)
    _sw("fault", "heal")
    _settled()


def test_a_node_cut_off_on_every_path_forwards_nothing_and_the_majority_takes_over(
        lab: dict[str, Any]) -> None:
    _settled()
    _start_flows()
    t_cut = time.time()
    for link in ("sync", "inside", "outside"):
        _cut("n1", link)
    samples, doubles = _watch(1.5)  # n1 is silent everywhere: failed after 50 ms
    st = _status()
    _heal()
    assert samples >= 10 and not doubles, doubles[:3]
    n1 = nodes(st)["n1"]
    assert n1["health"] == "attention" and n1["buckets"] == [], (n1["health"], n1["buckets"])
    assert sorted(nodes(st)["n2"]["buckets"] + nodes(st)["n3"]["buckets"]) == list(range(1, 13))
    verdict = flow_judge.judge(_flows, t_cut, 30)
    assert verdict.ok, verdict.text()
    st = _settled()
    assert nodes(st)["n1"]["health"] == "ok" and nodes(st)["n1"]["buckets"] == [1, 4, 7, 10]


def test_a_partition_of_the_sync_segment_alone_takes_nothing_over(lab: dict[str, Any]) -> None:
    st0 = _settled()
    downs0 = Counter({n["name"]: n["sync"]["counters"].get("peer-down", 0) for n in st0["nodes"]})
    _ask(api.Fault("partition", groups=(("n1",), ("n2", "n3"))))
    _samples, doubles = _watch(1.0)  # 20 times the failure-detection time (50 ms)
    st = _status()
    _heal()
    assert not doubles, doubles[:3]
    assert _owned_once(st), [(n["name"], n["state"], n["buckets"]) for n in st["nodes"]]
    downs = Counter({n["name"]: n["sync"]["counters"].get("peer-down", 0) for n in st["nodes"]})
    assert downs == downs0, "a peer was declared failed across a sync-only partition"
    assert nodes(st)["n1"]["buckets"] == [1, 4, 7, 10]
    _settled()


def test_forged_replayed_and_garbage_path_frames_from_a_client_change_nothing(lab: dict[str, Any]) -> None:
    st0 = _settled()
    # A client on the inside segment sends path frames: garbage, a foreign lab's, forged and
    # replayed ones (a copy of a real probe captured there).
    _sw("exec", "c1", "--", "python3", "-c", _SENDER)
    time.sleep(0.5)
    st = _status()
    assert _owned_once(st) and [n["buckets"] for n in st["nodes"]] == [n["buckets"] for n in st0["nodes"]]
    refused = Counter[str]()
    for n in st["nodes"]:
        refused.update(n["paths"]["refused"])
    # Two garbage frames, one foreign and one forged to each of the three nodes; the replay to
    # the two that are not the probe's sender (to its sender it is its own name: forged).
    want = {"garbage": 6, "foreign-lab": 3, "forged": 3, "replayed": 2}
    assert all(refused[k] >= v for k, v in want.items()), dict(refused)


# Runs inside c1 (plain python3: no project code there): listens for one real probe on eth0,
# then sends it again (replayed), with a flipped byte (forged), under another lab tag
# (foreign-lab, HMAC left as is: the tag is checked first) and as garbage.
_SENDER = r"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88B5))
s.bind(("eth0", 0x88B5))
s.settimeout(2)
real, _ = s.recvfrom(2048)
dst = ("eth0", 0x88B5, 0, 0, bytes.fromhex("035357000001"))
bad = bytearray(real); bad[-1] ^= 1
foreign = bytearray(real); foreign[5] ^= 0xFF
for frame in (real, bytes(bad), bytes(foreign), b"SWP1garbage", b"\x00" * 60):
    s.sendto(frame, dst)
"""
