"""`syncwall bench scale`: how the cluster's cost grows with nodes and with connections.

Nodes: for 3, 6, 12 and 16 nodes (SWBENCH_SCALE_NODES), a lab of its own comes up (`up`
time, until every node is active with its buckets), idles (the lab's steady CPU: every
recorded process's utime + stime from /proc, over SWBENCH_SCALE_IDLE_S, in cores) and goes
down again (`down` time).

Connections: a fresh Python process holds what a node holds for each own TCP connection (the
engine's entry, created by a real SYN through `Engine.process`; the sync agent reads its
records from that same table); its VmRSS before and after 10k, 100k and 1M entries
(SWBENCH_SCALE_ENTRIES) is the node process's growth. A fresh process per size, so one size's
freed memory does not hide the next one's.

A real node's memory beside it: a 2-node lab of its own (`bench_fill = true`, as `bench resync`)
kills n2 so n1 owns every bucket and carries no traffic (the idle node); n1's VmRSS idle, then
after its table is filled (the `fill` control command) to each of SWBENCH_SCALE_LAB_ENTRIES
(default 10000,100000,1000000; each adds to the last). A size whose fill would take longer than
SWBENCH_SCALE_LAB_FILL_S (default 120 s, estimated from the last size's rate) is skipped and
said so. SWBENCH_SCALE_LAB_ENTRIES= (empty) skips the lab part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demos.baselines import BenchError
from demos.bench.lab import Progress, bench_lab, lab_nodes, lab_request, wait_until
from demos.bench.resync import _fill_to, _node, _owns_all, _rss_mb
from demos.bench.stats import summarize
from netns import lab as lab_life
from netns.record import RUN_ROOT, LabRecord, proc_start_time
from syncwall_errors import SyncwallError

SCALE_LAB = "swscale"
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def _lab_pids(lab: str) -> list[int]:
    rec = LabRecord.load(RUN_ROOT / lab)
    return [p.pid for p in rec.processes if proc_start_time(p.pid) == p.start_time]


def _one_size(nodes: int, idle_s: float, progress: Progress) -> dict[str, float]:
    if (RUN_ROOT / SCALE_LAB / "record.json").exists():
        raise BenchError(f"a lab {SCALE_LAB!r} exists (another bench?); `syncwall --lab {SCALE_LAB} down`")
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        lab_file = Path(tmp) / "lab.toml"
        lab_file.write_text(f'name = "{SCALE_LAB}"\n')
        t0 = time.monotonic()
        try:
            lab_life.up(SCALE_LAB, lab_file, {"nodes": nodes})
            wait_until(f"{nodes} active nodes", lambda: (ns := lab_nodes(SCALE_LAB)) and len(ns) == nodes
                       and all(n["state"] == "active" and n["buckets"] for n in ns.values()), 60)
            up_s = time.monotonic() - t0
            pids = _lab_pids(SCALE_LAB)
            c0, w0 = _cpu_ticks(pids), time.monotonic()
            time.sleep(idle_s)
            cores = (_cpu_ticks(pids) - c0) / TICKS / (time.monotonic() - w0)
        finally:
            t1 = time.monotonic()
            try:
                lab_life.down(SCALE_LAB, say=progress)
            except SyncwallError as e:
                progress(f"down failed ({e}); cleaning by record")
                lab_life.clean(SCALE_LAB)
            down_s = time.monotonic() - t1
    progress(f"{nodes} nodes: up {up_s:.1f} s, idle {cores * 100:.1f}% of a core, down {down_s:.1f} s")
    return {"up_s": round(up_s, 2), "idle_cores": round(cores, 3), "down_s": round(down_s, 2),
            "processes": len(pids)}


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError("no VmRSS in /proc/self/status")


def rss_growth(entries: int) -> dict[str, float]:
    """In this process: VmRSS before and after `entries` own connections in the engine's table,
    which is also the sync agent's store of them (engine/store.py: no second copy)."""
    from engine.bench import SERVER, _client, ipv4_tcp
    from engine.core import Engine
    from engine.rules import default_rules

    engine = Engine("n1", default_rules())
    before = _rss_kb()
    t0 = time.monotonic()
    for i in range(entries):
        c, sport = _client(i)
        engine.process(ipv4_tcp(c, SERVER, sport, 5000 + i % 1000, 0x02), 1.0, 1)
        if i % 4096 == 4095:
            engine.drain_events()
    engine.drain_events()
    after = _rss_kb()
    held = len(engine.table.conns)
    return {"entries": entries, "held": held, "rss_before_mb": round(before / 1024, 1),
            "rss_after_mb": round(after / 1024, 1),
            "mb_per_100k": round((after - before) / 1024 / entries * 100_000, 1),
            "fill_s": round(time.monotonic() - t0, 1)}


