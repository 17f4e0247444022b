"""`syncwall bench sync-latency`: one-way sync latency between two real agents, and the lab's ack round trip.

`python -m demos.bench sync-peer ...` is one of the two agent processes (run by the bench itself)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from demos.bench.lab import (
    Progress,
    bench_lab,
    flows,
    lab_nodes,
    node_status,
    set_policy,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import p99, percentile, summarize

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
    def ready() -> bool:
        return agent.mode is Mode.ACTIVE and all(
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


def _burst_lab(lab: str, count: int, rate: int = 100000) -> tuple[float, int]:
    """(connections/s, failed connections) of one burst through the cluster."""
    started = traffic(lab, "burst", count=count, rate=rate)
    name = str(started.get("name", "burst"))
    done = wait_until(f"burst {name}", lambda: [f for f in flows(lab, name)
                                                if f["health"] in ("done", "failed")], 120, 0.2)
    f = done[0]
    if not f.get("successes"):
        raise BenchError(f"burst through the cluster: {f.get('detail')}")
    return float(f["conn_per_s"]), int(f.get("failures", 0))


SYNC_LATENCY_RATE = 500  # new connections/s: a steady load, not an overload


def bench_sync_latency(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    one_way = one_way_sync_latency(runs, progress)
    count = int(os.environ.get("SWBENCH_CONNS", "1000"))
    p50s: list[float] = []
    p99s: list[float] = []
    with bench_lab(lab, progress) as name:
        set_policy(name, "hybrid", 1000)
        names = list(lab_nodes(name))
        for i in range(runs):
            _burst_lab(name, count, SYNC_LATENCY_RATE)
            for n in names:
                lat = node_status(name, n).get("sync", {}).get("ack_latency_ms", {})
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
