"""The lab daemon: builds the lab, runs and supervises node and traffic processes, serves the control API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from netns import api, headline
from netns import build as lab_build
from netns.control import AsyncControlClient, ControlError
from netns.handlers import ControlHandlers
from netns.record import LabRecord, teardown
from netns.recorder import Limits, Recorder
from netns.spec import LabSpec, load_lab

log = logging.getLogger(__name__)
def bucket_spread(views: list[dict[str, Any]]) -> dict[str, Any]:
    """How evenly the active nodes share the buckets: fewest and most per node, and their
    ratio (1.0 even; issue 13's bound is 1.25 at 3 to 16 nodes). None where no node is active."""
    counts = [len(v["buckets"]) for v in views if v["state"] == "active"]
    if not counts or min(counts) == 0:
        return {"min": min(counts, default=0), "max": max(counts, default=0), "ratio": None}
    return {"min": min(counts), "max": max(counts), "ratio": round(max(counts) / min(counts), 3)}


GUARDS_NONE = {"own": 0, "backup": 0, "common": 0}  # nat/blocklist/users counts of a node that holds none

POLL_S = 0.25
NODE_START_TIMEOUT_S = 20.0
EVENTS_KEPT = 5000

SERVERS: dict[str, list[tuple[str, list[str]]]] = {
    # role -> [(workload name, module args)]; the daemon fills in addresses and ports
    "server": [
        ("tcp-server", ["netns.workloads.tcpflows", "server", "--port", "5001"]),
        ("udp-server", ["netns.workloads.udpflows", "server", "--port", "5002"]),
    ],
    "ftp": [("ftp-server", ["netns.workloads.ftpserver", "--port", "21"])],
}


class NodeLink:
    """The daemon's connection to one node process's control socket.

    A node that does not answer is an expected state of the lab (killed, crashed, busy), so it
    comes back as an `ok: false` reply the caller can look at, never as an exception."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._client = AsyncControlClient(path)

    async def request(self, msg: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
        try:
            return await self._client.request(msg, timeout_s)
        except ControlError as e:
            return {"ok": False, "error": f"node unreachable: {e}"}

    def close(self) -> None:
        self._client.close()


class NodeProc:
    """What the daemon knows of one gateway node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.link: NodeLink | None = None
        self.status: dict[str, Any] = {}
        self.intent = "active"  # what the operator asked: active, killed, crashed, offline
        self.events_since = 0.0
        self.msgs_hist: deque[tuple[float, int]] = deque(maxlen=40)
        self.rate_hist: deque[float] = deque(maxlen=60)


class LabDaemon:
    def __init__(self, spec: LabSpec, run_dir: Path, lab_file: Path | None) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.lab_file = lab_file
        self.record: LabRecord | None = None
        self.nodes = {n.name: NodeProc(n.name) for n in spec.nodes}
        self.workloads: dict[str, tuple[asyncio.subprocess.Process, dict[str, Any]]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.policy = spec.policy
        self.interval_ms = spec.interval_ms
        self.batch_ms = spec.sync_batch_ms  # (a revived node gets what `policy` set last)
        self.lossless = spec.lossless  # lossless takeover, for every node (the `lossless` command)
        self.headline = ""
        self.failed_at: float | None = None
        self.last_takeover: dict[str, Any] | None = None
        self.seen_takeovers: set[float] = set()
        self.flow_nodes: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.trace = (run_dir / "trace.jsonl").open("a", buffering=1)
        self.started = time.time()
        self.ready = False
        self.traffic_seq = 0
        self.faults_active: list[dict[str, Any]] = []
        self.frozen = False
        self.event_seq = 0
        self.control = ControlHandlers(self)
        self.recorder = Recorder(run_dir, self.request, Limits.from_env(), meta={"lab": spec.name})

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request in-process, exactly as the control socket would."""
        return await self.control.handle(api.parse_request(msg))

    # ---- events -----------------------------------------------------------------------------
    def note(self, kind: str, text: str, node: str = "lab", **extra: Any) -> None:
        log.info("%s %s: %s", node, kind, text)
        ev = {"t": time.time(), "node": node, "kind": kind, "text": text, **extra}
        self.add_event(ev)

    def add_event(self, ev: dict[str, Any]) -> None:
        self.event_seq += 1
        ev["id"] = self.event_seq
        self.events.append(ev)
        self.trace.write(json.dumps(ev, default=str) + "\n")
        self.recorder.event(ev)

    # ---- build ------------------------------------------------------------------------------
    async def start(self) -> None:
        t0 = time.monotonic()
        self.record = await asyncio.to_thread(lab_build.build_lab, self.spec, self.run_dir)
        self.record.add_process(os.getpid(), "daemon", "daemon")
        key_file = self.run_dir / "sync.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))  # a fresh HMAC key per lab, readable by root only
        (self.run_dir / "nodes").mkdir(mode=0o700, exist_ok=True)
        (self.run_dir / "flows").mkdir(mode=0o700, exist_ok=True)
        (self.run_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        self.note("lab", f"namespaces and links built in {time.monotonic() - t0:.2f} s")
        for h in self.spec.hosts:
            for name, args in SERVERS.get(h.role, []):
                meta = {"kind": "server", "host": h.name}
                args = [*args, "--bind", str(h.ip), *(["--bind", str(h.ip6)] if h.ip6 else [])]
                if h.role == "ftp":
                    args += ["--root", str(self.run_dir / f"ftp-{h.name}")]
                await self.start_workload(f"{name}-{h.name}", h.name, args, meta)
        await asyncio.gather(*(self.start_node(n) for n in self.nodes))
        await self.wait_active(NODE_START_TIMEOUT_S)
        self.ready = True
        self.note("lab", f"lab up in {time.monotonic() - t0:.2f} s")

    def node_config(self, name: str) -> Path:
        s = self.spec
        cfg = {
            "node": name,
            "lab": s.name,
            "lab_id": str(s.lab_id),
            "key_file": str(self.run_dir / "sync.key"),
            "nodes": [[n.name, str(n.sync_ip), s.sync_port] for n in s.nodes],
            "buckets": s.buckets,
            "backups": s.backups,
            "policy": self.policy,
            "interval_ms": self.interval_ms,
            "differential": s.differential,
            "heartbeat_ms": s.heartbeat_ms,
            "miss_limit": s.miss_limit,
            "rules": [dict(r) for r in s.rules],
            "queue_num": s.queue_num,
            "control_socket": str(self.run_dir / "nodes" / f"{name}.sock"),
            "hold_timeout_ms": s.hold_timeout_ms,
            "sync_batch_ms": self.batch_ms,
            "lossless": self.lossless,
            "lossless_window_ms": s.lossless_window_ms,
            "lossless_cap_packets": s.lossless_cap_packets,
            "lossless_cap_bytes": s.lossless_cap_bytes,
            "paths": s.paths,
            "ipv6": s.ipv6,
            "scan_ports": s.scan_ports,
            "scan_window_ms": s.scan_window_ms,
            "block_s": s.block_s,
            "bench_fill": s.bench_fill,
        }
        path = self.run_dir / "nodes" / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1))
        return path

    async def start_node(self, name: str) -> None:
        assert self.record is not None
        np = self.nodes[name]
        cfg = self.node_config(name)
        ns = lab_build.ns_name(self.spec, name)
        sock = self.run_dir / "nodes" / f"{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        np.proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "engine.node",
            "--config",
            str(cfg),
            "--log",
            str(self.run_dir / "logs" / f"{name}.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.run_dir / "logs" / f"{name}.stderr", "ab"),  # noqa: SIM115
        )
        self.record.add_process(np.proc.pid, "node", name)
        np.link = NodeLink(sock)
        np.intent = "active"
        np.status = {}
        np.events_since = 0.0
        self.note("node", f"{name} started (pid {np.proc.pid})", node=name)

    async def wait_active(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll_nodes()
            wanted = [n for n in self.nodes.values() if n.intent == "active"]
            if wanted and all(n.status.get("state") == "active" for n in wanted):
                owners = [n.status.get("view_buckets") for n in wanted]
                if all(o == owners[0] for o in owners):
                    return
            await asyncio.sleep(0.05)
        states = {n.name: n.status.get("state", "no answer") for n in self.nodes.values()}
        raise RuntimeError(f"nodes did not become active within {timeout_s:.0f} s: {states}")

    async def start_workload(self, name: str, host: str, args: list[str], meta: dict[str, Any]) -> None:
        assert self.record is not None
        ns = lab_build.ns_name(self.spec, host)
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.run_dir / "logs" / f"{name}.log", "ab"),  # noqa: SIM115
        )
        self.record.add_process(proc.pid, "workload", name)
        self.workloads[name] = (proc, {"host": host, **meta})
        self.note("traffic", f"{name} started on {host} (pid {proc.pid})")

    # ---- polling ----------------------------------------------------------------------------
    async def poll_nodes(self) -> None:
        async def one(np: NodeProc) -> None:
            if np.link is None or np.proc is None:
                return
            if np.proc.returncode is not None:
                if np.status.get("state") not in ("failed", "offline"):
                    expected = np.intent in ("killed", "offline")
                    self.note(
                        "node",
                        f"{np.name} process exited ({np.proc.returncode})"
                        + ("" if expected else " unexpectedly"),
                        node=np.name,
                    )
                np.status = {
                    **np.status,
                    "state": "offline" if np.intent == "offline" else "failed",
                    "pid": None,
                    "held": 0,
                }
                return
            st = await np.link.request({"cmd": "status"}, timeout_s=1.0)
            if st.get("ok"):
                np.status = st
                # Sync messages, not heartbeats: what the on-demand policy is about.
                peers = st.get("sync", {}).get("peers", {})
                sent = sum(int(v) for p in peers.values() for k, v in p.get("sent", {}).items()
                           if k != "heartbeat")
                now = time.monotonic()
                np.msgs_hist.append((now, sent))
                if len(np.msgs_hist) >= 2:
                    (t1, s1), (t2, s2) = np.msgs_hist[0], np.msgs_hist[-1]
                    np.rate_hist.append((s2 - s1) / max(t2 - t1, 1e-3))
                ev = await np.link.request({"cmd": "events", "since": np.events_since}, timeout_s=1.0)
                for e in ev.get("events", []):
                    np.events_since = max(np.events_since, e["t"])
                    self.add_event(e)
                take = st.get("last_takeover")
                if take and take["t"] not in self.seen_takeovers and not take["promoted"] and not any(
                        n.intent != "active" for n in self.nodes.values()):
                    self.seen_takeovers.add(take["t"])  # the initial assignment of buckets, not a takeover
                if take and take["t"] not in self.seen_takeovers:
                    self.seen_takeovers.add(take["t"])
                    if self.failed_at is not None and take["t"] > self.failed_at:
                        # From the operator's kill/crash to the backup accepting the buckets.
                        take = {**take, "takeover_ms": round((take["t"] - self.failed_at) * 1000, 1)}
                        self.failed_at = None
                    # Whose buckets these were, netns/headline.py reads from the events.
                    self.headline = headline.describe(self.events, {"node": np.name, **take})
                    self.last_takeover = {"node": np.name, **take}
                    self.note("takeover", self.headline, node=np.name, **take)
            elif np.intent == "crashed":
                np.status = {**np.status, "state": "failed", "held": 0}

        await asyncio.gather(*(one(n) for n in self.nodes.values()))

    async def poll_loop(self) -> None:
        tick = 0
        while not self.stop.is_set():
            try:
                await self.poll_nodes()
                tick += 1
                if tick % 4 == 0:
                    await self.map_flows()
                for name, (proc, _meta) in list(self.workloads.items()):
                    if proc.returncode is not None and self.record is not None:
                        self.record.remove_process(proc.pid)
                        self.workloads.pop(name)
                        self.note("traffic", f"{name} ended ({proc.returncode})")
            except Exception:
                log.exception("poll failed")
            await asyncio.sleep(POLL_S)

    async def map_flows(self) -> None:
        """Which node carries each flow now: match flow endpoints with the nodes' own tables."""
        # Ask each node which of our flows it carries (one key lookup per flow), never for its
        # whole table: building 100k rows held a node's loop for over a second, every second,
        # and a peer joining meanwhile heard nothing and went on without its state.
        pairs: list[list[str]] = []
        for f in self.flows():
            for a, b in ((f.get("src"), f.get("dst")), (f.get("data_client"), f.get("data_server"))):
                if a and b and [str(a), str(b)] not in pairs:
                    pairs.append([str(a), str(b)])
        where: dict[str, str] = {}
        for np in self.nodes.values():
            if not pairs or np.link is None or np.status.get("state") not in ("active", "joining"):
                continue
            t = await np.link.request({"cmd": "carries", "pairs": pairs}, timeout_s=2.0)
            for i in t.get("carried", []):
                if isinstance(i, int) and 0 <= i < len(pairs):
                    a, b = pairs[i]
                    where[f"{a}|{b}"] = where[f"{b}|{a}"] = np.name
        self.flow_nodes = where

    def flows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        now = time.time()
        for f in sorted((self.run_dir / "flows").glob("*.json")):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            for flow in doc.get("flows", []):
                flow = dict(flow)
                flow["node"] = self.flow_nodes.get(f"{flow.get('src')}|{flow.get('dst')}", "")
                if flow.get("data_client"):
                    pair = f"{flow.get('data_client')}|{flow.get('data_server')}"
                    flow["data_node"] = self.flow_nodes.get(pair, "")
                started = flow.get("started")
                flow["age_s"] = round(now - started, 1) if isinstance(started, (int, float)) else None
                flow.setdefault("workload", doc.get("workload", f.stem))
                out.append(flow)
        return out

    # ---- views for clients ------------------------------------------------------------------
    def node_view(self, np: NodeProc) -> dict[str, Any]:
        st = np.status
        spec_node = next(n for n in self.spec.nodes if n.name == np.name)
        state = st.get("state", "joining")
        if np.intent == "crashed":
            state = "failed"
        live = state not in ("failed", "offline")
        return {
            "name": np.name,
            "state": state,
            "intent": np.intent,
            "buckets": st.get("buckets", []) if state not in ("failed", "offline") else [],
            "backs_up": st.get("backs_up", []) if live else [],
            "backups": st.get("backups", []) if live else [],
            "sync_address": str(spec_node.sync_ip),
            "own": st.get("own", 0) if live else 0,
            "backup": st.get("backup", 0) if live else 0,
            "common": st.get("common", 0) if live else 0,
            "nat": st.get("nat", dict(GUARDS_NONE)) if live else dict(GUARDS_NONE),
            **{k: st.get(k, dict(GUARDS_NONE)) if live else dict(GUARDS_NONE)
               for k in ("blocklist", "users")},
            "held": st.get("held", 0),
            "batch_ms": st.get("batch_ms"),
            # A failed or offline node sends nothing: its last polled rate must not linger.
            "sync_msgs_per_s": round(np.rate_hist[-1], 1) if np.rate_hist and live else 0.0,
            "sync_rate_history": [round(x, 1) for x in np.rate_hist] if live else [],
            "pid": st.get("pid") if state not in ("failed", "offline") else None,
            "epoch": st.get("epoch"),
            "counters": st.get("counters", {}),
            "sync": st.get("sync", {}),
            "last_takeover": st.get("last_takeover"),
            "hold_ms_p50": st.get("hold_ms_p50"),
            "hold_ms_p99": st.get("hold_ms_p99"),
            "lossless": st.get("lossless"),
            # Per peer and path: heard, ms ago, sync route; refused frames (sync/paths.py).
            "paths": st.get("paths") if live else None,
            "health": st.get("health", "ok") if live else "-",  # a node not running has none
            "loop": st.get("loop") if live else None,  # its event loop's longest stall, late ticks
        }

    def status(self) -> dict[str, Any]:
        views = [self.node_view(n) for n in self.nodes.values()]
        return {
            "lab": self.spec.name,
            "daemon_pid": os.getpid(),
            "policy": self.policy,
            "interval_ms": self.interval_ms,
            "sync_batch_ms": self.batch_ms,
            "lossless": self.lossless,
            "sync_port": self.spec.sync_port,
            "buckets": self.spec.buckets,
            "backups_per_node": self.spec.backups,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started, 1),
            "time": time.time(),
            "headline": self.headline,
            "last_takeover": self.last_takeover,
            "faults": self.faults_active,
            "blocklist": {"scan_ports": self.spec.scan_ports, "scan_window_ms": self.spec.scan_window_ms,
                          "block_s": self.spec.block_s},
            "frozen": self.frozen,
            "queued": self.queued(),
            "nodes": views,
            "bucket_spread": bucket_spread(views),
            "workloads": {k: {"pid": p.pid, **m} for k, (p, m) in self.workloads.items()},
        }

    def _running(self) -> list[NodeProc]:
        return [n for n in self.nodes.values()
                if n.link is not None and n.proc is not None and n.proc.returncode is None]

    def queued(self) -> int:
        return sum(int(n.status.get("queued", 0) or 0) for n in self._running())


    # ---- life -------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        self.note("lab", "going down")
        for proc, _ in self.workloads.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for np in self.nodes.values():
            if np.proc is not None and np.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    np.proc.send_signal(signal.SIGTERM)
        procs = [p for p, _ in self.workloads.values()] + [
            n.proc for n in self.nodes.values() if n.proc is not None
        ]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 3.0)
        self.trace.close()
        if self.record is not None:
            self.record.remove_process(os.getpid())
            await asyncio.to_thread(teardown, self.record)