def lab_node_rss(entries: list[int], budget_s: float, progress: Progress) -> dict[str, Any]:
    """n1's VmRSS in a real 2-node lab, idle and after filling its table to each size (n2 killed,
    so n1 owns every bucket and sends nothing to a backup: its own connections only)."""
    out: dict[str, Any] = {"budget_s": budget_s, "sizes": []}
    with bench_lab(None, progress, settings="bench_fill = true\n", overrides={"nodes": 2}) as lab:
        try:
            lab_request(lab, {"cmd": "kill", "node": "n2"}, 30)
            wait_until("n1 owning every bucket", lambda: _owns_all(lab), 30, 0.05)
            time.sleep(1.0)  # let the takeover's own allocations settle
            idle = _rss_mb(lab, "n1")
            out["idle_rss_mb"] = idle
            progress(f"lab node n1, idle: RSS {idle:.1f} MB")
            have, rate = 0, 0.0
            for n in sorted(entries):
                if rate and (n - have) / rate > budget_s:
                    progress(f"lab node: {n:,} skipped (its fill would take ~{(n - have) / rate:.0f} s, "
                             f"over {budget_s:g} s)")
                    out["sizes"].append({"entries": n, "skipped": f"fill estimated at "
                                         f"{(n - have) / rate:.0f} s > {budget_s:g} s"})
                    continue
                t0 = time.monotonic()
                _fill_to(lab, n, progress)
                took = time.monotonic() - t0
                rate = (n - have) / max(took, 1e-3)
                have = n
                time.sleep(0.5)
                rss = _rss_mb(lab, "n1")
                held = int(_node(lab, "n1", {"cmd": "status"})["own"])
                row = {"entries": n, "held": held, "rss_mb": rss,
                       "mb_per_100k": round((rss - idle) / n * 100_000, 1), "fill_s": round(took, 1)}
                out["sizes"].append(row)
                progress(f"lab node n1 at {n:,} own connections: RSS {rss:.1f} MB "
                         f"(+{rss - idle:.1f}, {row['mb_per_100k']} MB per 100k), fill {took:.1f} s")
        except SyncwallError as e:
            raise BenchError(f"lab {lab!r}: {e}") from e
    return out


def bench_scale(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    if lab:
        raise BenchError("bench scale starts labs of its own sizes; drop --lab")
    sizes = [int(x) for x in os.environ.get("SWBENCH_SCALE_NODES", "3,6,12,16").split(",")]
    entries = [int(x) for x in os.environ.get("SWBENCH_SCALE_ENTRIES", "10000,100000,1000000").split(",")]
    idle_s = float(os.environ.get("SWBENCH_SCALE_IDLE_S", "5"))
    by_size: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for r in range(runs):
        for n in sizes:
            progress(f"run {r + 1}/{runs}: a lab of {n} nodes")
            by_size[n].append(_one_size(n, idle_s, progress))
    nodes_doc = {str(n): {k: summarize([s[k] for s in samples], 2) for k in ("up_s", "idle_cores", "down_s")}
                 for n, samples in by_size.items()}
    rss: list[dict[str, Any]] = []
    for e in entries:
        progress(f"node memory at {e:,} connections (a fresh process)")
        probe = f"import json; from demos.bench.scale import rss_growth; print(json.dumps(rss_growth({e})))"
        p = subprocess.run([sys.executable, "-c", probe],
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise BenchError(f"the memory probe failed at {e} entries: {p.stderr.strip()[-400:]}")
        rss.append(json.loads(p.stdout))
        progress(f"{e:,} connections: RSS +{rss[-1]['rss_after_mb'] - rss[-1]['rss_before_mb']:.0f} MB "
                 f"({rss[-1]['mb_per_100k']} MB per 100k)")
    lab_entries = [int(x) for x in os.environ.get(
        "SWBENCH_SCALE_LAB_ENTRIES", "10000,100000,1000000").split(",") if x.strip()]
    lab_rss = (lab_node_rss(lab_entries, float(os.environ.get("SWBENCH_SCALE_LAB_FILL_S", "120")), progress)
               if lab_entries else None)
    return {
        "what": "up (until every node is active with buckets), idle CPU of the lab's processes (cores) "
                "and down, per node count; a node process's memory per own connection "
                "(engine entry from a real SYN; the sync agent's store is that table), "
                "VmRSS of a fresh process; lab_node_memory: a real lab node's VmRSS, idle (2-node lab, "
                "n2 killed, n1 owning every bucket) and after `fill` to each size",
        "nodes": nodes_doc,
        "memory": rss,
        "lab_node_memory": lab_rss,
        "targets": {"16 nodes up_s": "<= 10", "mb_per_100k": "<= 40"},
    }
