"""`syncwall bench lossless`: what keeping the lossless window costs in steady state, lossless
off and on alternated in the same lab and the same run.

With lossless on, every backup also queues the packets of the buckets it backs up, holds them
a window and drops them: each packet crosses two engines' NFQUEUE instead of one. The cost
shows as engine CPU per packet and, once a node saturates, as throughput. Measured here:
TCP Mbit/s (iperf3, c1 -> s1, 3 streams), 64-byte UDP packets/s received (iperf3 -u at full
rate) and the CPU seconds the node processes spent during each run (utime + stime from
/proc/PID/stat), per second and per million packets crossing the cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from demos.baselines import BenchError
from demos.bench.lab import (
    Progress,
    bench_lab,
    iperf3,
    iperf3_server,
    lab_nodes,
    lab_request,
    node_status,
)
from demos.bench.stats import ratio, summarize

MODES = (("lossless_off", False), ("lossless_on", True))
STREAMS = 3
UDP_LEN = 64 - 28  # payload of a 64-byte IPv4 UDP packet
CLK_TCK = os.sysconf("SC_CLK_TCK")


def node_cpu_s(lab: str) -> float:
    """CPU seconds (user + system) the lab's node processes have used so far."""
    total = 0.0
    for n in lab_nodes(lab).values():
        pid = n.get("pid")
        if not pid:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def _held(lab: str) -> int:
    return sum(int(node_status(lab, n).get("lossless", {}).get("held", 0)) for n in lab_nodes(lab))


VERDICT_COUNTERS = ("nfq_singles", "nfq_batches", "nfq_rewrites", "nfq_batch_drops",
                    "shadow_nfq_singles", "shadow_nfq_batches", "shadow_nfq_rewrites",
                    "shadow_nfq_batch_drops")


def _verdict_msgs(lab: str) -> int:
    """Verdict messages the nodes have sent so far (single, batch, rewrite; both queues)."""
    total = 0
    for n in lab_nodes(lab):
        nfq = node_status(lab, n).get("nfq") or {}
        total += sum(int(nfq.get(k, 0)) for k in VERDICT_COUNTERS)
    return total


def measure(runs: int, lab: str | None, progress: Progress, duration_s: float) -> dict[str, Any]:
    """Every run measures both modes, alternating which goes first (the machine's drift hits both)."""
    samples: dict[str, dict[str, list[float]]] = {
        m: {"mbps": [], "tcp_cpu_s_per_s": [], "pps": [], "udp_cpu_s_per_s": [], "cpu_us_per_packet": [],
            "held_per_s": [], "verdict_msgs_per_packet": []} for m, _ in MODES}
    failures: list[str] = []
    with bench_lab(lab, progress) as name:
        was_on = bool(lab_request(name, {"cmd": "status"}).get("lossless", False))
        with iperf3_server(name) as ip:
            for i in range(runs):
                order = MODES if i % 2 == 0 else MODES[::-1]
                for mode, on in order:
                    lab_request(name, {"cmd": "lossless", "on": on})
                    time.sleep(0.5)  # every node has queued (or stopped queueing) its backed-up buckets
                    s = samples[mode]
                    try:
                        c0, h0, t0 = node_cpu_s(name), _held(name), time.monotonic()
                        doc = iperf3(name, ip, ["-P", str(STREAMS)], duration_s)
                        c1, h1, t1 = node_cpu_s(name), _held(name), time.monotonic()
                        s["mbps"].append(float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6)
                        s["tcp_cpu_s_per_s"].append((c1 - c0) / (t1 - t0))
                        s["held_per_s"].append((h1 - h0) / (t1 - t0))
                        c0, t0, v0 = node_cpu_s(name), time.monotonic(), _verdict_msgs(name)
                        doc = iperf3(name, ip, ["-u", "-b", "0", "-l", str(UDP_LEN)], duration_s)
                        c1, t1, v1 = node_cpu_s(name), time.monotonic(), _verdict_msgs(name)
                        end = doc["end"]["sum"]
                        got = int(end["packets"]) - int(end.get("lost_packets", 0))
                        secs = float(end["seconds"]) or duration_s
                        s["pps"].append(got / secs)
                        s["udp_cpu_s_per_s"].append((c1 - c0) / (t1 - t0))
                        if got:
                            s["cpu_us_per_packet"].append((c1 - c0) / got * 1e6)
                            s["verdict_msgs_per_packet"].append((v1 - v0) / got)
                    except (BenchError, ValueError, KeyError) as e:
                        failures.append(f"{mode}: {str(e)[:200]}")
                        progress(f"run {i + 1}/{runs} {mode}: failed: {str(e)[:120]}")
                        continue
                    progress(f"run {i + 1}/{runs} {mode}: TCP {s['mbps'][-1]:,.0f} Mbit/s at "
                             f"{s['tcp_cpu_s_per_s'][-1]:.2f} CPU; UDP 64 B {s['pps'][-1]:,.0f} pps at "
                             f"{s['udp_cpu_s_per_s'][-1]:.2f} CPU")
            ends = {n: node_status(name, n) for n in lab_nodes(name)}
            nfq_end = {n: {"nfq": st.get("nfq") or {}, "gc": st.get("gc") or {}} for n, st in ends.items()}
            lab_request(name, {"cmd": "lossless", "on": was_on})  # as the lab was
    off, on_ = samples["lossless_off"], samples["lossless_on"]
    return {
        "what": "steady-state cost of lossless takeover: lossless off and on alternated in one lab, "
                f"TCP (iperf3, {STREAMS} streams c1 -> s1) and 64-byte UDP (iperf3 -u -b 0) through "
                "the 3-node cluster, with the node processes' CPU seconds per second of the run",
        "duration_s": duration_s,
        "modes": {m: {k: summarize(v, 3 if "cpu" in k or "per_packet" in k else 0)
                      for k, v in samples[m].items()} for m, _ in MODES},
        "ratios": {
            "mbps_on_vs_off": ratio(on_["mbps"], off["mbps"]),
            "pps_on_vs_off": ratio(on_["pps"], off["pps"]),
            "tcp_cpu_on_vs_off": ratio(on_["tcp_cpu_s_per_s"], off["tcp_cpu_s_per_s"]),
            "cpu_per_packet_on_vs_off": ratio(on_["cpu_us_per_packet"], off["cpu_us_per_packet"]),
        },
        "failed_runs": failures,
        "nfq_counters_at_end": nfq_end,
        "notes": ["CPU: the three node processes together (2 cores on this machine); the clients, "
                  "the server and iperf3 are not counted",
                  "held_per_s: packets the backups held for the window (lossless on), 0 when off",
                  "verdict_msgs_per_packet: NFQUEUE verdict messages the nodes sent (single, batch, "
                  "rewrite, both queues) per 64-byte packet delivered"],
    }


def bench_lossless(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    return measure(runs, lab, progress, float(os.environ.get("SWBENCH_DURATION_S", "3")))
