"""`syncwall bench conn-rate`: new TCP connections/s through one gateway and the cluster, sync on vs off."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench.lab import Progress, bench_lab, host_ns, in_host, lab_server_ip, run_in, set_policy
from demos.bench.stats import ratio, summarize

CONN_PORT_LAB = 5100  # inside the default rules' tcp 5000-5999
CONN_WORKERS = 4
STABLE_SPREAD = 0.15  # no ratio is printed until the kernel baseline's (max - min) / median is below
MIN_KERNEL_SAMPLES = 3  # one or two samples have no spread worth the name (one has none at all)
BATCH_MS = 5  # the batched mode's `batch_ms`: plain changes wait up to one 5 ms loop tick
# The cluster's modes, rotated run by run: (name, (policy, interval_ms, batch_ms)).
CLUSTER_MODES: list[tuple[str, tuple[str, int, int]]] = [
    ("sync_on_hybrid", ("hybrid", 1000, 0)),
    (f"sync_on_hybrid_batch_{BATCH_MS}ms", ("hybrid", 1000, BATCH_MS)),
    ("sync_off_periodic_60s", ("periodic", 60000, 0)),
]


def _time_wait(ns: str) -> int:
    """TCP sockets in TIME_WAIT in a namespace (the client's must stay near 0 for fresh ports)."""
    p = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htan", "state", "time-wait"],
                       capture_output=True, text=True, check=False)
    return len([ln for ln in p.stdout.splitlines() if ln.strip()])


def _relative_spread(values: list[float]) -> float | None:
    if not values:
        return None
    vals = sorted(values)
    mid = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    return round((vals[-1] - vals[0]) / mid, 3) if mid else None


def kernel_stable(samples: Sequence[float]) -> tuple[bool, str]:
    """Whether the kernel baseline was steady enough to print ratios against; if not, why.

    Steady: at least MIN_KERNEL_SAMPLES samples whose (max - min) / median is at most
    STABLE_SPREAD. A single sample's spread is 0, so `--runs 1` alone would always pass."""
    if len(samples) < MIN_KERNEL_SAMPLES:
        return False, (f"only {len(samples)} kernel sample(s); at least {MIN_KERNEL_SAMPLES} are needed "
                       f"to judge its spread (--runs {MIN_KERNEL_SAMPLES} or more)")
    spread = _relative_spread(list(samples))
    if spread is None or spread > STABLE_SPREAD:
        return False, (f"the kernel baseline's spread ({spread}) is above {STABLE_SPREAD} of its median, "
                       "so the machine was not steady enough to compare")
    return True, ""


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


