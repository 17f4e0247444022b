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

from demos import baselines
from demos import flows as flow_judge
from demos.bench.lab import node_status
from netns import api
from netns.control import ControlClient
from tests.integration.labtools import RUN_ROOT, nodes, sw, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = "splitt"
TCP_FLOWS = 50  # per client: 100 sequence-checked TCP flows
CUT_S = 1.0  # how long each cut lasts: the fence and its takeover happen within 0.2 s of it
NODES = ("n1", "n2", "n3")
FTP_SESSIONS = 12  # per cell: the chance that none crosses nodes is 1/2**12 with two nodes left
FLAP_S = 30.0  # the flapping sync link: every 200 ms for 30 s


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
    """Packets each node replayed at takeovers (lossless on), from its own status."""
    return {n: int((st.get("lossless") or {}).get("replayed", 0)) for n, st in _node_statuses().items()}


def _replayed_udp() -> int:
    """UDP datagrams the nodes replayed at takeovers (lossless on): each may be a duplicate."""
    return sum(int((st.get("lossless") or {}).get("replayed_udp", 0)) for st in _node_statuses().values())


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


def _node_statuses() -> dict[str, dict[str, Any]]:
    """Every node's own status, straight from its socket: the daemon's copy is refreshed every
    0.25 s (netns/daemon.py), so a bucket owned twice for less than that could hide from it."""
    return {n: node_status(LAB, n) for n in NODES}


def _sample() -> tuple[dict[str, dict[str, Any]], dict[int, list[str]]]:
    """Every node's own status twice, in node order then back (n1 n2 n3 n3 n2 n1): the statuses
    of the first pass, and the buckets two nodes owned at the same moment. The nodes answer
    one after another, so a handback from n1 to n3 between their answers would show a bucket
    in both sets though never owned twice; a bucket counts only when a node held it in both
    its answers, around another node's answer that has it too."""
    first = _node_statuses()
    second = {n: node_status(LAB, n) for n in reversed(NODES)}
    owners: dict[int, set[str]] = {}
    for i, x in enumerate(NODES):
        held = set(first[x]["buckets"]) & set(second[x]["buckets"])
        for y in NODES[i + 1:]:
            for b in held & (set(first[y]["buckets"]) | set(second[y]["buckets"])):
                owners.setdefault(int(b), set()).update((x, y))
    return first, {b: sorted(o) for b, o in sorted(owners.items())}


def _watch(seconds: float) -> tuple[int, list[dict[int, list[str]]]]:
    """Sample every node's own status for `seconds`; how many samples, and those with a bucket
    owned twice. Fails if a node's sample repeats an earlier one (its uptime, to the ms): each
    sample must be fresh, not a cached copy."""
    end = time.monotonic() + seconds
    samples, doubles = 0, []
    uptimes: dict[str, list[float]] = {n: [] for n in NODES}
    while time.monotonic() < end:
        sts, twice = _sample()
        samples += 1
        for n, st in sts.items():
            uptimes[n].append(float(st["uptime_s"]))
        if twice:
            doubles.append(twice)
        time.sleep(0.02)
    for n, ups in uptimes.items():
        assert len(set(ups)) == len(ups), f"{n} answered the same status twice: not a fresh sample"
    return samples, doubles


def _start_ftp(sessions: int = FTP_SESSIONS) -> str:
    """Active FTP sessions through the cluster, one every 50 ms (their data connection is
    admitted on whichever node it lands, by the synced expectation); the workload's name."""
    return str(_ask(api.TrafficStart("ftp", mode="active", sessions=sessions, interval_ms=50))["name"])


def _ftp_finished(name: str, sessions: int = FTP_SESSIONS) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = wait_for(f"{sessions} FTP sessions", lambda: len(
        d := [f for f in _all_flows() if str(f.get("workload", "")).startswith(name)
              and f["health"] in ("done", "failed")]) >= sessions and d, 30)
    return done


def _events_since(t: float) -> list[str]:
    """The nodes' takeover, handover, degraded and peer events since `t`, for a failure's text."""
    evs = _ask({"cmd": "snapshot", "since": t, "max_events": 200}).get("events", [])
    kinds = ("takeover", "handover", "degraded", "peer-down", "peer-up", "fault", "rejoin")
    return [f"{e['t'] - t:+.3f} {e.get('node', '-')} {e['kind']}: {e.get('text', '')}"
            for e in evs if e.get("kind") in kinds]


