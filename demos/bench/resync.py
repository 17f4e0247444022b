"""`syncwall bench resync`: a joining node's bulk resync of N entries over the lab's real sync
segment (a 2-node lab of its own), with the simulator's figure beside it.

Lab: n2 is killed, so n1 owns every bucket; n1's table is filled with N synthetic own
connections (the `fill` control command of a `bench_fill` lab, engine/synthetic.py: real SYNs
come a few thousand a second, too slow for 1M); n2 is revived and joins. Its backup of n1 is
then N entries, all of them sent by n1's bulk resync. Timed: n2's "start" note (its socket is
bound, it begins joining) to its "resync complete" note, both on n2's clock; and the bench's
own clock from the revive request (the process's start and imports included). Sizes grow
within one lab (SWBENCH_RESYNC_SIZES, default 10000,100000,1000000): each fill adds to the last.
SWBENCH_RESYNC_SIM=0 skips the simulator part (its sizes: SWBENCH_RESYNC_SIM_SIZES),
SWBENCH_RESYNC_LAB=0 the lab part."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench.lab import Progress, bench_lab, lab_request, wait_until
from demos.bench.stats import summarize
from netns.record import RUN_ROOT
from syncwall_errors import SyncwallError

FILL_CHUNK = 100_000


def fill_store(store: Any, owner: str, n: int, buckets: Sequence[int]) -> None:
    from sync.records import Record, Scope

    for i in range(n):
        key = i.to_bytes(4, "big") + owner.encode().ljust(4, b"\0") + bytes(5)  # 13-byte 5-tuple key
        store.put_local(Record(key, Scope.NODE, owner, 1, buckets[i % len(buckets)],
                               [6, 3, 1000 + i, 5001, 1_700_000_000, 0], False))


def bench_resync_sim(runs: int, progress: Progress) -> dict[str, Any]:
    """A joining node's bulk resync of N entries, in the sync simulator (real agents, simulated links)."""
    from sync.agent import ResyncComplete
    from sync.sim import SimCluster

    sizes = [int(x) for x in os.environ.get("SWBENCH_RESYNC_SIM_SIZES", "10000,100000").split(",")]
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
            fill_store(sim.stores["n1"], "n1", n, sim.agents["n1"].owned_buckets)
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
            progress(f"simulator: {n} entries, run {i + 1}/{runs}: {walls[-1]:.2f} s wall, "
                     f"{sims[-1]:.3f} s simulated, {ev.records} received")
        out["sizes"][str(n)] = {"wall_s": summarize(walls), "simulated_s": summarize(sims),
                                "records_received": summarize(got, 0)}
    return out


