"""`syncwall bench false-failover --minutes M`: no node may be declared failed that was not killed,
however busy the host is.

For M minutes the lab carries the throughput bench's cluster load (iperf3 c1 -> s1, the same
streams, back to back) while CPU hogs compete with the engines for the host's cores: one busy
loop per CPU by default (SWBENCH_HOGS), or, with SWBENCH_HOG=chromium and a headless chromium
installed, a render loop of it. Nothing is killed, crashed or cut, so every `peer-down` event a
node notes (it declared a peer failed, by missed heartbeats or a closed link) is a false
declaration, and every takeover that moved connections is a false failover. Counted from the
nodes' own events as the lab daemon collects them, read every load chunk so none ages out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench.lab import Progress, bench_lab, iperf3, iperf3_server, lab_nodes, lab_request
from demos.bench.stats import summarize
from demos.bench.throughput import CLUSTER_STREAMS
from netns.lab import load_lab_of

CHUNK_S = 30.0  # one iperf3 run; the events are read between two
FAILING = ("kill", "crash", "offline")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "headless_shell")
# A page that keeps a renderer busy: it redraws a canvas full of gradients as fast as it can.
RENDER_PAGE = ("data:text/html,<canvas id=c width=1600 height=1200></canvas><script>"
               "const x=document.getElementById('c').getContext('2d');function f(){for(let i=0;i<400;i++)"
               "{const g=x.createLinearGradient(0,0,1600,Math.random()*1200);g.addColorStop(0,'red');"
               "g.addColorStop(1,'blue');x.fillStyle=g;x.fillRect(Math.random()*1600,Math.random()*1200,"
               "300,300)}requestAnimationFrame(f)}f()</script>")


def _hogs(progress: Progress) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Start the CPU hogs on the host (CPU is shared by every namespace); what they are."""
    n = int(os.environ.get("SWBENCH_HOGS", str(os.cpu_count() or 1)))
    if os.environ.get("SWBENCH_HOG", "busy") == "chromium":
        exe = next((p for c in CHROMIUM if (p := shutil.which(c))), None)
        if exe is None:
            raise BenchError("SWBENCH_HOG=chromium but no chromium is installed")
        argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=/tmp/swbench-chromium",
                "--virtual-time-budget=600000000", "--dump-dom", RENDER_PAGE]
        what = f"{n} headless chromium render loop(s) ({exe})"
    else:
        argv = [sys.executable, "-c", "while True: pass"]
        what = f"{n} busy-loop process(es) at the engines' priority"
    progress(f"CPU hog: {what}")
    return [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(n)], what


def _events(lab: str, since: float) -> list[dict[str, Any]]:
    snap = lab_request(lab, {"cmd": "snapshot", "since": since, "max_events": 100000}, 30)
    return [e for e in snap.get("events", []) if float(e.get("t", 0)) > since]


def false_declarations(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(peer-down events for a peer nobody failed, takeovers that moved connections meanwhile)."""
    failed: set[str] = set()
    false_down: list[dict[str, Any]] = []
    false_take: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: float(e.get("t", 0))):
        kind, node = e.get("kind"), str(e.get("node", ""))
        if kind == "action":
            act = str(e.get("action", ""))
            if act in FAILING:
                failed.add(node)
            elif act == "revive":
                failed.discard(node)
        elif kind == "peer-down" and str(e.get("peer", "")) not in failed:
            false_down.append(e)
        elif kind == "takeover" and "detect_to_accept_ms" in e and int(e.get("promoted") or 0) and not failed:
            false_take.append(e)
    return false_down, false_take


def bench_false_failover(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    minutes = float(os.environ.get("SWBENCH_MINUTES", "10"))
    mbps: list[float] = []
    events: list[dict[str, Any]] = []
    failures: list[str] = []
    load: list[float] = []
    with bench_lab(lab, progress) as name, iperf3_server(name) as ip:
        spec = load_lab_of(name)
        hogs, what = _hogs(progress)
        t_start = since = time.time()
        end = time.monotonic() + minutes * 60
        try:
            while (left := end - time.monotonic()) > 1:
                try:
                    doc = iperf3(name, ip, ["-P", str(CLUSTER_STREAMS)], min(CHUNK_S, left))
                    mbps.append(float(doc["end"]["sum_received"]["bits_per_second"]) / 1e6)
                except (BenchError, KeyError, ValueError) as err:
                    failures.append(str(err)[:200])
                got = _events(name, since)
                events += got
                since = max([since, *(float(e["t"]) for e in got)])
                load.append(os.getloadavg()[0])
                down, take = false_declarations(events)
                states = {n: s["state"] for n, s in lab_nodes(name).items()}
                progress(f"{(time.time() - t_start) / 60:4.1f} min: {mbps[-1] if mbps else 0:,.0f} Mbit/s, "
                         f"load {load[-1]:.1f}, false declarations {len(down)}, false takeovers "
                         f"{len(take)}, nodes {states}")
        finally:
            for h in hogs:
                baselines.stop_process(h)
    down, take = false_declarations(events)
    pairs: dict[str, int] = {}
    for e in down:
        key = f"{e.get('node')}->{e.get('peer')}" + (" (link closed)" if e.get("closed") else "")
        pairs[key] = pairs.get(key, 0) + 1
    return {
        "what": f"{minutes:g} minute(s) of the throughput bench's cluster load (iperf3 c1 -> s1, "
                f"{CLUSTER_STREAMS} streams, {CHUNK_S:g} s runs back to back) plus {what}; nothing "
                "killed: every peer-down event is a node declared failed that was not, every "
                "takeover moving connections a false failover",
        "command": f"syncwall bench false-failover --json --minutes {minutes:g}",
        "minutes": minutes, "heartbeat_ms": spec.heartbeat_ms, "miss_limit": spec.miss_limit,
        "false_declarations": len(down),
        "false_declarations_closed": sum(bool(e.get("closed")) for e in down),
        "false_declarations_by_pair": pairs, "false_takeovers": len(take),
        "first_false": [{k: e.get(k) for k in ("t", "node", "peer", "closed", "text")} for e in down[:10]],
        "load_mbps": summarize(mbps, 0), "loadavg_1m": summarize(load, 2), "failed_chunks": failures,
        "events_read": len(events),
        "targets": {"false_declarations": "0", "false_takeovers": "0"},
    }

