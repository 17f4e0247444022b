"""`syncwall bench NAME`: DESIGN.md's "Measurements", repeated, baselines measured in the same run.

Each bench prints progress lines on stderr and, with --json, one JSON object on stdout
(figures as {"median", "min", "max", "spread", "p99", "n", "samples"}). Exit 0 when the
bench ran, whatever the figures; 1 when it could not run (the message says why).
Targets are reported beside the figures, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from netns.record import RUN_ROOT

BENCH_LAB = "swbench"


# ---- statistics -------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually measured."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def spread(values: Sequence[float]) -> float:
    """max - min: how far apart the repeated runs landed."""
    if not values:
        raise ValueError("spread of no values")
    return float(max(values) - min(values))


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, p99, min, max and spread of repeated measurements (None figures when there are none)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "p99": None, "min": None, "max": None, "spread": None, "n": 0,
                "samples": []}
    return {
        "median": round(median(vals), digits),
        "p99": round(p99(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "spread": round(spread(vals), digits),
        "n": len(vals),
        "samples": [round(v, digits) for v in vals],
    }


def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """Run-by-run ratios (each pair measured in the same run), summarized."""
    pairs = [a / b for a, b in zip(num, den, strict=False) if b]
    return summarize(pairs, 3)


# ---- progress and machine -----------------------------------------------------------------------
class Progress:
    """Progress lines on stderr with the time since the bench started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        sys.stderr.write(f"[{self.name} {time.monotonic() - self.t0:6.1f}s] {msg}\n")
        sys.stderr.flush()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


