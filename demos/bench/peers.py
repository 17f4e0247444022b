"""`syncwall bench peers`: the classic Linux HA firewall (keepalived + conntrackd FTFW) measured beside ours.

The peer cluster (demos.bench.peerlab) is built, measured and removed first; then our own
bench lab runs the failover, sync-latency and connection-rate measurements, so the two
never compete for the CPUs. Both sides' figures come from the same command, the ratios
are syncwall/peer, run by run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench import peerlab
from demos.bench.conn_rate import CONN_PORT_LAB, CONN_WORKERS, _parse_conn_rate
from demos.bench.failover import bench_failover
from demos.bench.lab import Progress, bench_lab, host_ns, in_host, lab_server_ip, run_in, set_policy
from demos.bench.peerlab import NODES, SERVER_IP, PeerLab
from demos.bench.stats import percentile, summarize
from demos.bench.sync_latency import bench_sync_latency
from netns.workloads.health import read_health

REPO = Path(__file__).resolve().parents[2]
FLOW_PORT = 5100
LATENCY_PORT = 5101
RATE_PORT = 5102
TAKEOVER_WAIT_S = 10.0
SURVIVE_S = 3.0
POLL_S = 0.01


def _other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def _wait(what: str, pred: Any, timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every_s)
    raise BenchError(f"peer cluster: timed out after {timeout_s:g} s waiting for {what}")


def _flows(health: Path) -> list[dict[str, Any]]:
    try:
        return list(read_health(health).get("flows", []))
    except Exception:  # not written yet, or mid-rename: no flows seen yet
        return []


def _synced(lab: PeerLab, node: str, port: int) -> int:
    """Established TCP states to `port` in a node's kernel table (the backup's come from conntrackd)."""
    out = baselines.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns(node),
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "--state",
            "ESTABLISHED",
        ],
        check=False,
        timeout_s=5,
    ).stdout
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


def _takeover_run(
    lab: PeerLab, mode: str, i: int, n_flows: int, interval_ms: int, progress: Progress
) -> dict[str, Any]:
    """One failover of the master (kill -9 of its daemons, or its links cut) under fresh flows."""
    master = _wait("a VRRP master", lab.holder, 10)
    backup = _other(master)
    health = lab.run_dir / f"flows-{mode}-{i}.json"
    client = lab.popen(
        "c1",
        [
            sys.executable,
            "-m",
            "netns.workloads.tcpflows",
            "client",
            "--server",
            SERVER_IP,
            "--port",
            str(FLOW_PORT),
            "--flows",
            str(n_flows),
            "--interval-ms",
            str(interval_ms),
            "--stagger-ms",
            "5",
            "--health-file",
            str(health),
            "--name",
            f"pf{i}",
            "--health-interval-s",
            "0.02",
        ],
        "tcpflows",
        lab.run_dir / "tcpflows.log",
        cwd=REPO,
    )
    try:
        _wait(
            f"{n_flows} healthy flows",
            lambda: (
                sum(f["health"] == "healthy" and f.get("records_echoed", 0) > 0 for f in _flows(health))
                == n_flows
            ),
            20,
        )
        _wait(f"{n_flows} states synced to {backup}", lambda: _synced(lab, backup, FLOW_PORT) >= n_flows, 10)
        base = lab.forwarded(backup)
        killed_at = time.time()
        if mode == "kill":
            lab.kill9(master)
        else:
            lab.links(master, up=False)
        first_fwd: float | None = None
        resumed: dict[str, float] = {}
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while time.monotonic() < deadline and (first_fwd is None or len(resumed) < n_flows):
            now = time.time()
            if first_fwd is None and lab.forwarded(backup) > base:
                first_fwd = now
            if first_fwd is not None:
                for f in _flows(health):
                    if f["name"] not in resumed and float(f["last_progress"]) > first_fwd:
                        resumed[f["name"]] = float(f["last_progress"])
            time.sleep(POLL_S)
        settle_end = time.monotonic() + SURVIVE_S
        _wait_until_time(settle_end)
        final = {f["name"]: f for f in _flows(health)}
        survived = [
            n
            for n, f in final.items()
            if f["health"] in ("healthy", "stalled")
            and float(f["last_progress"]) > (first_fwd or killed_at)
            and n in resumed
        ]
        pauses = [float(f.get("longest_pause_ms", 0)) for f in final.values()]
    finally:
        lab.forget(client)
    takeover_ms = (first_fwd - killed_at) * 1000 if first_fwd else None
    all_resumed_ms = (
        (max(resumed.values()) - killed_at) * 1000 if first_fwd and len(resumed) == n_flows else None
    )
    progress(
        f"peer {mode} run {i + 1}: {master} -> {backup}: first packet through {backup} "
        f"{_ms(takeover_ms)}, all flows moving again {_ms(all_resumed_ms)}, "
        f"{len(survived)}/{n_flows} survived, longest pause {max(pauses, default=0):.0f} ms"
    )
    _restore(lab, master, backup, mode)
    return {
        "takeover_ms": takeover_ms,
        "all_resumed_ms": all_resumed_ms,
        "survived": len(survived),
        "total": n_flows,
        "pauses": pauses,
        "from": master,
        "to": backup,
    }


def _wait_until_time(end: float) -> None:
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def _ms(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f} ms"


def _restore(lab: PeerLab, old: str, new: str, mode: str) -> None:
    """Bring the failed node back as the backup: the survivor stays master (nopreempt)."""
    if mode == "kill":
        lab.drop_vips(old)
        lab.start_conntrackd(old)
        lab.start_keepalived(old)
    else:
        lab.links(old, up=True)
    _wait(
        f"{new} master and {old} back as backup",
        lambda: lab.holder() == new and _last_transition(lab, old) == "backup",
        15,
    )


def _last_transition(lab: PeerLab, node: str) -> str:
    try:
        lines = (lab.run_dir / node / "transitions.log").read_text().split()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _events(path: Path) -> dict[str, float]:
    """sport -> time of the first NEW event, from `conntrack -E -o timestamp` lines."""
    out: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("[") or "sport=" not in line:
            continue
        try:
            ts = float(line[1 : line.index("]")])
        except ValueError:
            continue
        sport = line.split("sport=", 1)[1].split()[0]
        out.setdefault(sport, ts)
    return out


def _peer_sync_latency(lab: PeerLab, exe: Path, progress: Progress, i: int) -> list[float]:
    """NEW event on the master's kernel table -> the same state created on the backup by conntrackd."""
    master = _wait("a VRRP master", lab.holder, 10)
    backup = _other(master)
    files = {n: lab.run_dir / f"events-{n}-{i}.log" for n in NODES}
    watchers = [
        lab.popen(
            n,
            [
                "stdbuf",
                "-oL",
                "conntrack",
                "-E",
                "-e",
                "NEW",
                "-p",
                "tcp",
                "--dport",
                str(LATENCY_PORT),
                "-o",
                "timestamp",
            ],
            "conntrack-events",
            files[n],
        )
        for n in NODES
    ]
    try:
        time.sleep(0.3)  # the event listeners subscribe; they print nothing until the first event
        out = baselines.run(
            ["ip", "netns", "exec", lab.ns("c1"), str(exe), "client", SERVER_IP, str(LATENCY_PORT), "1", "1"],
            timeout_s=30,
        )
        _parse_conn_rate(out.stdout)
        time.sleep(0.5)  # the last states reach the backup
    finally:
        for w in watchers:
            lab.forget(w)
    sent, got = _events(files[master]), _events(files[backup])
    lat = [(got[k] - sent[k]) * 1000 for k in sent if k in got]
    progress(
        f"peer sync latency run {i + 1}: {len(lat)}/{len(sent)} new states seen on {backup}, "
        f"p50 {percentile(lat, 50) if lat else float('nan'):.2f} ms"
    )
    return lat


