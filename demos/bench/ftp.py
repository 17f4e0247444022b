"""`syncwall bench ftp`: cross-node active FTP sessions per sync policy, and how long PORTs are held."""

from __future__ import annotations

import os
import time
from typing import Any

from demos.bench.lab import (
    Progress,
    bench_lab,
    flows,
    lab_request,
    set_policy,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import summarize


def bench_ftp(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    sessions = int(os.environ.get("SWBENCH_SESSIONS", "8"))
    out: dict[str, Any] = {"what": f"{sessions} active-mode FTP sessions per run and policy; cross-node = "
                                   "the data connection landed on another node than the control one",
                           "policies": {}}
    with bench_lab(lab, progress) as name:
        for policy, interval in (("on-demand", 1000), ("hybrid", 1000), ("periodic", 60000)):
            set_policy(name, policy, interval)
            ok_cross: list[float] = []
            all_cross: list[float] = []
            succeeded: list[float] = []
            t_policy = time.time()
            for i in range(runs):
                started = traffic(name, "ftp", mode="active", sessions=sessions)
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
        set_policy(name, "hybrid", 1000)
        stop_traffic(name)
    out["notes"] = ["hold_ms: every PORT hold released (by ack or timeout) during the policy's runs, "
                    "from the nodes' 'release' timeline events; hold_ms.median/p99 are over all holds, "
                    "not per run; cross-node failures whose data connection never reached a node table "
                    "are counted as cross-node"]
    out["targets"] = {"hold_ms": "p50 <= 2, p99 <= 10"}
    return out