def bench_conn_rate(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    local: dict[str, list[float]] = {"kernel": [], "engine": []}
    local_failed: dict[str, list[float]] = {m: [] for m in local}
    cluster: dict[str, list[float]] = {m: [] for m, _ in CLUSTER_MODES}
    cluster_failed: dict[str, list[float]] = {m: [] for m in cluster}
    notes: list[str] = []
    tw: dict[str, list[float]] = {"single_gateway_client": [], "cluster_client": []}
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
                # Paired and alternated: the first mode of a run goes second in the next.
                for mode in (list(local) if i % 2 == 0 else list(local)[::-1]):
                    with baselines.consumer(topo, mode, None, cfg):
                        out = baselines.run(["ip", "netns", "exec", topo.sender, str(exe), "client",
                                             baselines.RECEIVER_IP, str(baselines.IPERF_PORT),
                                             f"{duration_s:g}", str(CONN_WORKERS)], timeout_s=duration_s + 30)
                    rate, failed = _parse_conn_rate(out.stdout)
                    local[mode].append(rate)
                    local_failed[mode].append(failed)
                    tw["single_gateway_client"].append(_time_wait(topo.sender))
                    progress(f"run {i + 1}/{runs} single gateway, {mode}: {rate:,.0f} conn/s, "
                             f"{failed} failed, {tw['single_gateway_client'][-1]} client sockets "
                             "in TIME_WAIT")
            topo.stop(server)
        with bench_lab(lab, progress) as name:
            ip = lab_server_ip(name)
            server_p = subprocess.Popen(in_host(name, "s1", [str(exe), "server", str(CONN_PORT_LAB)]),
                                        stdout=subprocess.DEVNULL)
            try:
                baselines.wait_port(host_ns(name, "s1"), CONN_PORT_LAB)
                for i in range(runs):
                    # Rotated: each mode goes first in turn, so a drift of the machine spreads
                    # over every mode rather than one.
                    k = i % len(CLUSTER_MODES)
                    for mode, (policy, interval_ms, batch_ms) in CLUSTER_MODES[k:] + CLUSTER_MODES[:k]:
                        set_policy(name, policy, interval_ms, batch_ms)
                        time.sleep(0.5)  # every node has applied the policy
                        argv = [str(exe), "client", ip, str(CONN_PORT_LAB), f"{duration_s:g}",
                                str(CONN_WORKERS)]
                        out = run_in(name, "c1", argv, timeout_s=duration_s + 30)
                        rate, failed = _parse_conn_rate(out.stdout)
                        cluster[mode].append(rate)
                        cluster_failed[mode].append(failed)
                        tw["cluster_client"].append(_time_wait(host_ns(name, "c1")))
                        progress(f"run {i + 1}/{runs} cluster, {mode}: {rate:,.0f} conn/s, {failed} failed, "
                                 f"{tw['cluster_client'][-1]} client sockets in TIME_WAIT")
                set_policy(name, "hybrid", 1000, 0)
            finally:
                baselines.stop_process(server_p)
    notes.append("sync off = periodic policy with a 60 s interval (no sync during the measurement)")
    notes.append(f"batch_{BATCH_MS}ms: hybrid, and a plain change (no packet waits on it) may wait up to "
                 f"{BATCH_MS} ms to share a datagram with others (`syncwall policy hybrid --batch-ms "
                 f"{BATCH_MS}`); held packets never wait")
    notes.append(f"client and server: demos/cnfq/conn_rate.c, {CONN_WORKERS} client processes, each "
                 "connect + 16-byte echo + wait for the server's close + close, in a loop for "
                 f"{duration_s:g} s")
    notes.append("fresh client ports in every run: the server closes first, so TIME_WAIT stays on the "
                 "server's side and the client's ports are free at once (before, the client's ports "
                 "piled up in TIME_WAIT and the kernel baseline fell to ~450 conn/s, 28k ports / 60 s); "
                 "the client's TIME_WAIT count after each run is reported as evidence")
    off = cluster["sync_off_periodic_60s"]
    cost = [1 - a / b for a, b in zip(cluster["sync_on_hybrid"], off, strict=False) if b]
    batched = cluster[f"sync_on_hybrid_batch_{BATCH_MS}ms"]
    cost_batched = [1 - a / b for a, b in zip(batched, off, strict=False) if b]
    kernel_spread = _relative_spread(local["kernel"])
    stable, unstable_why = kernel_stable(local["kernel"])
    doc: dict[str, Any] = {
        "what": "new TCP connections/s (connect, echo, close)",
        "single_gateway": {m: summarize(v, 0) for m, v in local.items()},
        "single_gateway_failed_connections": {m: summarize(v, 0) for m, v in local_failed.items()},
        "cluster": {m: summarize(v, 0) for m, v in cluster.items()},
        "cluster_failed_connections": {m: summarize(v, 0) for m, v in cluster_failed.items()},
        "client_time_wait_after_run": {k: summarize(v, 0) for k, v in tw.items()},
        "kernel_relative_spread": kernel_spread,
        "kernel_stable": stable,
        "targets": {"sync_cost_fraction": "<= 0.05", "cluster_sync_on_vs_kernel": ">= 0.5",
                    "engine_vs_kernel": "none set (issue 13 sets the cluster's only)",
                    "kernel_relative_spread": f"<= {STABLE_SPREAD} over >= {MIN_KERNEL_SAMPLES} samples"},
        "notes": notes,
    }
    if stable:
        doc["sync_cost_fraction"] = summarize(cost, 3)
        doc[f"sync_cost_fraction_batch_{BATCH_MS}ms"] = summarize(cost_batched, 3)
        doc["engine_vs_kernel"] = ratio(local["engine"], local["kernel"])
        doc["cluster_sync_on_vs_kernel"] = ratio(cluster["sync_on_hybrid"], local["kernel"])
        doc[f"cluster_sync_on_batch_{BATCH_MS}ms_vs_kernel"] = ratio(batched, local["kernel"])
    else:
        notes.append(f"no ratio printed: {unstable_why}")
    return doc