def _conn_rate(lab: PeerLab, exe: Path, duration_s: float) -> float:
    out = baselines.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("c1"),
            str(exe),
            "client",
            SERVER_IP,
            str(RATE_PORT),
            f"{duration_s:g}",
            str(CONN_WORKERS),
        ],
        timeout_s=duration_s + 30,
    )
    return _parse_conn_rate(out.stdout)[0]


def measure_peer(runs: int, exe: Path, progress: Progress) -> dict[str, Any]:
    n_flows = int(os.environ.get("SWBENCH_PEER_FLOWS", "20"))
    interval_ms = int(os.environ.get("SWBENCH_PEER_INTERVAL_MS", "20"))
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    res: dict[str, Any] = {
        "takeover": {},
        "rate": {"sync_on": [], "sync_off": []},
        "latency_p50": [],
        "latency_p99": [],
        "latency_seen": [],
        "latency_lost": [],
    }
    with PeerLab() as lab:
        spaces = ", ".join(lab.record.namespace_names() if lab.record else [])
        progress(f"peer cluster {lab.name}: namespaces {spaces}")
        for n in NODES:
            lab.start_conntrackd(n)
        for n in NODES:
            lab.start_keepalived(n)
        for port in (FLOW_PORT,):
            lab.others.append(
                lab.popen(
                    "s1",
                    [
                        sys.executable,
                        "-m",
                        "netns.workloads.tcpflows",
                        "server",
                        "--bind",
                        SERVER_IP,
                        "--port",
                        str(port),
                    ],
                    "tcpflows-server",
                    lab.run_dir / "server.log",
                    cwd=REPO,
                )
            )
        for port in (LATENCY_PORT, RATE_PORT):
            lab.others.append(lab.popen("s1", [str(exe), "server", str(port)], "conn-server"))
        for port in (FLOW_PORT, LATENCY_PORT, RATE_PORT):
            baselines.wait_port(lab.ns("s1"), port)
        master = _wait("a VRRP master", lab.holder, 10)
        progress(f"peer cluster up: {master} is the VRRP master (advert_int {peerlab.ADVERT_INT_S:g} s)")
        for i in range(runs):
            lat = _peer_sync_latency(lab, exe, progress, i)
            if lat:
                res["latency_p50"].append(percentile(lat, 50))
                res["latency_p99"].append(percentile(lat, 99))
            res["latency_seen"].append(len(lat))
        for i in range(runs):
            on = _conn_rate(lab, exe, duration_s)
            for n in NODES:
                lab.stop_daemon(n, "conntrackd")
            off = _conn_rate(lab, exe, duration_s)
            for n in NODES:
                lab.start_conntrackd(n)
            res["rate"]["sync_on"].append(on)
            res["rate"]["sync_off"].append(off)
            progress(f"peer conn-rate run {i + 1}: conntrackd on {on:,.0f}/s, off {off:,.0f}/s")
        for mode in ("kill", "cut"):
            res["takeover"][mode] = [
                _takeover_run(lab, mode, i, n_flows, interval_ms, progress) for i in range(runs)
            ]
    res["flows"] = n_flows
    res["interval_ms"] = interval_ms
    return res


