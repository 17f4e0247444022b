"""`syncwall bench failover`: kill -9 of a node under long-lived TCP flows: detect, take over, survive;
with lossless takeover off and on side by side (the pauses flows see, the clients' TCP retransmissions)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from demos import baselines
from demos import flows as flow_judge
from demos.baselines import BenchError
from demos.bench.lab import (
    IPERF_PORT,
    Progress,
    bench_lab,
    flows,
    host_ns,
    in_host,
    iperf3,
    iperf3_argv,
    iperf3_server,
    lab_nodes,
    lab_request,
    node_status,
    run_in,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import percentile, summarize
from netns.capture import CaptureResult, Target, capture
from netns.lab import load_lab_of
from sync.decode import read_capture

SURVIVE_WAIT_S = 8.0
TAKEOVER_WAIT_S = 10.0
REVIVE_SETTLE_S = 2.0  # the revived node resyncs and takes its buckets back before the next kill


def _detected_at(lab: str, victim: str, since: float) -> float | None:
    """When a node first noted the victim's heartbeats missing (its 'peer-down' timeline event)."""
    snap = lab_request(lab, {"cmd": "snapshot", "since": since, "max_events": 100000})
    times = [float(e["t"]) for e in snap.get("events", []) if e.get("kind") == "peer-down"
             and e.get("peer") == victim and float(e.get("t", 0)) >= since]
    return min(times) if times else None


CLIENTS = ("c1",)  # where the bench's flows start by default (the retransmissions are counted there)


def bench_client() -> str:
    """SWBENCH_CLIENT: the inside host the TCP flows start on (c1, untranslated; c2, source-NATed)."""
    client = os.environ.get("SWBENCH_CLIENT", CLIENTS[0])
    if client not in ("c1", "c2"):
        raise BenchError(f"SWBENCH_CLIENT must be c1 or c2 (an inside host), not {client!r}")
    return client
SERVERS = ("s1",)
MODES = (("lossless_off", False), ("lossless_on", True))


def snmp(lab: str, host: str, proto: str, counter: str) -> int:
    """One counter of a host namespace's /proc/net/snmp (it is per namespace)."""
    lines = [ln.split() for ln in run_in(lab, host, ["cat", "/proc/net/snmp"], 10).stdout.splitlines()
             if ln.startswith(f"{proto}:")]
    if len(lines) < 2 or counter not in lines[0]:
        raise BenchError(f"no {proto} {counter} counter in {host}'s /proc/net/snmp")
    return int(lines[1][lines[0].index(counter)])


def retrans_segs(lab: str, host: str) -> int:
    """RetransSegs of the TCP MIB in a host's namespace."""
    return snmp(lab, host, "Tcp", "RetransSegs")


def _retrans(lab: str, hosts: tuple[str, ...]) -> int:
    return sum(retrans_segs(lab, h) for h in hosts)


def revive(name: str, victim: str) -> None:
    """Bring the victim back and let it take its buckets back before the next failure."""
    lab_request(name, {"cmd": "revive", "node": victim}, 30)
    wait_until(f"{victim} active again", lambda: (n := lab_nodes(name)[victim])["state"] == "active"
               and n["buckets"], 30, 0.1)
    time.sleep(REVIVE_SETTLE_S)


def took_over(name: str, victim: str, since: float) -> dict[str, Any] | None:
    """The adopter's last takeover when it came after `since` (wall clock), with its name."""
    for n in lab_nodes(name).values():
        lt = n.get("last_takeover")
        if n["name"] != victim and lt and float(lt["t"]) > since:
            return {**lt, "node": n["name"]}
    return None


def mark_pauses(name: str, workload: str) -> int:
    """SIGUSR1 to a tcpflows client: every flow closes its pause window (netns/workloads/tcpflows.py).
    Returns the pid signalled."""
    pid = int(lab_request(name, {"cmd": "status"})["workloads"][workload]["pid"])
    os.kill(pid, signal.SIGUSR1)
    return pid