# ---- the lab, driven like an operator would -------------------------------------------------------
def sw(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"syncwall {' '.join(args)} did not finish within {timeout_s:g} s") from e
    if p.returncode != 0:
        raise BenchError(f"syncwall {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p


def lab_request(lab: str, msg: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    from netns.control import ControlClient, ControlError

    c = ControlClient(RUN_ROOT / lab / "control.sock", timeout_s)
    try:
        reply = c.request(msg)
    except ControlError as e:
        raise BenchError(f"lab {lab!r} does not answer: {e}") from e
    finally:
        c.close()
    if not reply.get("ok", True):
        raise BenchError(f"lab {lab!r} refused {msg.get('cmd')}: {reply.get('error')}")
    return reply


def lab_nodes(lab: str) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in lab_request(lab, {"cmd": "status"})["nodes"]}


def wait_until(what: str, pred: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise BenchError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def bench_lab(lab: str | None, progress: Progress, policy: str | None = None) -> Iterator[str]:
    """A running lab: the one named by --lab (left running), else our own default-topology lab."""
    if lab:
        if not (RUN_ROOT / lab / "control.sock").exists():
            raise BenchError(f"lab {lab!r} is not running; start it with `syncwall up` or drop --lab")
        yield lab
        return
    if (RUN_ROOT / BENCH_LAB / "control.sock").exists():
        raise BenchError(f"a bench lab {BENCH_LAB!r} is already running (another bench?); "
                         f"stop it with `syncwall --lab {BENCH_LAB} down`")
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        lab_file = Path(tmp) / "lab.toml"
        # The default topology under our own name, so a lab someone else runs is never touched.
        lab_file.write_text(f'name = "{BENCH_LAB}"\n' + (f'policy = "{policy}"\n' if policy else ""))
        progress(f"starting lab {BENCH_LAB!r} (default topology): syncwall up")
        sw("up", str(lab_file), "--json")
        try:
            wait_until("three active nodes", lambda: all(
                n["state"] == "active" and n["buckets"] for n in lab_nodes(BENCH_LAB).values()), 30)
            yield BENCH_LAB
        finally:
            progress(f"stopping lab {BENCH_LAB!r}: syncwall down")
            try:
                sw("--lab", BENCH_LAB, "down")
            except BenchError as e:
                progress(f"down failed ({e}); cleaning by record")
                with contextlib.suppress(BenchError):
                    sw("--lab", BENCH_LAB, "clean", "--force")


def traffic(lab: str, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(sw("--lab", lab, "traffic", *args).stdout)
    return out


def flows(lab: str, prefix: str) -> list[dict[str, Any]]:
    snap = lab_request(lab, {"cmd": "snapshot", "max_events": 0})
    return [f for f in snap.get("flows", [])
            if str(f.get("workload", "")).startswith(prefix) or str(f.get("name", "")).startswith(prefix)]


def stop_traffic(lab: str) -> None:
    with contextlib.suppress(BenchError):
        lab_request(lab, {"cmd": "traffic", "action": "stop"})
    time.sleep(0.5)
    with contextlib.suppress(BenchError):
        lab_request(lab, {"cmd": "traffic", "action": "clear"})


# ---- benches ------------------------------------------------------------------------------------
def bench_throughput(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    raw = baselines.measure(duration_s, runs, baselines.MODES, progress)
    s = raw["samples"]
    out: dict[str, Any] = {
        "what": "64-byte UDP packets/s and one TCP stream's Mbit/s through one gateway namespace "
                "(bench-owned sender/gateway/receiver), every mode measured in every run",
        "duration_s": duration_s, "udp_sender": raw.get("udp_sender"), "notes": raw["notes"],
        "modes": {m: {"pps": summarize(v["pps"], 0), "mbps": summarize(v["mbps"], 0)} for m, v in s.items()},
        "ratios": {},
    }
    pairs = {
        "engine_pps_vs_c": ("engine", "c", "pps"),
        "engine_gso_pps_vs_c": ("engine-gso", "c", "pps"),
        "python_pps_vs_c": ("python", "c", "pps"),
        "c_pps_vs_kernel": ("c", "kernel", "pps"),
        "engine_mbps_vs_kernel": ("engine", "kernel", "mbps"),
        "engine_gso_mbps_vs_kernel": ("engine-gso", "kernel", "mbps"),
        "python_gso_mbps_vs_python": ("python-gso", "python", "mbps"),
        "python_gso_mbps_vs_kernel": ("python-gso", "kernel", "mbps"),
    }
    for name, (a, b, metric) in pairs.items():
        if a in s and b in s:
            out["ratios"][name] = ratio(s[a][metric], s[b][metric])
    out["targets"] = {"engine_pps_vs_c": ">= 0.75", "engine_mbps_vs_kernel": ">= 0.50"}
    if os.environ.get("SWBENCH_CLUSTER", "1") != "0":
        out["cluster"] = _cluster_tcp(runs, lab, progress, duration_s)
        k = s.get("kernel", {}).get("mbps", [])
        out["ratios"]["cluster_mbps_vs_kernel"] = ratio(out["cluster"]["samples_mbps"], k)
    out["not_measured"] = "64-byte packets/s through the cluster (no packet sink in the lab's hosts)"
    return out


CLUSTER_STREAMS = 3  # TCP streams c1 -> s1 (6 stalled the cluster past 30 s when measured)


def _cluster_tcp(runs: int, lab: str | None, progress: Progress, duration_s: float) -> dict[str, Any]:
    """TCP Mbit/s through the 3-node cluster: iperf3 from c1 to s1 with several streams."""
    mbps: list[float] = []
    failures: list[str] = []
    port = "5201"  # inside the default rules' tcp 5000-5999
    seconds = str(max(1, round(duration_s)))
    with bench_lab(lab, progress) as name:
        ip = _lab_server_ip(name)
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "--lab", name, "exec", "s1", "--",
                                   "iperf3", "-s", "-B", ip, "-p", port], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for i in range(runs):
                try:
                    out = sw("--lab", name, "exec", "c1", "--", "iperf3", "-c", ip, "-p", port, "-t",
                             seconds, "-P", str(CLUSTER_STREAMS), "-J", timeout_s=duration_s + 30)
                    doc = json.loads(out.stdout)
                    mbps.append(float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6)
                except (BenchError, ValueError, KeyError) as e:
                    failures.append(str(e)[:200])
                    progress(f"run {i + 1}/{runs} cluster: failed: {str(e)[:120]}")
                    continue
                progress(f"run {i + 1}/{runs} cluster: {mbps[-1]:,.0f} Mbit/s over {CLUSTER_STREAMS} streams")
            # Evidence for slow or stalled runs: packets of a connection a node had no state for.
            counters: dict[str, int] = {}
            for n in lab_nodes(name):
                c = _node_status(name, n).get("counters", {})
                for k in ("no-state", "released-by-timeout", "hold-pull"):
                    counters[k] = counters.get(k, 0) + int(c.get(k, 0))
        finally:
            baselines.stop_process(server)
    return {"what": f"TCP through the default-topology lab, c1 -> s1, {CLUSTER_STREAMS} iperf3 streams "
                    "(spread over the nodes by HMARK), measured after the single-gateway modes",
            "mbps": summarize(mbps, 0), "samples_mbps": mbps, "failed_runs": failures,
            "node_counters": counters}


def _burst_lab(lab: str, count: int, rate: int = 100000) -> tuple[float, int]:
    """(connections/s, failed connections) of one burst through the cluster."""
    started = traffic(lab, "start", "burst", "--count", str(count), "--rate", str(rate))
    name = str(started.get("name", "burst"))
    done = wait_until(f"burst {name}", lambda: [f for f in flows(lab, name)
                                                if f["health"] in ("done", "failed")], 120, 0.2)
    f = done[0]
    if not f.get("successes"):
        raise BenchError(f"burst through the cluster: {f.get('detail')}")
    return float(f["conn_per_s"]), int(f.get("failures", 0))


CONN_PORT_LAB = 5100  # inside the default rules' tcp 5000-5999
CONN_WORKERS = 4


def _parse_conn_rate(out: str) -> tuple[float, int]:
    """(connections/s, failed) from the C client's 'ok N failed M seconds S' line."""
    parts = out.split()
    try:
        ok, failed, seconds = int(parts[1]), int(parts[3]), float(parts[5])
    except (IndexError, ValueError) as e:
        raise BenchError(f"conn_rate client said {out.strip()!r}") from e
    if not ok:
        raise BenchError(f"no connection succeeded ({failed} failed)")
    return ok / seconds, failed


def _lab_server_ip(lab: str) -> str:
    from netns.lab import load_lab_of

    spec = load_lab_of(lab)
    return str(next(h.ip for h in spec.hosts if h.role == "server"))


def bench_conn_rate(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    local: dict[str, list[float]] = {"kernel": [], "engine": []}
    local_failed: dict[str, list[float]] = {m: [] for m in local}
    cluster: dict[str, list[float]] = {"sync_on_hybrid": [], "sync_off_periodic_60s": []}
    cluster_failed: dict[str, list[float]] = {m: [] for m in cluster}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        exe, why = baselines.build_c(Path(tmp), baselines.CNFQ_DIR / "conn_rate.c", [])
        if exe is None:
            raise BenchError(f"the C connection client could not be built: {why}")
        # Single gateway first, in our own topology (the engine alone, no peer: sync off), then the cluster.
        with baselines.Topology() as topo:
            server = topo.popen(topo.receiver, [str(exe), "server", str(baselines.IPERF_PORT)],
                                stdout=subprocess.DEVNULL)
            baselines.wait_port(topo.receiver, baselines.IPERF_PORT)
            cfg = baselines.write_engine_config(topo)
            for i in range(runs):
                for mode in local:
                    with baselines.consumer(topo, mode, None, cfg):
                        out = baselines.run(["ip", "netns", "exec", topo.sender, str(exe), "client",
                                             baselines.RECEIVER_IP, str(baselines.IPERF_PORT),
                                             f"{duration_s:g}", str(CONN_WORKERS)], timeout_s=duration_s + 30)
                    rate, failed = _parse_conn_rate(out.stdout)
                    local[mode].append(rate)
                    local_failed[mode].append(failed)
                    progress(f"run {i + 1}/{runs} single gateway, {mode}: {rate:,.0f} conn/s, "
                             f"{failed} failed")
            topo.stop(server)
        with bench_lab(lab, progress) as name:
            ip = _lab_server_ip(name)
            server_p = subprocess.Popen([sys.executable, "-m", "app.cli", "--lab", name, "exec", "s1", "--",
                                         str(exe), "server", str(CONN_PORT_LAB)], stdout=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                for i in range(runs):
                    for mode, policy in (("sync_on_hybrid", ("hybrid", "--interval-ms", "1000")),
                                         ("sync_off_periodic_60s", ("periodic", "--interval-ms", "60000"))):
                        sw("--lab", name, "policy", *policy)
                        time.sleep(0.5)
                        out = sw("--lab", name, "exec", "c1", "--", str(exe), "client", ip,
                                 str(CONN_PORT_LAB), f"{duration_s:g}", str(CONN_WORKERS),
                                 timeout_s=duration_s + 30)
                        rate, failed = _parse_conn_rate(out.stdout)
                        cluster[mode].append(rate)
                        cluster_failed[mode].append(failed)
                        progress(f"run {i + 1}/{runs} cluster, {mode}: {rate:,.0f} conn/s, {failed} failed")
                sw("--lab", name, "policy", "hybrid", "--interval-ms", "1000")
            finally:
                baselines.stop_process(server_p)
    notes.append("sync off = periodic policy with a 60 s interval (no sync during the measurement)")
    notes.append(f"client and server: demos/cnfq/conn_rate.c, {CONN_WORKERS} client processes, each "
                 f"connect + 16-byte echo + close in a loop for {duration_s:g} s")
    cost = [1 - a / b for a, b in zip(cluster["sync_on_hybrid"], cluster["sync_off_periodic_60s"],
                                      strict=False) if b]
    return {
        "what": "new TCP connections/s (connect, echo, close)",
        "single_gateway": {m: summarize(v, 0) for m, v in local.items()},
        "single_gateway_failed_connections": {m: summarize(v, 0) for m, v in local_failed.items()},
        "cluster": {m: summarize(v, 0) for m, v in cluster.items()},
        "cluster_failed_connections": {m: summarize(v, 0) for m, v in cluster_failed.items()},
        "sync_cost_fraction": summarize(cost, 3),
        "engine_vs_kernel": ratio(local["engine"], local["kernel"]),
        "targets": {"sync_cost_fraction": "<= 0.10"},
        "notes": notes,
    }


SYNC_LATENCY_RATE = 500  # new connections/s: a steady load, not an overload


def _node_status(lab: str, node: str) -> dict[str, Any]:
    """A node's own status, straight from its control socket (the daemon's copy may be 250 ms old)."""
    path = RUN_ROOT / lab / "nodes" / f"{node}.sock"
    return baselines.node_request(path, {"cmd": "status"})


def bench_sync_latency(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    one_way = one_way_sync_latency(runs, progress)
    count = int(os.environ.get("SWBENCH_CONNS", "1000"))
    p50s: list[float] = []
    p99s: list[float] = []
    with bench_lab(lab, progress) as name:
        sw("--lab", name, "policy", "hybrid", "--interval-ms", "1000")
        names = list(lab_nodes(name))
        for i in range(runs):
            _burst_lab(name, count, SYNC_LATENCY_RATE)
            for n in names:
                lat = _node_status(name, n).get("sync", {}).get("ack_latency_ms", {})
                if lat.get("p50") is not None:
                    p50s.append(float(lat["p50"]))
                    p99s.append(float(lat["p99"]))
            progress(f"lab run {i + 1}/{runs}: ack round trip p50 {p50s[-len(names):]} "
                     f"p99 {p99s[-len(names):]} ms (per node)")
        stop_traffic(name)
    return {
        "one_way": one_way,
        "lab_ack_round_trip": {
            "what": "real engine.node processes in the lab under a "
                    f"{count}-connection burst at {SYNC_LATENCY_RATE}/s: the agents' ack latency (owner "
                    "sends a record -> backup applied it and acked, a round trip: an upper bound of the "
                    "one-way figure), each node's last 1024 samples, read from the node's own socket",
            "p50_ms": summarize(p50s), "p99_ms": summarize(p99s)},
        "targets": {"one_way.p50_ms": "<= 1", "one_way.p99_ms": "<= 5"},
    }


SURVIVE_WAIT_S = 8.0
TAKEOVER_WAIT_S = 10.0
REVIVE_SETTLE_S = 2.0  # the revived node resyncs and takes its buckets back before the next kill


def _judge_flows(fetch: Callable[[], dict[str, dict[str, Any]]], before: dict[str, dict[str, Any]],
                 wait_s: float) -> tuple[set[str], set[str]]:
    """(survived, lost) flow names: survived = healthy and moving again, lost = broken or failed."""
    ok: set[str] = set()
    lost: set[str] = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len(ok) + len(lost) < len(before):
        try:
            now = fetch()
        except BenchError:
            now = {}
        for k, f0 in before.items():
            f = now.get(k)
            if f is None or k in ok or k in lost:
                continue
            if f.get("health") in ("broken", "failed"):
                lost.add(k)
            elif f.get("health") == "healthy" and f.get("bytes", 0) > f0.get("bytes", 0):
                ok.add(k)
        time.sleep(0.2)
    return ok, lost


def _detected_at(lab: str, victim: str, since: float) -> float | None:
    """When a node first noted the victim's heartbeats missing (its 'peer-down' timeline event)."""
    snap = lab_request(lab, {"cmd": "snapshot", "since": since, "max_events": 100000})
    times = [float(e["t"]) for e in snap.get("events", []) if e.get("kind") == "peer-down"
             and e.get("peer") == victim and float(e.get("t", 0)) >= since]
    return min(times) if times else None


def bench_failover(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    n_flows = int(os.environ.get("SWBENCH_FLOWS", "100"))
    victim = "n1"
    detect: list[float] = []
    takeover: list[float] = []
    totals: list[int] = []
    survived: list[int] = []
    takeovers: list[dict[str, Any]] = []
    victim_total: list[int] = []
    victim_ok: list[int] = []
    no_takeover = 0
    with bench_lab(lab, progress) as name:
        traffic(name, "start", "tcp", "--flows", str(n_flows))
        tcp = lambda: [f for f in flows(name, "tcp-") if f.get("kind") == "tcp"]  # noqa: E731

        def steady(strict: bool = True) -> list[dict[str, Any]] | None:
            fl = tcp()
            healthy = [f for f in fl if f["health"] == "healthy"]
            mapped = any(f.get("node") == victim for f in healthy)  # the daemon has mapped flows to nodes
            if strict and len(healthy) < n_flows:
                return None
            return healthy if healthy and mapped else None

        wait_until(f"{n_flows} healthy, mapped flows", steady, 60, 0.2)
        for i in range(runs):
            # Flows a previous run broke stay broken: each run judges the flows healthy at its start.
            try:
                healthy_now = wait_until("healthy, mapped flows", lambda: steady(strict=False), 30, 0.2)
            except BenchError:
                progress(f"run {i + 1}/{runs}: no healthy flow mapped to {victim}; stopping here")
                break
            before = {f["name"]: f for f in healthy_now}
            on_victim = [k for k, f in before.items() if f.get("node") == victim]
            # The daemon sends SIGKILL as soon as it reads the request; its own killed_at is taken
            # after reaping the process, which can be tens of ms later on a busy machine.
            killed_at = time.time()
            lab_request(name, {"cmd": "kill", "node": victim}, 30)

            def took_over(killed_at: float = killed_at) -> dict[str, Any] | None:
                for n in lab_nodes(name).values():
                    lt = n.get("last_takeover")
                    if n["name"] != victim and lt and float(lt["t"]) > killed_at:
                        return {**lt, "node": n["name"]}
                return None

            try:
                lt = wait_until("a backup to take the killed node's buckets", took_over,
                                TAKEOVER_WAIT_S, 0.02)
            except BenchError:
                lt = None
                no_takeover += 1
                progress(f"run {i + 1}/{runs}: no takeover seen within {TAKEOVER_WAIT_S:g} s")
            if lt is not None:
                total_ms = (float(lt["t"]) - killed_at) * 1000
                takeover.append(total_ms)
                takeovers.append({k: lt.get(k) for k in ("node", "buckets", "promoted", "detect_to_accept_ms",
                                                         "apply_ms")})
                found = _detected_at(name, victim, killed_at)
                if found is not None:
                    detect.append((found - killed_at) * 1000)
            # Judged against a snapshot taken after the takeover: bytes counted before the kill prove nothing.
            mid = {f["name"]: f for f in tcp()}
            base = {k: mid.get(k, f) for k, f in before.items()}
            ok, lost = _judge_flows(lambda: {f["name"]: f for f in tcp()}, base, SURVIVE_WAIT_S)
            victim_total.append(len(on_victim))
            victim_ok.append(len(ok & set(on_victim)))
            totals.append(len(before))
            survived.append(len(ok))
            timing = (f"detect {detect[-1]:.0f} ms, takeover {takeover[-1]:.0f} ms" if lt is not None
                      and detect else "no takeover")
            progress(f"run {i + 1}/{runs}: {timing}, "
                     f"{len(ok)}/{len(before)} flows survived, {len(lost)} broken "
                     f"({victim_ok[-1]}/{len(on_victim)} of those on {victim} survived)")
            lab_request(name, {"cmd": "revive", "node": victim}, 30)
            wait_until(f"{victim} active again", lambda: (n := lab_nodes(name)[victim])["state"] == "active"
                       and n["buckets"], 30, 0.1)
            time.sleep(REVIVE_SETTLE_S)
        stop_traffic(name)
    return {
        "what": "kill -9 of a node under long-lived TCP flows; detect = kill request -> the first "
                "peer-down event for it; takeover = kill request -> a backup accepting the dead "
                "node's buckets (state promoted first), after which the next packet of each flow "
                "is forwarded; a flow survived when it carried data again after the takeover and "
                "never broke",
        "detect_ms": summarize(detect, 1), "takeover_ms": summarize(takeover, 1),
        "flows_total": summarize(totals, 0), "flows_survived": summarize(survived, 0),
        "victim_flows": summarize(victim_total, 0), "victim_flows_survived": summarize(victim_ok, 0),
        "takeovers": takeovers, "runs_without_takeover": no_takeover,
        "targets": {"takeover_ms": "median <= 150, p99 <= 300", "flows_survived": "= flows_total"},
    }


def bench_ftp(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    sessions = int(os.environ.get("SWBENCH_SESSIONS", "8"))
    out: dict[str, Any] = {"what": f"{sessions} active-mode FTP sessions per run and policy; cross-node = "
                                   "the data connection landed on another node than the control one",
                           "policies": {}}
    with bench_lab(lab, progress) as name:
        for policy, interval in (("on-demand", "1000"), ("hybrid", "1000"), ("periodic", "60000")):
            sw("--lab", name, "policy", policy, "--interval-ms", interval)
            ok_cross: list[float] = []
            all_cross: list[float] = []
            succeeded: list[float] = []
            t_policy = time.time()
            for i in range(runs):
                started = traffic(name, "start", "ftp", "--mode", "active", "--sessions", str(sessions))
                wname = str(started["name"])
                wait_until("FTP sessions", lambda: len([f for f in flows(name, wname)  # noqa: B023
                                                        if f["health"] in ("done", "failed")]) >= sessions,
                           90, 0.2)
                time.sleep(1.5)  # the daemon maps data connections to nodes while they close
                fl = [f for f in flows(name, wname) if f["health"] in ("done", "failed")]
                cross = [f for f in fl
                         if f.get("node") and f.get("data_node") and f["node"] != f["data_node"]]
                unmapped_failed = [f for f in fl if f["health"] == "failed" and not f.get("data_node")]
                all_cross.append(len(cross) + len(unmapped_failed))
                ok_cross.append(len([f for f in cross if f["health"] == "done"]))
                succeeded.append(len([f for f in fl if f["health"] == "done"]))
                progress(f"{policy} run {i + 1}/{runs}: {succeeded[-1]}/{len(fl)} done, cross-node "
                         f"{ok_cross[-1]}/{all_cross[-1]} succeeded")
            # Every hold released in this policy's runs, from the nodes' timeline ("release" events).
            snap = lab_request(name, {"cmd": "snapshot", "since": t_policy, "max_events": 100000})
            holds = [float(e["latency_ms"]) for e in snap.get("events", [])
                     if e.get("kind") == "release" and e.get("latency_ms") is not None
                     and float(e.get("t", 0)) >= t_policy]
            out["policies"][policy] = {
                "sessions_done": summarize(succeeded, 0),
                "cross_node": summarize(all_cross, 0),
                "cross_node_succeeded": summarize(ok_cross, 0),
                "holds": len(holds),
                "hold_ms": summarize(holds) if holds else None,
            }
        sw("--lab", name, "policy", "hybrid", "--interval-ms", "1000")
        stop_traffic(name)
    out["notes"] = ["hold_ms: every PORT hold released (by ack or timeout) during the policy's runs, "
                    "from the nodes' 'release' timeline events; hold_ms.median/p99 are over all holds, "
                    "not per run; cross-node failures whose data connection never reached a node table "
                    "are counted as cross-node"]
    out["targets"] = {"hold_ms": "p50 <= 2, p99 <= 10"}
    return out


def _fill(store: Any, owner: str, n: int, buckets: Sequence[int]) -> None:
    from sync.records import Record, Scope

    for i in range(n):
        key = i.to_bytes(4, "big") + owner.encode().ljust(4, b"\0") + bytes(5)  # 13-byte 5-tuple key
        store.put_local(Record(key, Scope.NODE, owner, 1, buckets[i % len(buckets)],
                               [6, 3, 1000 + i, 5001, 1_700_000_000, 0], False))


def bench_resync(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    """A joining node's bulk resync of N entries, in the sync simulator (real agents, simulated links)."""
    from sync.agent import ResyncComplete
    from sync.sim import SimCluster

    sizes = [int(x) for x in os.environ.get("SWBENCH_RESYNC_SIZES", "10000,100000").split(",")]
    out: dict[str, Any] = {"what": "n2 rejoins a 2-node cluster where n1 owns N entries that n2 backs up: "
                                   "wall time (all agents' CPU, one process) and simulated time from "
                                   "n2's start to its ResyncComplete",
                           "where": "sync/sim.py SimCluster: real SyncAgent code and wire codec, "
                                    "in-memory links (0.2 ms delay), not the lab",
           "notes": ["both times include any wait of the joining agent to hear its peers "
                     "before it asks for state"],
           "sizes": {}}
    for n in sizes:
        walls: list[float] = []
        sims: list[float] = []
        got: list[float] = []
        for i in range(runs):
            sim = SimCluster(2, seed=i)
            sim.start()
            if not sim.run_until(sim.all_active, 5.0):
                raise BenchError("the simulated cluster did not settle")
            sim.kill("n2")
            sim.run_until(lambda s=sim: len(s.agents["n1"].owned_buckets) == s.base.buckets, 5.0)  # type: ignore[misc]
            _fill(sim.stores["n1"], "n1", n, sim.agents["n1"].owned_buckets)
            t_sim = sim.now
            t0 = time.perf_counter()
            sim.revive("n2")

            def done(s: SimCluster = sim) -> bool:
                return any(isinstance(e, ResyncComplete) for e in s.events["n2"])

            sim.events["n2"].clear()
            if not sim.run_until(done, 60.0):
                raise BenchError(f"n2 did not finish resyncing {n} entries in 60 s of simulated time")
            walls.append(time.perf_counter() - t0)
            sims.append(sim.now - t_sim)
            ev = next(e for e in sim.events["n2"] if isinstance(e, ResyncComplete))
            got.append(ev.records)
            progress(f"{n} entries, run {i + 1}/{runs}: {walls[-1]:.2f} s wall, {sims[-1]:.3f} s simulated, "
                     f"{ev.records} received")
        out["sizes"][str(n)] = {"wall_s": summarize(walls), "simulated_s": summarize(sims),
                                "records_received": summarize(got, 0)}
    out["targets"] = {"100000": "wall_s <= 1"}
    return out


def _store_bytes(n: int) -> float:
    """Bytes per entry of MemoryStore holding n connection records (tracemalloc)."""
    from sync.records import MemoryStore

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = MemoryStore()
        _fill(store, "n1", n, [1, 2, 3])
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del store
    return used / n


def bench_memory(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    from sync.records import Scope
    from sync.sim import SimCluster

    per_node_conns = int(os.environ.get("SWBENCH_CONNS_PER_NODE", "2000"))
    out: dict[str, Any] = {"what": f"each node owns {per_node_conns} connections; entries each node holds "
                                   "(own + backup copies) once synced, cyclic backup groups (1 backup) "
                                   "vs full mesh (every other node backs up)",
                           "where": "sync/sim.py SimCluster (real agents, in-memory links)",
                           "nodes": {}}
    for n in (3, 4, 6):
        row: dict[str, Any] = {}
        for label, backups in (("cyclic", 1), ("full_mesh", n - 1)):
            sim = SimCluster(n, backups=backups, seed=1)
            sim.start()
            if not sim.run_until(sim.all_active, 10.0):
                raise BenchError(f"the simulated {n}-node cluster did not settle")
            for name in sim.names:
                owned = sim.agents[name].owned_buckets
                for i in range(per_node_conns):
                    sim.put(name, f"{name}-{i}".encode().ljust(13, b"\0"), [6, 1, i],
                            bucket=owned[i % len(owned)])
                    if i % 200 == 0:
                        sim.step()
            sim.run(2.0)
            held = [sum(1 for r in sim.stores[x].records() if not r.deleted and r.scope is Scope.NODE)
                    for x in sim.names]
            row[label] = {"entries_per_node": summarize(held, 0), "backups": backups,
                          "sync_bytes": sim.stats.bytes, "sync_datagrams": sim.stats.sent}
            progress(f"{n} nodes {label}: entries per node {held}, {sim.stats.bytes:,} sync bytes")
        row["cyclic_vs_full_mesh"] = round(row["cyclic"]["entries_per_node"]["median"]
                                           / row["full_mesh"]["entries_per_node"]["median"], 3)
        out["nodes"][str(n)] = row
    sizes = [_store_bytes(20000) for _ in range(max(1, runs))]
    out["bytes_per_entry"] = {"store": "sync.records.MemoryStore, 13-byte key, 6-field record",
                              **summarize(sizes, 0)}
    per_entry = out["bytes_per_entry"]["median"]
    for row in out["nodes"].values():
        for label in ("cyclic", "full_mesh"):
            row[label]["bytes_per_node_est"] = int(row[label]["entries_per_node"]["median"] * per_entry)
    out["targets"] = {"3 nodes cyclic_vs_full_mesh": "<= 2/3 + a small constant"}
    return out



# ---- one-way sync latency: two real agents over real UDP, in two of our namespaces ---------------------
SYNC_PEER_PORT = 7490
SYNC_CHANGES = 2000
SYNC_RATE_PER_S = 1000


async def _sync_peer(node: str, peers: list[tuple[str, str]], key: bytes, changes: int, rate_per_s: float,
                     out: Path, run_s: float) -> int:
    """One sync agent process: the owner (first peer) makes the changes, the backup notes each apply."""
    import asyncio
    import signal
    import socket

    from sync.agent import Mode, RecordApplied, SyncAgent, SyncConfig
    from sync.records import MemoryStore, Record, Scope

    nodes = tuple((n, (ip, SYNC_PEER_PORT)) for n, ip in peers)
    store = MemoryStore()
    agent = SyncAgent(SyncConfig(lab_id="swbench", key=key, node=node, nodes=nodes, buckets=12, backups=1,
                                 policy="on-demand"), store, time.monotonic())
    me = dict(nodes)[node]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(me)
    sock.setblocking(False)
    applied: dict[str, float] = {}
    sent: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def flush() -> None:
        for addr, data in agent.datagrams():
            with contextlib.suppress(OSError):
                sock.sendto(data, addr)

    def drain() -> None:
        for ev in agent.events():
            if isinstance(ev, RecordApplied):
                applied.setdefault(ev.key.hex(), time.monotonic())

    def readable() -> None:
        for _ in range(256):
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            agent.receive(data, src, time.monotonic())
            drain()  # timestamp each apply as soon as receive() returns
        flush()

    async def ticker() -> None:
        while not stop.is_set():
            agent.tick(time.monotonic())
            drain()
            flush()
            await asyncio.sleep(0.001)

    loop.add_reader(sock.fileno(), readable)
    agent.start(time.monotonic())
    flush()
    tick = asyncio.create_task(ticker())
    deadline = time.monotonic() + run_s
    ready = lambda: agent.mode is Mode.ACTIVE and all(  # noqa: E731
        agent.view.state(n).value == "active" for n, _ in peers) and bool(agent.owned_buckets)
    while not ready() and time.monotonic() < deadline and not stop.is_set():
        await asyncio.sleep(0.01)
    if node == peers[0][0] and ready():
        await asyncio.sleep(0.3)  # the backup settles too
        owned = agent.owned_buckets
        period_s = 1.0 / rate_per_s
        t_next = time.monotonic()
        for i in range(changes):
            k = b"swb" + i.to_bytes(10, "big")
            store.put_local(Record(k, Scope.NODE, node, 1, owned[i % len(owned)], [6, 1, i], False))
            t = time.monotonic()
            agent.changed(k, t)
            flush()
            sent[k.hex()] = t
            t_next += period_s
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await asyncio.sleep(0.5)  # acks and retransmissions finish
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
    stop.set()
    tick.cancel()
    out.write_text(json.dumps({"node": node, "ready": ready(), "sent": sent, "applied": applied,
                               "stats": agent.stats()}, default=str))
    return 0


def sync_peer_main(argv: list[str]) -> int:
    import argparse
    import asyncio

    ap = argparse.ArgumentParser(prog="python -m demos.bench sync-peer")
    ap.add_argument("--node", required=True)
    ap.add_argument("--peers", required=True, help="n1=IP,n2=IP (the first is the owner)")
    ap.add_argument("--key-file", required=True, type=Path)
    ap.add_argument("--changes", type=int, default=SYNC_CHANGES)
    ap.add_argument("--rate", type=float, default=SYNC_RATE_PER_S)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--run-s", type=float, default=30.0)
    a = ap.parse_args(argv)
    peers = [tuple(p.split("=", 1)) for p in a.peers.split(",")]
    return asyncio.run(_sync_peer(a.node, [(n, ip) for n, ip in peers], a.key_file.read_bytes(), a.changes,
                                  a.rate, a.out, a.run_s))


def one_way_sync_latency(runs: int, progress: Progress) -> dict[str, Any]:
    """Owner change -> applied on the backup: two agent processes, two namespaces, one monotonic clock."""
    p50s: list[float] = []
    p99s: list[float] = []
    lost: list[float] = []
    with baselines.Topology() as topo:
        key = topo.tmp / "key"
        key.write_bytes(os.urandom(32))
        peers = f"n1={baselines.SENDER_IP},n2={baselines.GW_INSIDE_IP}"
        for i in range(runs):
            outs = {n: topo.tmp / f"{n}-{i}.json" for n in ("n1", "n2")}
            procs = {}
            for n, ns in (("n2", topo.gateway), ("n1", topo.sender)):
                procs[n] = topo.popen(ns, [sys.executable, "-m", "demos.bench", "sync-peer", "--node", n,
                                           "--peers", peers, "--key-file", str(key), "--out", str(outs[n])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs["n1"].wait(timeout=60)
            topo.stop(procs["n2"])
            owner = json.loads(outs["n1"].read_text())
            backup = json.loads(outs["n2"].read_text())
            if not owner["ready"] or not owner["sent"]:
                raise BenchError("the two sync agents did not form a cluster within 30 s")
            got = backup["applied"]
            lat = [(got[k] - t) * 1000 for k, t in owner["sent"].items() if k in got]
            if not lat:
                raise BenchError("no change reached the backup")
            p50s.append(percentile(lat, 50))
            p99s.append(p99(lat))
            lost.append(len(owner["sent"]) - len(lat))
            progress(f"one-way run {i + 1}/{runs}: p50 {p50s[-1]:.3f} ms, p99 {p99s[-1]:.3f} ms, "
                     f"{len(lat)}/{len(owner['sent'])} applied")
    return {"what": f"{SYNC_CHANGES} changes at {SYNC_RATE_PER_S}/s per run: owner's store change + "
                    "agent.changed() -> RecordApplied on the backup; two processes running the real "
                    "SyncAgent over UDP between two namespaces (veth), one shared monotonic clock",
            "p50_ms": summarize(p50s), "p99_ms": summarize(p99s), "not_applied": summarize(lost, 0)}


def bench_chaos(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    """Issue 7's chaos run: `runs` is the number of minutes of random kills, crashes and leaves."""
    from demos.chaos import run_chaos

    with bench_lab(lab, progress) as name:
        result = run_chaos(name, minutes=float(runs), seed=int(time.time()) % 10000, progress=progress)
    return {"what": f"{runs} minute(s) of random kill/crash/offline + revive under 100 TCP flows "
                    "and FTP sessions; a node is broken only while its backup is alive", **result}


BENCHES: dict[str, tuple[Callable[[int, str | None, Progress], dict[str, Any]], int]] = {
    "chaos": (bench_chaos, 2),
    "throughput": (bench_throughput, 3),
    "conn-rate": (bench_conn_rate, 3),
    "sync-latency": (bench_sync_latency, 3),
    "failover": (bench_failover, 5),
    "ftp": (bench_ftp, 3),
    "resync": (bench_resync, 3),
    "memory": (bench_memory, 3),
}


def run_bench(name: str, as_json: bool, lab: str | None, runs: int) -> int:
    """Run one bench; print its JSON (or a readable summary) on stdout. 0 when it ran."""
    if name not in BENCHES:
        sys.stderr.write(f"syncwall: no bench {name!r}; benches are {', '.join(BENCHES)}\n")
        return 2
    fn, default_runs = BENCHES[name]
    runs = runs or default_runs
    progress = Progress(name)
    t0 = time.monotonic()
    info = machine()
    progress(f"{runs} run(s) on {info['cpus']} CPUs ({info['cpu_model']}), load {info['loadavg_at_start']}")
    try:
        result = fn(runs, lab, progress)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        sys.stderr.write(f"syncwall: bench {name} could not run: {e}\n")
        return 1
    doc = {"bench": name, "runs": runs, "elapsed_s": round(time.monotonic() - t0, 1), "machine": info,
           "command": f"syncwall bench {name} --json --runs {runs}", **result}
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write("\n".join(readable(doc)) + "\n")
    return 0


def readable(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """The figures of a bench result as lines: `path: median [min-max] p99 (n runs)`."""
    lines: list[str] = []
    for k, v in doc.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and "median" in v and "samples" in v:
            if v["n"]:
                lines.append(f"{path}: {v['median']:g} [{v['min']:g}-{v['max']:g}] p99 {v['p99']:g} "
                             f"({v['n']} samples)")
            else:
                lines.append(f"{path}: no samples")
        elif isinstance(v, dict) and k != "machine":
            lines += readable(v, f"{path}.")
        elif prefix == "" and k in ("bench", "command", "what", "elapsed_s"):
            lines.append(f"{path}: {v}")
        elif isinstance(v, list) and k == "notes":
            lines += [f"{path}: {n}" for n in v]
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["sync-peer"]:
        sys.exit(sync_peer_main(sys.argv[2:]))
    sys.exit(run_bench(sys.argv[1], as_json="--json" in sys.argv, lab=None, runs=0))