async def amain(spec: LabSpec, run_dir: Path, lab_file: Path | None) -> int:
    d = LabDaemon(spec, run_dir, lab_file)
    loop = asyncio.get_running_loop()
    def on_signal(sig: signal.Signals) -> None:
        d.note("lab", f"{sig.name} received: going down")
        d.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    sock_path = run_dir / "control.sock"
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    old = os.umask(0o177)  # the control socket is root-only from the moment it exists
    try:
        server = await asyncio.start_unix_server(d.control.serve, path=str(sock_path),
                                                 limit=1 << 20)
    finally:
        os.umask(old)
    poll = None
    rc = 0
    try:
        await d.start()
        (run_dir / "ready").write_text(str(os.getpid()))
        poll = asyncio.create_task(d.poll_loop())
        d.recorder.start()
        await d.stop.wait()
    except Exception as e:
        log.exception("lab failed")
        (run_dir / "failed").write_text(f"{type(e).__name__}: {e}\n")
        rc = 1
    finally:
        if poll is not None:
            poll.cancel()
        server.close()
        await d.recorder.stop()
        await d.shutdown()
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="syncwall-daemon", description=__doc__)
    ap.add_argument("--lab-file", type=Path)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--overrides", default="{}", help="JSON of spec fields to override")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        filename=str(args.run_dir / "daemon.log"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    overrides = json.loads(args.overrides)
    spec = load_lab(args.lab_file, overrides or None)
    (args.run_dir / "spec.json").write_text(
        json.dumps({"lab_file": str(args.lab_file) if args.lab_file else None, "overrides": overrides})
    )
    return asyncio.run(amain(spec, args.run_dir, args.lab_file))


if __name__ == "__main__":
    sys.exit(main())