def _carriers(pairs: list[list[str]]) -> list[set[str]]:
    """For each (client, server) endpoint pair, the nodes whose own table holds that connection
    now, asked of each node (`carries`, one key lookup per pair; a closed connection stays
    in the table 10 s)."""
    out: list[set[str]] = [set() for _ in pairs]
    for n in NODES:
        reply = baselines.node_request(RUN_ROOT / LAB / "nodes" / f"{n}.sock",
                                       {"cmd": "carries", "pairs": pairs})
        for i in reply.get("carried", []):
            out[int(i)].add(n)
    return out


def _crossed(sessions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The sessions whose control connection one node carries and whose data connection
    another: (control node, data node) each."""
    pairs = [[str(f["src"]), str(f["dst"])] for f in sessions] + [
        [str(f["data_client"]), str(f["data_server"])] for f in sessions]
    where = _carriers(pairs)
    ctl, data = where[:len(sessions)], where[len(sessions):]
    return [(next(iter(c)), next(iter(d))) for c, d in zip(ctl, data, strict=True)
            if len(c) == 1 and len(d) == 1 and c != d]


def _healed() -> dict[str, Any]:
    """Sample every node's own status after a heal until every node is active and every bucket
    owned once (at least 0.5 s); fail if a sample has a bucket owned twice or is not fresh.
    The daemon's status once that holds."""
    t0 = time.monotonic()
    last: dict[str, float] = {}
    while time.monotonic() - t0 < 30:
        sts, twice = _sample()
        assert not twice, f"after heal: buckets owned twice: {twice}"
        for n, st in sts.items():
            assert float(st["uptime_s"]) != last.get(n), f"{n} answered the same status twice"
            last[n] = float(st["uptime_s"])
        if time.monotonic() - t0 >= 0.5 and all(st["state"] == "active" for st in sts.values()) and sorted(
                b for st in sts.values() for b in st["buckets"]) == list(range(1, 13)):
            return _settled()
        time.sleep(0.02)
    raise AssertionError(f"not settled 30 s after heal: {[(n, st['state']) for n, st in sts.items()]}")


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
        crossed = _crossed(ftp)
        assert crossed, f"{node} {link} cut: no FTP session had its data connection on another node"
        verdict = flow_judge.judge(_flows, t_cut, 30)
        assert verdict.ok, f"{node} {link} cut: {verdict.text()}"
        _no_duplicates_but_replayed(dups_before, replayed_before)
        replayed_cut = _replayed()
        t_heal = time.time()
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
        assert _replayed() == replayed_cut, \
            f"the handback replayed held packets: {_events_since(t_heal)}"
        _no_duplicates_but_replayed(dups_before, replayed_before)
    finally:
        if not healed:  # a failed cell must not leave its cut for the next one
            _heal()


def test_a_link_down_and_a_flapping_sync_link_lose_no_flow_and_never_own_a_bucket_twice(
        lab: dict[str, Any]) -> None:
    _settled()
    _start_flows()
    t_cut = time.time()
    try:
        _sw("fault", "cut", "--node", "n1", "--link", "outside")  # carrier gone: fenced at once
        _sw("fault", "cut", "--node", "n2", "--link", "sync", "--silent", "--flap-ms", "200")
        samples, doubles = _watch(2.5)  # a dozen flaps
        n1 = nodes(_status())["n1"]
        assert n1["health"] == "degraded" and n1["buckets"] == [] and not n1["paths"]["carrier"]["outside"]
    finally:
        _sw("fault", "heal")  # a failed test must not leave its cut for the next one
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
    try:
        for link in ("sync", "inside", "outside"):
            _cut("n1", link)
        samples, doubles = _watch(1.5)  # n1 is silent everywhere: failed after 50 ms
        st = _status()
    finally:
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
    try:
        _ask(api.Fault("partition", groups=(("n1",), ("n2", "n3"))))
        _samples, doubles = _watch(1.0)  # 20 times the failure-detection time (50 ms)
        st = _status()
    finally:
        _heal()
    assert not doubles, doubles[:3]
    assert _owned_once(st), [(n["name"], n["state"], n["buckets"]) for n in st["nodes"]]
    downs = Counter({n["name"]: n["sync"]["counters"].get("peer-down", 0) for n in st["nodes"]})
    assert downs == downs0, "a peer was declared failed across a sync-only partition"
    assert nodes(st)["n1"]["buckets"] == [1, 4, 7, 10]
    _settled()


def _untouched(sts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What frames from a client must leave alone, per node: its buckets, state, health, sync
    routes, fence counters, and the sync datagrams its agent dropped (by reason)."""
    return {n: (sorted(st["buckets"]), st["state"], st["health"],
                {peer: v["route"] for peer, v in st["paths"]["peers"].items()},
                int(st["paths"]["counters"].get("fence", 0)), int(st["sync"]["counters"].get("fenced", 0)),
                st["sync"].get("bad_frames")) for n, st in sts.items()}


def _refused(sts: dict[str, dict[str, Any]]) -> Counter[str]:
    out = Counter[str]()
    for st in sts.values():
        out.update({k: int(v) for k, v in st["paths"]["refused"].items()})
    return out


def _frames_from_c1(kind: int) -> Counter[str]:
    """c1 (on the inside segment) captures one real path frame of `kind` there and sends it
    again, forged, under another lab's tag and as garbage: the frames the nodes refused
    meanwhile, by kind (a difference of their own statuses), after checking that nothing
    else changed."""
    before = _node_statuses()
    _sw("exec", "c1", "--", "python3", "-c", _SENDER.replace("KIND", str(kind)))
    time.sleep(0.5)
    after = _node_statuses()
    assert _untouched(after) == _untouched(before)
    return _refused(after) - _refused(before)


# Two garbage frames, one foreign and one forged to each of the three nodes; the replay is
# `replayed` at the two that are not its sender, and `forged` at its sender (its own name).
FROM_C1 = {"garbage": 6, "foreign-lab": 3, "forged": 4, "replayed": 2}


def test_forged_replayed_and_garbage_path_frames_from_a_client_change_nothing(lab: dict[str, Any]) -> None:
    st0 = _settled()
    refused = _frames_from_c1(1)  # a probe
    st = _status()
    assert _owned_once(st) and [n["buckets"] for n in st["nodes"]] == [n["buckets"] for n in st0["nodes"]]
    assert dict(refused) == FROM_C1


def test_a_sync_record_frame_replayed_or_forged_by_a_client_delivers_nothing(lab: dict[str, Any]) -> None:
    """n2's sync link cut silently: its sync datagrams go as record frames on the inside
    segment, where c1 captures one and sends it again."""
    _settled()
    _cut("n2", "sync")
    try:
        wait_for("n2's sync routed on inside", lambda: all(
            st["paths"]["peers"][p]["route"] == "inside" for n, st in _node_statuses().items()
            for p in st["paths"]["peers"] if "n2" in (n, p)), 10)
        refused = _frames_from_c1(2)  # a record
    finally:
        _heal()
    assert dict(refused) == FROM_C1
    _healed()


def test_a_sync_link_flapping_every_200_ms_for_30_s_loses_no_flow_and_never_owns_a_bucket_twice(
        lab: dict[str, Any]) -> None:
    _settled()
    _start_flows()
    dups_before, replayed_before = _duplicates(), _replayed_udp()
    switches0 = int(node_status(LAB, "n1")["paths"]["counters"].get("route-switch", 0))
    t_cut = time.time()
    _ask(api.Fault("cut", node="n2", link="sync", silent=True, flap_ms=200))
    try:
        samples, doubles = _watch(FLAP_S)
        switches = int(node_status(LAB, "n1")["paths"]["counters"].get("route-switch", 0)) - switches0
    finally:
        _heal()
    assert samples >= 100 and not doubles, f"owned twice at {len(doubles)} samples: {doubles[:3]}"
    # 75 cuts: n1 switches its route to n2 away and back at each (a flap it never saw fails here).
    assert switches >= 50, f"n1 switched its route to n2 {switches} times in {FLAP_S:.0f} s of flapping"
    verdict = flow_judge.judge(_flows, t_cut, 30)
    assert verdict.ok, verdict.text()
    _no_duplicates_but_replayed(dups_before, replayed_before)
    _healed()


# Runs inside c1 (plain python3: no project code there): listens on eth0 for one real path
# frame of kind KIND (1 probe, 2 record), then sends it again (replayed), with a flipped byte
# (forged), under another lab tag (foreign-lab, HMAC left as is: the tag is checked first)
# and as garbage.
_SENDER = r"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88B5))
s.bind(("eth0", 0x88B5))
s.settimeout(3)
real = b""
while not (real[:4] == b"SWP1" and real[4] == KIND):
    real, _ = s.recvfrom(2048)
dst = ("eth0", 0x88B5, 0, 0, bytes.fromhex("035357000001"))
bad = bytearray(real); bad[-1] ^= 1
foreign = bytearray(real); foreign[5] ^= 0xFF
for frame in (real, bytes(bad), bytes(foreign), b"SWP1garbage", b"\x00" * 60):
    s.sendto(frame, dst)
"""