def _ours_conn_rate(
    name: str, exe: Path, runs: int, duration_s: float, progress: Progress
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"sync_on": [], "sync_off": []}
    ip = lab_server_ip(name)
    server = subprocess.Popen(
        in_host(name, "s1", [str(exe), "server", str(CONN_PORT_LAB)]), stdout=subprocess.DEVNULL
    )
    try:
        baselines.wait_port(host_ns(name, "s1"), CONN_PORT_LAB)
        for i in range(runs):
            for mode, policy, interval in (("sync_on", "hybrid", 1000), ("sync_off", "periodic", 60000)):
                set_policy(name, policy, interval)
                time.sleep(0.5)  # every node has applied the policy
                out = run_in(
                    name,
                    "c1",
                    [str(exe), "client", ip, str(CONN_PORT_LAB), f"{duration_s:g}", str(CONN_WORKERS)],
                    timeout_s=duration_s + 30,
                )
                rates[mode].append(_parse_conn_rate(out.stdout)[0])
            progress(
                f"syncwall conn-rate run {i + 1}: sync on {rates['sync_on'][-1]:,.0f}/s, "
                f"off {rates['sync_off'][-1]:,.0f}/s"
            )
        set_policy(name, "hybrid", 1000)
    finally:
        baselines.stop_process(server)
    return rates


def _cost(on: list[float], off: list[float]) -> list[float]:
    return [1 - a / b for a, b in zip(on, off, strict=False) if b]


def _pair_ratio(a: list[float], b: list[float]) -> dict[str, Any]:
    return summarize([x / y for x, y in zip(a, b, strict=False) if y], 3)


@contextlib.contextmanager
def _same_flows(n_flows: int) -> Iterator[None]:
    """Our failover bench under as many flows as the peer's (SWBENCH_FLOWS, unless the caller set it)."""
    before = os.environ.get("SWBENCH_FLOWS")
    os.environ.setdefault("SWBENCH_FLOWS", str(n_flows))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SWBENCH_FLOWS", None)


