"""`syncwall bench throughput`: packets/s and TCP Mbit/s through one gateway and through the cluster."""

from __future__ import annotations

import os
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench.lab import Progress, bench_lab, iperf3, iperf3_server, lab_nodes, node_status
from demos.bench.stats import ratio, summarize


def bench_throughput(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    duration_s = float(os.environ.get("SWBENCH_DURATION_S", "3"))
    raw = baselines.measure(duration_s, runs, baselines.MODES, progress)
    s = raw["samples"]
    out: dict[str, Any] = {
        "what": "64-byte UDP packets/s and one TCP stream's Mbit/s through one gateway namespace "
                "(bench-owned sender/gateway/receiver), every mode measured in every run",
        "duration_s": duration_s, "udp_sender": raw.get("udp_sender"), "notes": raw["notes"],
        "modes": {m: {"pps": summarize(v["pps"], 0), "mbps": summarize(v["mbps"], 0),
                      "cpu_us_per_packet": summarize(v.get("cpu_us_per_packet", []), 2)}
                  for m, v in s.items()},
        "ratios": {},
    }
    pairs = {
        "engine_pps_vs_c": ("engine", "c", "pps"),
        "engine_nfqueue_pps_vs_c": ("engine-nfqueue", "c", "pps"),
        "engine_pps_vs_engine_nfqueue": ("engine", "engine-nfqueue", "pps"),
        "python_pps_vs_c": ("python", "c", "pps"),
        "c_pps_vs_kernel": ("c", "kernel", "pps"),
        "engine_mbps_vs_kernel": ("engine", "kernel", "mbps"),
        "engine_nfqueue_mbps_vs_kernel": ("engine-nfqueue", "kernel", "mbps"),
        "python_gso_mbps_vs_python": ("python-gso", "python", "mbps"),
        "python_gso_mbps_vs_kernel": ("python-gso", "kernel", "mbps"),
    }
    for name, (a, b, metric) in pairs.items():
        if a in s and b in s:
            out["ratios"][name] = ratio(s[a][metric], s[b][metric])
    out["targets"] = {"engine_pps_vs_c": ">= 1.0", "engine_mbps_vs_kernel": ">= 0.8",
                      "cluster_mbps_vs_kernel": ">= 0.6"}
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
    with bench_lab(lab, progress) as name, iperf3_server(name) as ip:
        for i in range(runs):
            try:
                doc = iperf3(name, ip, ["-P", str(CLUSTER_STREAMS)], duration_s)
                mbps.append(float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6)
            except (BenchError, ValueError, KeyError) as e:
                failures.append(str(e)[:200])
                progress(f"run {i + 1}/{runs} cluster: failed: {str(e)[:120]}")
                continue
            progress(f"run {i + 1}/{runs} cluster: {mbps[-1]:,.0f} Mbit/s over {CLUSTER_STREAMS} streams")
        # Evidence for slow or stalled runs: packets of a connection a node had no state for.
        counters: dict[str, int] = {}
        for n in lab_nodes(name):
            c = node_status(name, n).get("counters", {})
            for k in ("no-state", "released-by-timeout", "hold-pull"):
                counters[k] = counters.get(k, 0) + int(c.get(k, 0))
    return {"what": f"TCP through the default-topology lab, c1 -> s1, {CLUSTER_STREAMS} iperf3 streams "
                    "(spread over the nodes by HMARK), measured after the single-gateway modes",
            "mbps": summarize(mbps, 0), "samples_mbps": mbps, "failed_runs": failures,
            "node_counters": counters}