def _closed_windows(fetch: Callable[[], list[dict[str, Any]]], names: set[str],
                    n: int) -> list[dict[str, Any]] | None:
    """The flows of `names` once each reports at least `n` closed pause windows."""
    fl = [f for f in fetch() if f["name"] in names]
    return fl if fl and all(len(f.get("pause_windows") or []) >= n for f in fl) else None


ADOPTER_STEPS = ("peer-down", "view", "takeover", "buckets")


def adopter_steps(lab: str, node: str, since: float) -> dict[str, float]:
    """ms from `since` (the kill) to the adopter's first peer-down, view, takeover (buckets adopted,
    held packets replayed) and buckets (iptables re-pointed) events after it."""
    snap = lab_request(lab, {"cmd": "snapshot", "since": since, "max_events": 100000})
    out: dict[str, float] = {}
    for e in snap.get("events", []):
        k = e.get("kind")
        if e.get("node") == node and k in ADOPTER_STEPS and k not in out and float(e.get("t", 0)) >= since:
            out[str(k)] = round((float(e["t"]) - since) * 1000, 1)
    return out


def _pauses(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "flows": 0}
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values),
            "flows": len(values)}


def bench_failover(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    crash_runs = int(os.environ.get("SWBENCH_CRASH_RUNS", str(runs)))
    udp_runs = int(os.environ.get("SWBENCH_UDP_RUNS", str(runs)))
    with bench_lab(lab, progress) as name:
        was_on = bool(lab_request(name, {"cmd": "status"}).get("lossless", False))
        for mode, on in MODES:
            lab_request(name, {"cmd": "lossless", "on": on})
            progress(f"{mode}: {runs} kill(s), {crash_runs} crash(es), {udp_runs} UDP kill(s)")
            gc0 = _gc(name)
            modes[mode] = _bench_mode(name, runs, progress, mode)
            modes[mode]["survivors_gc_during_kills"] = _gc_delta(gc0, _gc(name))
            if crash_runs:
                modes[mode]["crash"] = _bench_mode(name, crash_runs, progress, mode, "crash")
            if udp_runs:
                modes[mode]["udp"] = udp_across_kill(name, udp_runs, progress, mode)
        lab_request(name, {"cmd": "lossless", "on": was_on})  # as the lab was
    both = modes["lossless_on"]

    def each(key: str, sub: str | None = None) -> dict[str, Any]:
        return {m: (modes[m].get(sub, {}) if sub else modes[m]).get(key) for m, _ in MODES}

    return {
        "what": "kill -9 (and crash: every link cut, the process left running) of a node under "
                "long-lived TCP flows, lossless takeover off then on (each mode its own fresh flows "
                "per run); detect = kill request -> the first peer-down event for it; takeover = kill "
                "request -> a backup accepting the dead node's buckets (state promoted first; with "
                "lossless on its held packets replayed at that moment); a flow survived when it "
                "carried data again after the takeover and never broke; pause = a flow's longest "
                "wait for an echo (ms), over the run (from the flows' start), and in the kill's window (from "
                "just before the kill to the end of the judging) beside a quiet window as long just before "
                "it (SIGUSR1 to the flows' client closes each window); retransmissions = RetransSegs "
                "of the clients' (and servers') namespaces, from just before the kill to the end of "
                "the judging, beside a baseline of the same length without a kill; udp = iperf3 -u datagrams "
                "across a kill, counted at the server's interface by iperf3's datagram numbers: missing "
                "(never arrived) and twice (a replay of one the dead node had forwarded); iperf3's own "
                "'lost' is shown beside (it takes a loss back for each out-of-order datagram, so "
                "duplicates hide losses)",
        **{k: both[k] for k in ("detect_ms", "takeover_ms", "flows_total", "flows_survived",
                                "victim_flows", "victim_flows_survived", "takeovers",
                                "runs_without_takeover")},
        "kill_takeover_ms": each("takeover_ms"), "crash_takeover_ms": each("takeover_ms", "crash"),
        "pause_ms": each("pause_ms"),
        # The same flows' longest pause from just before the kill to the end of its judging, and
        # over a quiet interval as long just before (no kill): what the kill adds to the host's own.
        "pause_kill_window_ms": each("pause_kill_window_ms"),
        "pause_kill_window_victim_flows_ms": each("pause_kill_window_victim_flows_ms"),
        "pause_quiet_window_ms": each("pause_quiet_window_ms"),
        "client_retrans_by_kill": each("client_retrans_by_kill"),
        "udp_missing_at_server": each("missing_at_server", "udp"),
        "udp_duplicates_at_server": each("duplicates_at_server", "udp"),
        "udp_server_socket_drops": each("server_socket_drops", "udp"),
        "udp_lost_by_kill": each("lost_by_kill", "udp"), "udp_replayed": each("replayed_udp", "udp"),
        "modes": modes,
        "targets": {"kill_takeover_ms": "median <= 20", "crash_takeover_ms": "median <= 150",
                    "flows_survived": "= flows_total", "lossless_on.pause_kill_window_ms": "p99 <= 50",
                    "lossless_on.client_retrans_by_kill": "0 (delta minus baseline)",
                    "lossless_on.udp_missing_at_server": "0"},
    }


UDP_STREAMS = int(os.environ.get("SWBENCH_UDP_STREAMS", "4"))
UDP_MBPS = int(os.environ.get("SWBENCH_UDP_MBPS", "20"))  # per stream
UDP_S = 4.0  # one iperf3 -u run; the kill comes KILL_AT_S into it
KILL_AT_S = 1.5


def _udp_end(doc: dict[str, Any]) -> dict[str, int]:
    """Datagrams sent and lost (the receiver's count, as iperf3 reports it back), out of order."""
    end = doc["end"]
    rx = end.get("sum_received") or end["sum"]
    sent = int((end.get("sum_sent") or end["sum"]).get("packets", rx.get("packets", 0)))
    return {"packets": sent, "lost": int(rx.get("lost_packets", 0)),
            "out_of_order": sum(int(s.get("udp", s).get("out_of_order", 0)) for s in end.get("streams", []))}


def udp_seqs(pcap: bytes, port: int = IPERF_PORT) -> dict[int, list[int]]:
    """iperf3's datagram numbers (the 32-bit count after its two time words) per client port, in
    the order a capture at the receiver saw them."""
    out: dict[int, list[int]] = {}
    for pkt in read_capture(pcap).packets:
        d = pkt.data
        if pkt.linktype != 1 or len(d) < 42 or d[12:14] != b"\x08\x00" or d[23] != 17:
            continue
        u = 14 + (d[14] & 0x0F) * 4
        sport, dport, ulen = struct.unpack_from("!HHH", d, u)
        if dport != port or ulen < 8 + 12 or len(d) < u + 8 + 12:
            continue
        out.setdefault(sport, []).append(struct.unpack_from("!I", d, u + 16)[0])
    return out


def wire_count(seqs: dict[int, list[int]]) -> dict[str, int]:
    """Datagrams that reached the receiver, numbers missing inside each stream's span, and
    numbers seen more than once. iperf3's own 'lost' cannot tell these apart: it takes one loss
    back for every datagram that arrives out of order, and a duplicate is out of order, so a
    replayed duplicate hides a real loss."""
    got = lost = dups = 0
    for nums in seqs.values():
        seen = set(nums)
        got += len(nums)
        dups += len(nums) - len(seen)
        lost += max(seen) - min(seen) + 1 - len(seen)
    return {"received": got, "lost": lost, "duplicates": dups}


@contextlib.contextmanager
def _server_capture(lab: str, host: str, out: Path) -> Iterator[list[CaptureResult]]:
    """tcpdump on the server's own interface for the body (listening before it starts)."""
    spec = load_lab_of(lab)
    stop = threading.Event()
    started = threading.Event()
    result: list[CaptureResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            # 96 bytes hold the headers and iperf3's datagram number; 64 MiB of buffer keep
            # tcpdump from dropping packets of a 7k-datagram/s stream on a loaded host.
            result.append(capture(spec, "outside", out, seconds=120, stop=stop,
                                  at=Target(host_ns(lab, host), "eth0"), snaplen=96, buffer_kib=65536,
                                  say=lambda m: started.set() if m.startswith("capturing") else None))
        except BaseException as e:  # raised below, in the caller's thread
            errors.append(e)
            started.set()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    started.wait(15)
    try:
        if errors:
            raise BenchError(f"capture on {host}: {errors[0]}")
        yield result
    finally:
        stop.set()
        th.join(10)
    if errors:
        raise BenchError(f"capture on {host}: {errors[0]}")


def udp_across_kill(name: str, runs: int, progress: Progress, mode: str,
                    victim: str = "n1") -> dict[str, Any]:
    """iperf3 -u, UDP_STREAMS x UDP_MBPS Mbit/s c1 -> s1: the datagrams lost in a run with a kill
    of the victim KILL_AT_S into it, beside a run as long without one; with lossless on, the
    adopter's replayed UDP datagrams (each a possible duplicate at the receiver)."""
    args = ["-u", "-b", f"{UDP_MBPS}M", "-P", str(UDP_STREAMS)]
    quiet: list[int] = []
    killed: list[int] = []
    sent: list[int] = []
    dup: list[int] = []
    ooo: list[int] = []
    takeover: list[float] = []
    failures: list[str] = []
    window: list[dict[str, int]] = []
    on_wire: list[dict[str, int]] = []
    stop_traffic(name)
    with iperf3_server(name) as ip:
        for i in range(runs):
            try:
                q = _udp_end(iperf3(name, ip, args, UDP_S))
                held0 = {n: _lossless(name, n) for n in lab_nodes(name) if n != victim}
                # Datagrams the server's own socket dropped (a full receive buffer): a burst of
                # replayed datagrams can overflow it, and iperf3 then counts them lost.
                rcvbuf0 = snmp(name, "s1", "Udp", "RcvbufErrors")
                with tempfile.TemporaryDirectory(prefix="swbench-udp-") as tmp:
                    pcap = Path(tmp) / "s1.pcap"
                    with _server_capture(name, "s1", pcap) as cap:
                        p = subprocess.Popen(in_host(name, "c1", iperf3_argv(ip, args, UDP_S)),
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                        try:
                            time.sleep(KILL_AT_S)
                            killed_at = time.time()
                            lab_request(name, {"cmd": "kill", "node": victim}, 30)
                            lt = wait_until("a backup to take the killed node's buckets",
                                            partial(took_over, name, victim, killed_at),
                                            TAKEOVER_WAIT_S, 0.02)
                            out, _ = p.communicate(timeout=UDP_S + 30)
                        finally:
                            baselines.stop_process(p)
                        time.sleep(0.2)  # the last datagrams reach the capture file
                    wire = wire_count(udp_seqs(pcap.read_bytes()))
                    wire["capture_dropped"] = int((cap[0].dropped if cap else None) or 0)
                    wire["server_rcvbuf_errors"] = snmp(name, "s1", "Udp", "RcvbufErrors") - rcvbuf0
                k = _udp_end(json.loads(out))
            except (BenchError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                failures.append(str(e)[:200])
                progress(f"{mode} UDP run {i + 1}/{runs}: failed: {str(e)[:120]}")
                with contextlib.suppress(BenchError):
                    revive(name, victim)
                continue
            quiet.append(q["lost"])
            killed.append(k["lost"])
            on_wire.append(wire)
            sent.append(k["packets"])
            ooo.append(k["out_of_order"])
            dup.append(int(lt.get("replayed_udp") or 0))
            # Why a datagram may still be lost with lossless on: held past the window, or over the cap.
            held1 = _lossless(name, lt["node"])
            window.append({c: held1.get(c, 0) - held0.get(lt["node"], {}).get(c, 0) for c in held1})
            takeover.append((float(lt["t"]) - killed_at) * 1000)
            progress(f"{mode} UDP run {i + 1}/{runs}: at s1 {wire['lost']} missing and {wire['duplicates']} "
                     f"twice of {k['packets']} sent across the kill"
                     + (f" (capture dropped {wire['capture_dropped']})" if wire["capture_dropped"] else "")
                     + f", {wire['server_rcvbuf_errors']} dropped by s1's full socket buffer"
                     + f"; iperf3 says lost {k['lost']} ({q['lost']} without); {dup[-1]} replayed, "
                     f"{lt.get('too_old', 0)} held too long, {lt.get('refused', 0)} refused by the engine, "
                     f"takeover {takeover[-1]:.0f} ms")
            revive(name, victim)
    return {"streams": UDP_STREAMS, "mbps_per_stream": UDP_MBPS, "seconds": UDP_S,
            "lost_with_kill": killed, "lost_without_kill": quiet, "packets": sent,
            "lost_by_kill": [max(0, k - q) for k, q in zip(killed, quiet, strict=True)],
            "replayed_udp": dup, "out_of_order": ooo, "takeover_ms": summarize(takeover, 1),
            "at_server": on_wire, "missing_at_server": [w["lost"] for w in on_wire],
            "duplicates_at_server": [w["duplicates"] for w in on_wire],
            "server_socket_drops": [w["server_rcvbuf_errors"] for w in on_wire],
            "adopter_lossless_delta": window, "failed_runs": failures}


SURVIVORS = ("n2", "n3")  # never killed nor crashed by this bench: their counters run on


def _gc(name: str) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for n in SURVIVORS:
        with contextlib.suppress(BenchError, OSError):
            out[n] = node_status(name, n).get("gc") or {}
    return out


def _gc_delta(a: dict[str, dict[str, list[float]]], b: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The survivors' garbage collections over the kills (count and total ms per generation; the
    longest one is the process's longest so far)."""
    out: dict[str, Any] = {}
    for n, g in b.items():
        g0 = a.get(n) or {}
        if not g or not g0:
            continue
        out[n] = {"collections": [x - y for x, y in zip(g["collections"], g0["collections"], strict=True)],
                  "total_ms": [round(x - y, 1) for x, y in zip(g["total_ms"], g0["total_ms"], strict=True)],
                  "max_ms_so_far": g["max_ms"]}
    return out


LOSSLESS_COUNTERS = ("held", "replayed", "replayed_udp", "expired", "dropped_by_cap", "evicted_by_cap",
                     "dropped_not_backed_up")


def _lossless(name: str, node: str) -> dict[str, int]:
    """A node's lossless counters (held, replayed, expired, dropped_by_cap ...), from its own socket."""
    try:
        got = node_status(name, node).get("lossless") or {}
    except (BenchError, OSError):
        return {}
    counters = got.get("counters", got)
    return {k: int(v) for k, v in counters.items() if k in LOSSLESS_COUNTERS}


def _bench_mode(name: str, runs: int, progress: Progress, mode: str, action: str = "kill") -> dict[str, Any]:
    n_flows = int(os.environ.get("SWBENCH_FLOWS", "100"))
    # SWBENCH_IPV6=1: the flows go to s1's IPv6 address (the dual-stack default lab).
    ipv6 = os.environ.get("SWBENCH_IPV6", "") == "1"
    # SWBENCH_CLIENT=c2: the flows start on c2, whose traffic the default lab source-NATs to the
    # cluster's outside address: a takeover must carry the bindings too (issue 18).
    client = bench_client()
    clients = (client,)
    victim = "n1"
    detect: list[float] = []
    takeover: list[float] = []
    totals: list[int] = []
    survived: list[int] = []
    takeovers: list[dict[str, Any]] = []
    victim_total: list[int] = []
    victim_ok: list[int] = []
    no_takeover = 0
    pauses: list[float] = []
    retrans: list[int] = []
    retrans_base: list[int] = []
    server_retrans: list[int] = []
    replayed: list[int] = []
    request_to_cut: list[float] = []
    pause_quiet: list[float] = []  # per flow: its longest pause in a quiet window (no kill)
    pause_kill_victim: list[float] = []  # per flow on the victim: its longest pause in the kill's window
    pause_kill_others: list[float] = []  # per flow on the other nodes: the same
    resumes: list[dict[str, float]] = []  # the victim's flows: their kill-window pause, from the kill
    steps: list[dict[str, float]] = []  # the adopter's events, ms from the kill

    def tcp() -> list[dict[str, Any]]:
        return [f for f in flows(name, "tcp6-" if ipv6 else "tcp-") if f.get("kind") == "tcp"]

    def steady(strict: bool = True) -> list[dict[str, Any]] | None:
        fl = tcp()
        healthy = [f for f in fl if f["health"] == "healthy"]
        mapped = any(f.get("node") == victim for f in healthy)  # the daemon has mapped flows to nodes
        if strict and len(healthy) < n_flows:
            return None
        return healthy if healthy and mapped else None

    for i in range(runs):
        stop_traffic(name)
        if ipv6:
            workload = traffic(name, "tcp", client=client, flows=n_flows, ipv6=True)["name"]
        else:
            workload = traffic(name, "tcp", client=client, flows=n_flows)["name"]
        wait_until(f"{n_flows} healthy, mapped flows", steady, 60, 0.2)
        # Flows a previous run broke stay broken: each run judges the flows healthy at its start.
        try:
            healthy_now = wait_until("healthy, mapped flows", lambda: steady(strict=False), 30, 0.2)
        except BenchError:
            progress(f"run {i + 1}/{runs}: no healthy flow mapped to {victim}; stopping here")
            break
        before = {f["name"]: f for f in healthy_now}
        on_victim = [k for k, f in before.items() if f.get("node") == victim]
        # The background: retransmissions and pauses over a quiet interval as long as the kill's window.
        t_base = time.monotonic()
        marks = len(next(iter(before.values())).get("pause_windows") or [])
        mark_pauses(name, workload)  # the quiet window opens
        base0 = _retrans(name, clients)
        time.sleep(flow_judge.WATCH_S + 0.5)
        base = _retrans(name, clients) - base0
        base_s = time.monotonic() - t_base
        r0, s0 = _retrans(name, clients), _retrans(name, SERVERS)
        mark_pauses(name, workload)  # the quiet window closes, the kill's opens
        t_kill = time.monotonic()
        # The daemon sends SIGKILL as soon as it reads the request; its own killed_at is taken
        # after reaping the process, which can be tens of ms later on a busy machine.
        killed_at = time.time()
        reply = lab_request(name, {"cmd": action, "node": victim}, 30)
        if action == "crash":
            # A crash is the moment the links go down: the daemon cuts them (pyroute2 in the
            # fabric namespace, tens to hundreds of ms after the request on a busy host) and
            # answers at once; until then the node is alive and heard.
            request_to_cut.append((float(reply["crashed_at"]) - killed_at) * 1000)
            killed_at = float(reply["crashed_at"])

        try:
            lt = wait_until("a backup to take the failed node's buckets",
                            partial(took_over, name, victim, killed_at), TAKEOVER_WAIT_S, 0.02)
        except BenchError:
            lt = None
            no_takeover += 1
            progress(f"run {i + 1}/{runs}: no takeover seen within {TAKEOVER_WAIT_S:g} s")
        found: float | None = None
        if lt is not None:
            total_ms = (float(lt["t"]) - killed_at) * 1000
            takeover.append(total_ms)
            takeovers.append({k: lt.get(k) for k in ("node", "buckets", "promoted", "detect_to_accept_ms",
                                                     "apply_ms", "replayed", "replayed_udp")})
            found = _detected_at(name, victim, killed_at)
            if found is not None:
                detect.append((found - killed_at) * 1000)
        # Judged from the takeover on: bytes moved before it prove nothing.
        since_t = float(lt["t"]) if lt is not None else time.time()
        verdict = flow_judge.judge(tcp, since_t, SURVIVE_WAIT_S, names=list(before), every_s=0.2)
        ok, lost = verdict.survived_names, verdict.lost_names
        delta = _retrans(name, clients) - r0
        server_retrans.append(_retrans(name, SERVERS) - s0)
        kill_s = time.monotonic() - t_kill
        mark_pauses(name, workload)  # the kill's window closes
        if lt is not None:
            steps.append({**adopter_steps(name, str(lt["node"]), killed_at),
                          "takeover_t": round((float(lt["t"]) - killed_at) * 1000, 1)})
        try:
            closed = wait_until("the flows' pause windows",
                                partial(_closed_windows, tcp, set(before), marks + 3), 5, 0.1)
        except BenchError:
            closed = []
        for f in closed:
            _, kill_ms, kill_end = f["pause_windows"][-1][:3]
            q_ms = float(f["pause_windows"][-2][1])
            victim_flow = f["name"] in on_victim
            pause_quiet.append(q_ms)
            (pause_kill_victim if victim_flow else pause_kill_others).append(float(kill_ms))
            if victim_flow and kill_ms:
                # When the flow's longest pause of the window started and ended, from the kill.
                end_ms = (float(kill_end) - killed_at) * 1000
                resumes.append({"start_ms": round(end_ms - float(kill_ms), 1), "end_ms": round(end_ms, 1),
                                "pause_ms": float(kill_ms)})
        retrans.append(delta)
        retrans_base.append(round(base * kill_s / base_s) if base_s > 0 else base)
        if lt is not None:
            replayed.append(int(lt.get("replayed") or 0))
        run_pauses = [float(f.get("longest_pause_ms") or 0) for f in tcp() if f["name"] in before]
        pauses += run_pauses
        victim_total.append(len(on_victim))
        victim_ok.append(len(ok & set(on_victim)))
        totals.append(len(before))
        survived.append(len(ok))
        timing = "no takeover" if lt is None else (
            (f"detect {detect[-1]:.0f} ms" if found is not None else "no peer-down event seen")
            + f", takeover {takeover[-1]:.0f} ms")
        if closed:
            kill_w = [float(f["pause_windows"][-1][1]) for f in closed]
            timing += (f", kill-window pause max {max(kill_w):.0f} ms (quiet window max "
                       f"{max(float(f['pause_windows'][-2][1]) for f in closed):.0f})")
        if steps and lt is not None:
            timing += f", adopter {steps[-1]}"
        progress(f"{mode} {action} run {i + 1}/{runs}: {timing}, retransmissions {delta} "
                 f"(baseline {retrans_base[-1]}), longest pause {max(run_pauses or [0]):.0f} ms, "
                 f"{len(ok)}/{len(before)} flows survived, {len(lost)} lost "
                 f"({victim_ok[-1]}/{len(on_victim)} of those on {victim} survived)")
        revive(name, victim)
    stop_traffic(name)
    by_kill = [max(0, r - b) for r, b in zip(retrans, retrans_base, strict=True)]
    worst = sorted(resumes, key=lambda r: -r["pause_ms"])[:10]
    return {
        "pause_ms": _pauses(pauses),
        "pause_kill_window_ms": _pauses(pause_kill_victim + pause_kill_others),
        "pause_kill_window_victim_flows_ms": _pauses(pause_kill_victim),
        "pause_kill_window_other_flows_ms": _pauses(pause_kill_others),
        "pause_quiet_window_ms": _pauses(pause_quiet),
        "victim_flow_resume_end_ms": _pauses([r["end_ms"] for r in resumes]),
        "victim_flow_pause_start_ms": _pauses([r["start_ms"] for r in resumes]),
        "longest_victim_pauses": worst,
        "adopter_steps_ms": steps,
        "client_retrans": retrans, "client_retrans_baseline": retrans_base,
        "client_retrans_by_kill": by_kill, "server_retrans": server_retrans,
        "replayed": summarize(replayed, 0),
        "detect_ms": summarize(detect, 1), "takeover_ms": summarize(takeover, 1),
        "flows_total": summarize(totals, 0), "flows_survived": summarize(survived, 0),
        "victim_flows": summarize(victim_total, 0), "victim_flows_survived": summarize(victim_ok, 0),
        "takeovers": takeovers, "runs_without_takeover": no_takeover,
        **({"crash_request_to_cut_ms": summarize(request_to_cut, 1)} if request_to_cut else {}),
        "ip_version": 6 if ipv6 else 4,
        "client": client,
    }
