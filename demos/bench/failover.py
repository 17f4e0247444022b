"""`syncwall bench failover`: kill -9 of a node under long-lived TCP flows: detect, take over, survive;
with lossless takeover off and on side by side (the pauses flows see, the clients' TCP retransmissions)."""

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
    run_in,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import percentile, summarize

SURVIVE_WAIT_S = 8.0
TAKEOVER_WAIT_S = 10.0
REVIVE_SETTLE_S = 2.0  # the revived node resyncs and takes its buckets back before the next kill


def _detected_at(lab: str, victim: str, since: float) -> float | None:
    """When a node first noted the victim's heartbeats missing (its 'peer-down' timeline event)."""
    snap = lab_request(lab, {"cmd": "snapshot", "since": since, "max_events": 100000})
    times = [float(e["t"]) for e in snap.get("events", []) if e.get("kind") == "peer-down"
             and e.get("peer") == victim and float(e.get("t", 0)) >= since]
    return min(times) if times else None


CLIENTS = ("c1",)  # where the bench's flows start (the retransmissions are counted there)
SERVERS = ("s1",)
MODES = (("lossless_off", False), ("lossless_on", True))


def retrans_segs(lab: str, host: str) -> int:
    """RetransSegs of the TCP MIB in a host's namespace (/proc/net/snmp is per namespace)."""
    lines = [ln.split() for ln in run_in(lab, host, ["cat", "/proc/net/snmp"], 10).stdout.splitlines()
             if ln.startswith("Tcp:")]
    if len(lines) < 2 or "RetransSegs" not in lines[0]:
        raise BenchError(f"no TCP RetransSegs counter in {host}'s /proc/net/snmp")
    return int(lines[1][lines[0].index("RetransSegs")])


def _retrans(lab: str, hosts: tuple[str, ...]) -> int:
    return sum(retrans_segs(lab, h) for h in hosts)


def _pauses(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "flows": 0}
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values),
            "flows": len(values)}


def bench_failover(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    with bench_lab(lab, progress) as name:
        for mode, on in MODES:
            lab_request(name, {"cmd": "lossless", "on": on})
            progress(f"{mode}: {runs} kill(s)")
            modes[mode] = _bench_mode(name, runs, progress, mode)
    both = modes["lossless_on"]
    return {
        "what": "kill -9 of a node under long-lived TCP flows, lossless takeover off then on (each "
                "mode its own fresh flows per run); detect = kill request -> the first peer-down "
                "event for it; takeover = kill request -> a backup accepting the dead node's buckets "
                "(state promoted first; with lossless on its held packets replayed at that moment); "
                "a flow survived when it carried data again after the takeover and never broke; "
                "pause = a flow's longest wait for an echo (ms), over the run; retransmissions = "
                "RetransSegs of the clients' (and servers') namespaces, from just before the kill to "
                "the end of the judging, beside a baseline of the same length without a kill",
        **{k: both[k] for k in ("detect_ms", "takeover_ms", "flows_total", "flows_survived",
                                "victim_flows", "victim_flows_survived", "takeovers",
                                "runs_without_takeover")},
        "modes": modes,
        "targets": {"takeover_ms": "median <= 20", "flows_survived": "= flows_total",
                    "lossless_on.pause_ms": "p99 <= 50",
                    "lossless_on.client_retrans_by_kill": "0 (delta minus baseline)"},
    }


def _bench_mode(name: str, runs: int, progress: Progress, mode: str) -> dict[str, Any]:
    n_flows = int(os.environ.get("SWBENCH_FLOWS", "100"))
    # SWBENCH_IPV6=1: the flows go to s1's IPv6 address (the dual-stack default lab).
    ipv6 = os.environ.get("SWBENCH_IPV6", "") == "1"
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
            traffic(name, "tcp", flows=n_flows, ipv6=True)
        else:
            traffic(name, "tcp", flows=n_flows)
        wait_until(f"{n_flows} healthy, mapped flows", steady, 60, 0.2)
        # Flows a previous run broke stay broken: each run judges the flows healthy at its start.
        try:
            healthy_now = wait_until("healthy, mapped flows", lambda: steady(strict=False), 30, 0.2)
        except BenchError:
            progress(f"run {i + 1}/{runs}: no healthy flow mapped to {victim}; stopping here")
            break
        before = {f["name"]: f for f in healthy_now}
        on_victim = [k for k, f in before.items() if f.get("node") == victim]
        # The background: retransmissions over a quiet interval as long as the kill's window.
        t_base = time.monotonic()
        base0 = _retrans(name, CLIENTS)
        time.sleep(flow_judge.WATCH_S + 0.5)
        base = _retrans(name, CLIENTS) - base0
        base_s = time.monotonic() - t_base
        r0, s0 = _retrans(name, CLIENTS), _retrans(name, SERVERS)
        t_kill = time.monotonic()
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
                                                     "apply_ms", "replayed")})
            found = _detected_at(name, victim, killed_at)
            if found is not None:
                detect.append((found - killed_at) * 1000)
        # Judged from the takeover on: bytes moved before it prove nothing.
        since_t = float(lt["t"]) if lt is not None else time.time()
        verdict = flow_judge.judge(tcp, since_t, SURVIVE_WAIT_S, names=list(before), every_s=0.2)
        ok, lost = verdict.survived_names, verdict.lost_names
        delta = _retrans(name, CLIENTS) - r0
        server_retrans.append(_retrans(name, SERVERS) - s0)
        kill_s = time.monotonic() - t_kill
        retrans.append(delta)
        retrans_base.append(round(base * kill_s / base_s) if base_s > 0 else base)
        if lt is not None:
            replayed.append(int(lt.get("replayed") or 0))
        pauses += [float(f.get("longest_pause_ms") or 0) for f in tcp() if f["name"] in before]
        victim_total.append(len(on_victim))
        victim_ok.append(len(ok & set(on_victim)))
        totals.append(len(before))
        survived.append(len(ok))
        timing = (f"detect {detect[-1]:.0f} ms, takeover {takeover[-1]:.0f} ms" if lt is not None
                  and detect else "no takeover")
        progress(f"{mode} run {i + 1}/{runs}: {timing}, retransmissions {delta} "
                 f"(baseline {retrans_base[-1]}), longest pause {max(pauses or [0]):.0f} ms, "
                 f"{len(ok)}/{len(before)} flows survived, {len(lost)} lost "
                 f"({victim_ok[-1]}/{len(on_victim)} of those on {victim} survived)")
        lab_request(name, {"cmd": "revive", "node": victim}, 30)
        wait_until(f"{victim} active again", lambda: (n := lab_nodes(name)[victim])["state"] == "active"
                   and n["buckets"], 30, 0.1)
        time.sleep(REVIVE_SETTLE_S)
    stop_traffic(name)
    by_kill = [max(0, r - b) for r, b in zip(retrans, retrans_base, strict=True)]
    return {
        "pause_ms": _pauses(pauses),
        "client_retrans": retrans, "client_retrans_baseline": retrans_base,
        "client_retrans_by_kill": by_kill, "server_retrans": server_retrans,
        "replayed": summarize(replayed, 0),
        "detect_ms": summarize(detect, 1), "takeover_ms": summarize(takeover, 1),
        "flows_total": summarize(totals, 0), "flows_survived": summarize(survived, 0),
        "victim_flows": summarize(victim_total, 0), "victim_flows_survived": summarize(victim_ok, 0),
        "takeovers": takeovers, "runs_without_takeover": no_takeover,
        "ip_version": 6 if ipv6 else 4,
    }