def bench_peers(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    gone = peerlab.missing_tools()
    if gone:
        raise BenchError(
            f"the peer cluster needs {', '.join(gone)}: ./scripts/bootstrap.sh installs the Debian "
            "packages keepalived conntrackd conntrack without starting their services"
        )
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        exe, why = baselines.build_c(Path(tmp), baselines.CNFQ_DIR / "conn_rate.c", [])
        if exe is None:
            raise BenchError(f"the C connection client could not be built: {why}")
        peer = measure_peer(runs, exe, progress)
        with bench_lab(lab, progress) as name, _same_flows(peer["flows"]):
            ours_fail = bench_failover(runs, name, progress)
            ours_sync = bench_sync_latency(runs, name, progress)
            ours_rate = _ours_conn_rate(name, exe, runs, duration_s, progress)
    return _report(peer, ours_fail, ours_sync, ours_rate)


def _report(
    peer: dict[str, Any],
    ours_fail: dict[str, Any],
    ours_sync: dict[str, Any],
    ours_rate: dict[str, list[float]],
) -> dict[str, Any]:
    def col(mode: str, key: str) -> list[float]:
        return [float(r[key]) for r in peer["takeover"][mode] if r[key] is not None]

    peer_doc: dict[str, Any] = {}
    for mode in ("kill", "cut"):
        rs = peer["takeover"][mode]
        peer_doc[f"takeover_{mode}"] = {
            "first_packet_through_backup_ms": summarize(col(mode, "takeover_ms"), 1),
            "all_flows_moving_ms": summarize(col(mode, "all_resumed_ms"), 1),
            "flows_total": summarize([r["total"] for r in rs], 0),
            "flows_survived": summarize([r["survived"] for r in rs], 0),
            "longest_pause_per_flow_ms": summarize([p for r in rs for p in r["pauses"]], 1),
            "runs": [
                {k: r[k] for k in ("from", "to", "takeover_ms", "all_resumed_ms", "survived")} for r in rs
            ],
        }
    peer_doc["sync_latency"] = {
        "p50_ms": summarize(peer["latency_p50"], 3),
        "p99_ms": summarize(peer["latency_p99"], 3),
        "states_seen": summarize(peer["latency_seen"], 0),
    }
    on, off = peer["rate"]["sync_on"], peer["rate"]["sync_off"]
    peer_doc["conn_rate"] = {
        "conntrackd_on": summarize(on, 0),
        "conntrackd_off": summarize(off, 0),
        "sync_cost_fraction": summarize(_cost(on, off), 3),
    }
    ours_takeover = ours_fail["takeover_ms"]["samples"]
    ours_one_way = ours_sync.get("one_way", {}).get("p50_ms", {}).get("samples", [])
    ratios = {
        "takeover_kill_ms": _pair_ratio(ours_takeover, col("kill", "takeover_ms")),
        "takeover_vs_peer_cut_ms": _pair_ratio(ours_takeover, col("cut", "takeover_ms")),
        "sync_latency_p50_ms": _pair_ratio(ours_one_way, peer["latency_p50"]),
        "conn_rate_sync_on": _pair_ratio(ours_rate["sync_on"], on),
    }
    return {
        "what": "the classic Linux HA firewall (keepalived VRRP active/backup + conntrackd FTFW over kernel "
        "conntrack, 2 nodes) beside syncwall, in the same command; ratios are syncwall/peer, run by run",
        "peer": peer_doc,
        "syncwall": {
            "failover": ours_fail,
            "sync_latency": ours_sync,
            "conn_rate": {
                "sync_on": summarize(ours_rate["sync_on"], 0),
                "sync_off": summarize(ours_rate["sync_off"], 0),
                "sync_cost_fraction": summarize(_cost(ours_rate["sync_on"], ours_rate["sync_off"]), 3),
            },
        },
        "ratios": ratios,
        "peer_settings": {
            "keepalived": f"VRRPv3, advert_int {peerlab.ADVERT_INT_S:g} s (master down after "
            "3 adverts + skew), nopreempt, one sync group for inside and outside, "
            "gratuitous ARPs at once on becoming master",
            "conntrackd": "FTFW over unicast UDP on a dedicated sync segment, DisableExternalCache "
            "on (states go straight into the backup's kernel table: nothing to "
            "commit at takeover), ACKWindowSize 300, ResendQueueSize 131072, "
            "StartupResync on",
            "flows": f"{peer['flows']} tcpflows flows, a record every {peer['interval_ms']} ms",
            "kernel": "conntrack on, nf_conntrack_tcp_loose = 0, FORWARD policy DROP with "
            "ESTABLISHED,RELATED accepted",
        },
        "notes": [
            "peer takeover = kill (or link cut) -> the first packet the backup forwards from inside to "
            "outside (its FORWARD counter, polled every ~10 ms); all_flows_moving = -> every flow's data "
            "moved again after that (health file written every 20 ms)",
            "kill -9 of keepalived and conntrackd does not stop the master's kernel from forwarding: the "
            "flows keep moving through it (it still holds the virtual addresses) until the backup claims "
            "them with gratuitous ARPs; the link cut is the peer's equivalent of a dead node",
            "syncwall's takeover = kill request -> a backup accepting the dead node's buckets (bench "
            "failover); its sync latency ratio uses the one-way p50 of bench sync-latency",
            "peer sync latency = NEW event in the master's kernel table -> the NEW event of the state "
            "conntrackd injected into the backup's table (conntrack -E timestamps, one machine clock), "
            "connections made by the C conn_rate client for 1 s",
            "sync off for the peer = conntrackd stopped on both nodes (kernel conntrack and keepalived still "
            "on); for syncwall = the periodic policy every 60 s",
        ],
    }
