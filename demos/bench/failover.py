"""`syncwall bench failover`: kill -9 of a node under long-lived TCP flows: detect, take over, survive."""

from __future__ import annotations

import os
import time
from typing import Any

from demos import flows as flow_judge
from demos.baselines import BenchError
from demos.bench.lab import (
    Progress,
    bench_lab,
    flows,
    lab_nodes,
    lab_request,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import summarize

SURVIVE_WAIT_S = 8.0
TAKEOVER_WAIT_S = 10.0
REVIVE_SETTLE_S = 2.0  # the revived node resyncs and takes its buckets back before the next kill


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
        traffic(name, "tcp", flows=n_flows)

        def tcp() -> list[dict[str, Any]]:
            return [f for f in flows(name, "tcp-") if f.get("kind") == "tcp"]

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
            # Judged from the takeover on: bytes moved before it prove nothing.
            since_t = float(lt["t"]) if lt is not None else time.time()
            verdict = flow_judge.judge(tcp, since_t, SURVIVE_WAIT_S, names=list(before), every_s=0.2)
            ok, lost = verdict.survived_names, verdict.lost_names
            victim_total.append(len(on_victim))
            victim_ok.append(len(ok & set(on_victim)))
            totals.append(len(before))
            survived.append(len(ok))
            timing = (f"detect {detect[-1]:.0f} ms, takeover {takeover[-1]:.0f} ms" if lt is not None
                      and detect else "no takeover")
            progress(f"run {i + 1}/{runs}: {timing}, "
                     f"{len(ok)}/{len(before)} flows survived, {len(lost)} lost "
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