def _node(lab: str, name: str, msg: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    reply = baselines.node_request(RUN_ROOT / lab / "nodes" / f"{name}.sock", msg, timeout_s)
    if not reply.get("ok", True):
        raise BenchError(f"{name} refused {msg.get('cmd')}: {reply.get('error')}")
    return reply


def _owns_all(lab: str) -> bool:
    st = _node(lab, "n1", {"cmd": "status"})
    return len(st["buckets"]) == len(st["view_buckets"])


def _fill_to(lab: str, n: int, progress: Progress) -> None:
    have = int(_node(lab, "n1", {"cmd": "status"})["own"])
    while have < n:
        count = min(FILL_CHUNK, n - have)
        have = int(_node(lab, "n1", {"cmd": "fill", "start": have, "count": count}, 60.0)["own"])
    progress(f"n1 holds {have:,} own connections")


def _resync_events(lab: str, since: float) -> tuple[float | None, dict[str, Any] | None]:
    """n2's start note and resync-complete note after `since` (wall clock), None if not yet."""
    try:
        evs = _node(lab, "n2", {"cmd": "events", "since": since}, 5.0)["events"]
    except (OSError, ValueError):
        return None, None  # not listening yet
    start = next((float(e["t"]) for e in evs if e.get("kind") == "start"), None)
    done = next((e for e in evs if e.get("step") == "resync-complete"), None)
    return start, done


def _rss_mb(lab: str, name: str) -> float:
    """A node process's VmRSS (the lab's nodes share our PID namespace)."""
    pid = int(_node(lab, name, {"cmd": "status"})["pid"])
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise BenchError(f"no VmRSS for {name} (pid {pid})")


def _one_join(lab: str, n: int, progress: Progress) -> dict[str, float]:
    lab_request(lab, {"cmd": "kill", "node": "n2"}, 30)
    wait_until("n1 owning every bucket", lambda: _owns_all(lab), 30, 0.05)
    _fill_to(lab, n, progress)
    t0 = time.time()
    lab_request(lab, {"cmd": "revive", "node": "n2"}, 30)
    timeout_s = 30 + n / 10_000
    start, done = wait_until(f"n2's resync of {n:,} entries", lambda: (ev := _resync_events(lab, t0))[1]
                             and ev, timeout_s, 0.02)
    assert done is not None and start is not None
    got = int(done.get("records", 0))
    if got < n:
        # A resync that counts fewer records than n1 holds means n2 stopped waiting for n1
        # (it thought n1 had failed) and went on alone: not a figure to quote.
        raise BenchError(f"n2 resynced {got:,} of {n:,} records: it went on without n1 (missed heartbeats?)")
    return {"join_to_resynced_s": float(done["t"]) - start, "revive_to_resynced_s": float(done["t"]) - t0,
            "records": got, "n1_rss_mb": _rss_mb(lab, "n1"), "n2_rss_mb": _rss_mb(lab, "n2")}


def bench_resync_lab(runs: int, sizes: Sequence[int], progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # The bench's own lab, 2 nodes; `bench_fill` lets a node take synthetic entries.
    with bench_lab(None, progress, settings="bench_fill = true\n", overrides={"nodes": 2}) as lab:
        try:
            for n in sorted(sizes):
                samples: list[dict[str, float]] = []
                try:
                    for i in range(runs):
                        samples.append(_one_join(lab, n, progress))
                        progress(f"lab: {n:,} entries, run {i + 1}/{runs}: join -> resynced "
                                 f"{samples[-1]['join_to_resynced_s']:.3f} s (revive -> resynced "
                                 f"{samples[-1]['revive_to_resynced_s']:.2f} s), RSS n1 "
                                 f"{samples[-1]['n1_rss_mb']:.0f} MB, n2 {samples[-1]['n2_rss_mb']:.0f} MB, "
                                 f"load {os.getloadavg()[0]:.1f}")
                except BenchError as e:
                    # A larger size will not do better: say what failed and stop here.
                    progress(f"lab: {n:,} entries: {e}")
                    out[str(n)] = {"error": str(e), "completed_runs": len(samples)}
                    break
                out[str(n)] = {k: summarize([s[k] for s in samples]) for k in samples[0]}
                out[str(n)]["loadavg"] = round(os.getloadavg()[0], 2)
        except SyncwallError as e:
            raise BenchError(f"lab {lab!r}: {e}") from e
    return out


def bench_resync(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    """The real sync segment first, then the simulator's figure beside it."""
    if lab:
        raise BenchError("bench resync starts a 2-node lab of its own (bench_fill); drop --lab")
    sizes = [int(x) for x in os.environ.get("SWBENCH_RESYNC_SIZES", "10000,100000,1000000").split(",")]
    doc: dict[str, Any] = {
        "what": "a joining node's bulk resync of N entries: n2 rejoins a 2-node lab where n1 owns N "
                "(synthetic) connections that n2 will back up; time from n2's start note to its "
                "resync-complete note (n2's clock), and from the bench's revive request",
        "where": "the lab's sync segment (veth, two node processes, SCHED_RR)",
        "targets": {"100000": "join_to_resynced_s <= 0.5", "1000000": "join_to_resynced_s <= 5"},
    }
    if os.environ.get("SWBENCH_RESYNC_LAB", "1") != "0":
        doc["lab"] = bench_resync_lab(runs, sizes, progress)
    if os.environ.get("SWBENCH_RESYNC_SIM", "1") != "0":
        doc["simulator"] = bench_resync_sim(runs, progress)
    return doc
