"""The node process: the I/O around engine.binding (NFQUEUE, the sync socket, REJECT replies,
iptables, the control socket and timers)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.binding import Binding
from engine.blocklist import ScanDetector, ScanSettings
from engine.conntrack import TRANSIENT_TCP_STATES
from engine.core import Engine
from engine.guard_control import COMMANDS as GUARD_COMMANDS
from engine.guard_control import guard_control, guard_counts
from engine.nat import TRANSLATED_MARK, PortPlan, hmark_rnd
from engine.nfq import owned_chain_text, shadow_chain_text
from engine.packet import TCP, UDP, make_key
from engine.queue_io import DEFAULT_BACKEND, PacketPath
from engine.replay import CAP_BYTES, CAP_PACKETS, WINDOW_MS, ReplaySettings
from engine.rows import step_text
from engine.rules import parse_rules
from engine.synthetic import fill_synthetic
from sync.agent import SyncAgent, SyncConfig
from sync.liveness import Liveness
from sync.pathio import PathIO
from sync.paths import KIND_PROBE, PATHS, Paths, Received
from sync.records import Trigger

log = logging.getLogger(__name__)

# The timer tick: retransmissions (RTO from 20 ms), heartbeats (20 ms), holds and lossless windows.
# Packets, sync input and liveness closes are handled as they come, not on the tick; 5 ms
# (was 2 ms) cuts an idle node's wakeups from ~600/s to ~250/s.
TICK_S = 0.005
LATE_TICK_MS = 30.0  # a tick this late: the paths' silence time (3 probes) passed unseen
TIMELINE_LEN = 2000
# The sync socket is read in rounds of this many datagrams, for at most this long per turn.
SYNC_READ_ROUND = 64
SYNC_READ_BUDGET_S = 0.004
# The longest the collector stays off for one bulk resync (Node._collector_during_resync).
RESYNC_GC_OFF_S = 30.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What the lab daemon tells a node process (written as JSON in the run folder)."""

    node: str
    lab: str
    lab_id: str
    key_file: str
    nodes: list[tuple[str, str, int]]
    buckets: int
    backups: int
    policy: str
    interval_ms: int
    differential: bool
    heartbeat_ms: int
    miss_limit: int
    rules: list[dict[str, Any]]
    queue_num: int
    control_socket: str
    hold_timeout_ms: int
    sync_batch_ms: int = 0  # plain changes may wait this long to share a datagram (engine/binding.py)
    lossless: bool = False
    lossless_window_ms: int = WINDOW_MS
    lossless_cap_packets: int = CAP_PACKETS
    lossless_cap_bytes: int = CAP_BYTES
    paths: bool = True  # probes and sync failover on every cluster interface (sync/paths.py)
    ipv6: bool = False  # a dual-stack lab: the owned-bucket chain is in ip6tables too
    nfq_backend: str = DEFAULT_BACKEND  # which binding reads the queue (engine/queue_io.py)
    scan_ports: int = 0  # the intrusion blocklist's settings (engine/blocklist.py)
    scan_window_ms: int = 2000
    block_s: int = 10
    bench_fill: bool = False  # the `fill` control command is refused unless the lab file sets it

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        raw = json.loads(path.read_text())
        raw["nodes"] = [tuple(n) for n in raw["nodes"]]
        return cls(**raw)


def nat_port_plan(cfg: NodeConfig) -> PortPlan:
    """The NAT port plan of a lab node (docs/nat.md): the lab's HMARK modulus and seed, the
    same `hmark_rnd` netns/iptables.py writes into the rules. It depends on neither the view
    nor the buckets this node owns: a connection's bucket is the mark of its first packet, so
    a view change needs no new plan.

    A lab daemon writes the lab's numeric id; a node started with another id (a test) has
    no HMARK seed to agree with, and splits the port range by bucket instead."""
    if not cfg.lab_id.isdigit():
        return PortPlan(buckets=cfg.buckets)
    return PortPlan(buckets=cfg.buckets, rnd=hmark_rnd(int(cfg.lab_id)))


def nat_counts(engine: Engine) -> dict[str, int]:
    """NAT bindings this node holds: in its own entries and in its backup copies; `common` is
    always 0, because a binding is part of one connection's entry (own or backup state, never
    common state: docs/nat.md). It is there so that every state count has the same three
    parts (the blocklist's and users' have them too, engine/guard_control.py). Read from the
    NAT index (translated connections only), not by walking every connection: the daemon asks
    for this four times a second, and a walk of 1M entries held the node's loop for ~50 ms
    each time (a joiner's peer that stalls is a peer it may not hear)."""
    t = engine.table
    conns = t.conns
    copies = engine.backups.copies
    own = backup = 0
    for k in t.nat_keys.values():
        if k in conns:
            own += 1
        elif k in copies:
            backup += 1
    return {"own": own, "backup": backup, "common": 0}


def parse_endpoint(text: Any) -> tuple[bytes, bytes] | None:
    """ "ip:port" or "[ip6]:port" (as flows and rows write them) -> (address, port) bytes, as
    a connection key holds them; None if it is not one."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    try:
        addr = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    return addr.packed, int(port).to_bytes(2, "big")


def owned_buckets_rules(buckets: list[int], queued: list[int] | None = None,
                        shadow_queue: int | None = None, shadow: bool = True) -> str:
    """iptables-restore text replacing the owned-bucket chain (atomic, with --noflush) and, with
    `shadow`, the shadow chain that sends the `queued` buckets to queue `shadow_queue` (empty
    without one). Two tables, two commits: in between a packet may reach either queue, and the
    node decides it the same on both (engine/queue_io.py). Without `shadow` (the queued set did
    not change) the filter table is left alone: a second table replaced is a slower takeover."""
    text = f"*mangle\n{owned_chain_text(buckets, queued or ())}\nCOMMIT\n"
    if shadow:
        text += f"*filter\n{shadow_chain_text(queued or (), shadow_queue)}\nCOMMIT\n"
    return text


class GcPauses:
    """How long the garbage collector stopped this process, per generation (gc.callbacks): a
    collection holds every packet of the node's queues for its duration."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        g = info.get("generation", 0)
        ms = (time.perf_counter() - self._t) * 1000
        self.count[g] += 1
        self.total_ms[g] += ms
        self.max_ms[g] = max(self.max_ms[g], ms)

    def status(self) -> dict[str, list[float] | list[int]]:
        return {"collections": list(self.count), "total_ms": [round(x, 1) for x in self.total_ms],
                "max_ms": [round(x, 2) for x in self.max_ms]}


class Node:
    """One gateway node: packets in from NFQUEUE, verdicts out, state kept in step over the sync segment."""

    def __init__(self, cfg: NodeConfig, *, use_nfqueue: bool = True) -> None:
        self.cfg = cfg
        self.use_nfqueue = use_nfqueue
        # A connection is announced to its backups once established and once gone, not at every
        # step of its handshake and teardown: the new owner of a half-open connection after a
        # failover sees the retransmitted SYN and rebuilds it from the rules.
        engine = Engine(cfg.node, parse_rules(cfg.rules), hold_related=cfg.policy != "periodic",
                        quiet_states=TRANSIENT_TCP_STATES, nat_ports=nat_port_plan(cfg))
        engine.guards.scan = ScanDetector(
            ScanSettings(cfg.scan_ports, cfg.scan_window_ms / 1000, float(cfg.block_s)))
        engine.store.stamp = time.monotonic  # when a common record arrives, on the real clock
        key = Path(cfg.key_file).read_bytes()
        self.sync_addr = next((ip, port) for name, ip, port in cfg.nodes if name == cfg.node)
        agent = SyncAgent(
            SyncConfig(
                lab_id=cfg.lab_id,
                key=key,
                node=cfg.node,
                nodes=tuple((name, (ip, port)) for name, ip, port in cfg.nodes),
                buckets=cfg.buckets,
                backups=cfg.backups,
                policy=cfg.policy,
                interval_ms=cfg.interval_ms,
                differential=cfg.differential,
                heartbeat_ms=cfg.heartbeat_ms,
                miss_limit=cfg.miss_limit,
                majority=cfg.paths,  # paths = false: the sync segment alone, as before
                record_events=False,  # the binding reads no RecordApplied: none per record
            ),
            engine.store,
            time.monotonic(),
        )
        replay = ReplaySettings(cfg.lossless, cfg.lossless_window_ms, cfg.lossless_cap_packets,
                                cfg.lossless_cap_bytes)
        self.binding: Binding[Any] = Binding(engine, agent, hold_timeout_ms=cfg.hold_timeout_ms,
                                             replay=replay, batch_ms=cfg.sync_batch_ms)
        self.engine = engine
        self.agent = agent
        self.policy = cfg.policy
        self.interval_ms = cfg.interval_ms
        self.timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_LEN)
        self.counters: dict[str, int] = {"packets": 0, "callback_errors": 0, "rejects_sent": 0}
        self.bucket_task: asyncio.Task[None] | None = None
        self.sync_delay_s = 0.0
        self.iptables_lock = asyncio.Lock()
        self.leaving = False
        self.stop_event = asyncio.Event()
        self.sock: socket.socket | None = None
        self.path = PacketPath(engine, self.binding, self.counters, self._after_packets)
        self.started = time.monotonic()
        self.gc_pauses = GcPauses()  # counted while run() runs
        # The (owned, queued) buckets the latest iptables task applies.
        self._setting: tuple[list[int], list[int]] | None = None
        # Every cluster interface a path (sync/paths.py): probes, sync failover, self-fencing.
        self._addr_of = {name: (ip, port) for name, ip, port in cfg.nodes}
        self._peer_at = {a: n for n, a in self._addr_of.items() if n != cfg.node}
        self.pathio: PathIO | None = None
        if cfg.paths:
            paths = Paths(cfg.lab_id, key, cfg.node, [n for n, _, _ in cfg.nodes], agent.incarnation,
                          time.monotonic(), probe_ms=cfg.heartbeat_ms)
            self.pathio = PathIO(paths, {p: p for p in PATHS}, self._on_path, time.monotonic)
        self._next_fence_check = 0.0
        self._gc_paused_at: float | None = None  # when the collector went off for a bulk resync
        self.loop: dict[str, float] = {"gap_ms_max": 0.0, "late_ticks": 0}

    # ---- timeline -------------------------------------------------------------------------
    def note(self, kind: str, text: str, **extra: Any) -> None:
        ev = {"t": time.time(), "node": self.cfg.node, "kind": kind, "text": text, **extra}
        self.timeline.append(ev)
        log.info("%s: %s", kind, text)

    def after(self) -> None:
        """What every turn ends with: held packets released, buckets followed, timeline
        written, datagrams sent."""
        b = self.binding
        drops: list[Any] = []
        for r in b.releases():
            if not r.accept:
                drops.append(r.handle)  # dropped together: one batch verdict where it may
                continue
            with contextlib.suppress(Exception):  # a packet the kernel forgot must not stop the rest
                if r.payload is not None:
                    r.handle.set_payload(r.payload)
                    r.handle.set_mark(r.handle.mark | TRANSLATED_MARK)
                r.handle.accept()
        if drops:
            self.path.drop_many(drops)
        if self.path.shadow_queue is not None and b.owned_in_shadow != self.path.watching_shadow:
            self.path.watch_shadow(b.owned_in_shadow, asyncio.get_running_loop())
        wanted = b.wanted_buckets()
        if wanted is not None and (wanted, b.shadow) != self._setting:
            self._setting = (wanted, list(b.shadow))
            self.bucket_task = asyncio.get_running_loop().create_task(
                self._set_buckets(wanted, list(b.shadow)))
        for n in b.notes():
            if n.kind == "sync":
                self._collector_during_resync(n.extra.get("step") == "resync-complete")
            self.note(n.kind, n.text, **n.extra)
        take = b.last_takeover
        if take is not None and "t" not in take:
            take["t"] = time.time()
        if b.left:
            self.stop_event.set()
        self.flush()

    async def _set_buckets(self, owned: list[int], queued: list[int]) -> None:
        async with self.iptables_lock:
            if owned != self.binding.owned or queued != self.binding.shadow:
                return  # a newer view already superseded this one
            shadow_q = self.path.shadow_queue
            shadow = shadow_q is not None and queued != self.binding.applied_shadow
            await self._iptables_restore(owned_buckets_rules(owned, queued, shadow_q, shadow))
            self.binding.buckets_applied(owned, time.monotonic(), queued)
        self.after()

    async def _iptables_restore(self, text: str) -> None:
        if not self.use_nfqueue:
            return
        # Both families at once: a bucket is one set of flows, whatever their IP version.
        tools = ["iptables-restore", "ip6tables-restore"] if self.cfg.ipv6 else ["iptables-restore"]
        await asyncio.gather(*(self._restore_with(tool, text) for tool in tools))

    async def _restore_with(self, tool: str, text: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            tool, "--noflush", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate(text.encode())
        if proc.returncode != 0:
            log.error("%s failed: %s", tool, err.decode(errors="replace").strip())

    # ---- loop -----------------------------------------------------------------------------
    def _collector_during_resync(self, complete: bool) -> None:
        """The collector is off while this node receives a bulk resync (its progress notes, up
        to its resync-complete note; at most RESYNC_GC_OFF_S): the entries it adds are long-
        lived copies, and the collector's passes over them took a tenth of a 1M resync, in
        pauses of ~70 ms (past a peer's failure-detection time: spurious retransmissions, a
        false failover). Then what it holds is frozen out of later passes, as at start (main),
        and the collector runs again."""
        if complete or (self._gc_paused_at is not None
                        and time.monotonic() - self._gc_paused_at > RESYNC_GC_OFF_S):
            if self._gc_paused_at is not None:
                gc.freeze()
                gc.enable()
                self._gc_paused_at = None
        elif self._gc_paused_at is None and gc.isenabled():
            gc.disable()
            self._gc_paused_at = time.monotonic()

    def _after_peer_closed(self) -> None:
        """The agent just took a dead peer down (sync/liveness.py): apply the takeover and send
        the new view now rather than at the next tick."""
        self.binding.settle(time.monotonic())
        self.after()

    def flush(self) -> None:
        sock = self.sock
        if sock is None:
            return
        pio = self.pathio
        now = time.monotonic()
        for addr, data in self.binding.datagrams():
            if pio is not None and (peer := self._peer_at.get(addr)) is not None:
                # The sync segment to that peer is silent while a data segment hears it: the
                # datagram goes there, in a record frame (sync/paths.py).
                route = pio.paths.route(peer, now)
                if route != "sync" and pio.send_record(route, peer, data):
                    continue
            try:
                sock.sendto(data, addr)
            except OSError as e:  # a peer that is gone or a full buffer is the channel's problem
                log.debug("sendto %s failed: %s", addr, e)

    def on_sync_readable(self) -> None:
        """Read the sync socket in rounds of up to SYNC_READ_ROUND datagrams, each handled
        together (one ack per peer), until it is empty or SYNC_READ_BUDGET_S is spent: a bulk
        resync must not hold the loop (and this node's heartbeats) for longer; the rest waits
        in the socket for the next turn."""
        sock = self.sock
        assert sock is not None
        start = time.monotonic()
        now = start
        while True:
            got: list[tuple[bytes, tuple[str, int]]] = []
            for _ in range(SYNC_READ_ROUND):
                try:
                    data, src = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log.debug("recvfrom failed: %s", e)
                    break
                if self.sync_delay_s > 0:
                    asyncio.get_running_loop().call_later(self.sync_delay_s, self._late_receive, data, src)
                else:
                    got.append((data, src))
            if got:
                self.binding.receive_many(got, now)
            self.after()
            now = time.monotonic()
            if len(got) < SYNC_READ_ROUND or now - start >= SYNC_READ_BUDGET_S:
                return

    def _on_path(self, r: Received, now: float) -> None:
        """A frame of a peer on one of the paths: a probe refreshes it (alive somewhere), a
        record is one of its sync datagrams that came over a data segment."""
        if r.kind == KIND_PROBE:
            self.agent.heard(r.sender, r.incarnation, now)
            return
        self.binding.receive(r.datagram, self._addr_of[r.sender], now)
        self.after()

    def _paths_tick(self, now: float) -> None:
        pio = self.pathio
        if pio is None:
            return
        pio.tick(now)
        if now < self._next_fence_check:
            return
        self._next_fence_check = now + pio.paths.probe_s
        fence = pio.fencing()  # every path's socket read first, then judged
        if fence != self.agent.fenced:
            self.agent.fence(fence, now)
            if fence:
                self.note("degraded", f"degraded: {pio.paths.fence_why}; buckets handed to the backups")
            else:
                self.note("degraded", "data links back: rejoining, resync first")
            self.binding.settle(now)

    def _late_receive(self, data: bytes, src: tuple[str, int]) -> None:
        self.binding.receive(data, src, time.monotonic())
        self.after()

    def _after_packets(self) -> None:
        self.binding.settle(time.monotonic())
        self.after()

    async def ticker(self) -> None:
        last = time.monotonic()
        while not self.stop_event.is_set():
            # How late this turn comes: a loop stalled (by a long callback, or a starved CPU)
            # judges and switches late, and status shows by how much.
            now = time.monotonic()
            gap_ms = (now - last) * 1e3
            last = now
            if gap_ms > self.loop["gap_ms_max"]:
                self.loop["gap_ms_max"] = round(gap_ms, 1)
            if gap_ms > LATE_TICK_MS:
                self.loop["late_ticks"] += 1
            # Read what peers sent before judging them: after a stall of this process their
            # heartbeats wait in the socket, and they are alive.
            self.on_sync_readable()
            if self.pathio is not None:
                # And what came over the data paths: while the sync link is cut a peer's
                # heartbeats arrive there, and peer-down judgement below must see them too.
                self.pathio.drain()
            self._paths_tick(time.monotonic())
            self.path.poll_shadow()  # the backed-up buckets' packets, held for the window
            self.binding.tick(time.monotonic())
            if self._gc_paused_at is not None:
                self._collector_during_resync(False)  # ends it past RESYNC_GC_OFF_S
            self.after()
            await asyncio.sleep(TICK_S)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        gc.callbacks.append(self.gc_pauses)
        await self._iptables_restore(owned_buckets_rules([]))  # own nothing until the view says so
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(self.sync_addr)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self.on_sync_readable)
        if self.use_nfqueue:
            backend = self.path.open(self.cfg.queue_num, self.cfg.nfq_backend, loop)
            log.info("NFQUEUE %d read by %s", self.cfg.queue_num, backend)
        ctl_path = Path(self.cfg.control_socket)
        with contextlib.suppress(FileNotFoundError):
            ctl_path.unlink()
        server = await asyncio.start_unix_server(self.serve_control, path=str(ctl_path))
        os.chmod(ctl_path, 0o600)
        self.note("start", f"node {self.cfg.node} started (pid {os.getpid()}), joining")
        self.binding.start(time.monotonic())
        # A peer's killed process closes its link at once: fail it now, not after its heartbeats.
        liveness = await Liveness(
            self.agent, self.sync_addr, clock=time.monotonic, on_closed=self._after_peer_closed
        ).start()
        if self.pathio is not None:
            try:
                self.pathio.open()
            except OSError as e:  # no AF_PACKET (not root?): the sync segment alone, as before
                log.error("path probes off: %s", e)
                self.pathio = None
        self.after()
        tick = asyncio.create_task(self.ticker())
        try:
            await self.stop_event.wait()
            if self.bucket_task is not None:
                # A leaving node gives its buckets up in iptables before it goes.
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self.bucket_task), 2.0)
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self.gc_pauses)
            tick.cancel()
            liveness.close()  # the peers take this as our end, at once
            if self.pathio is not None:
                self.pathio.close()
            server.close()
            self.path.close(loop)  # held packets get a verdict before we go: fail closed
            with contextlib.suppress(FileNotFoundError):
                ctl_path.unlink()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            if others:
                _, pending = await asyncio.wait(others, timeout=1.0)
                for t in pending:
                    log.warning("task did not stop: %r", t)

    # ---- control socket -------------------------------------------------------------------
    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if len(line) > 65536:
                    reply: dict[str, Any] = {"ok": False, "error": "request too long"}
                else:
                    try:
                        req = json.loads(line)
                        reply = self.control(req if isinstance(req, dict) else {})
                    except Exception as e:  # bad input is answered, never fatal
                        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the node is stopping
        finally:
            writer.close()

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        now = time.monotonic()
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd in GUARD_COMMANDS:
            reply = guard_control(self.engine, req, now)
            self.binding.flush_engine(now)  # a login or logout goes out at once
            self.flush()
            return reply
        if cmd == "table":
            return {"ok": True, **self.table(str(req.get("scope", "own")), str(req.get("filter", "")),
                                             int(req.get("limit", 500)))}
        if cmd == "carries":
            return {"ok": True, "carried": self.carries(req.get("pairs", []))}
        if cmd == "events":
            since = float(req.get("since", 0))
            return {"ok": True, "events": [e for e in self.timeline if e["t"] > since]}
        if cmd == "policy":
            policy = str(req["policy"])
            if policy not in ("on-demand", "periodic", "hybrid"):
                return {"ok": False, "error": f"unknown policy {policy!r}"}
            self.policy = policy
            self.interval_ms = int(req.get("interval_ms", self.interval_ms))
            self.binding.set_policy(policy, self.interval_ms, bool(req.get("differential", True)))
            if "batch_ms" in req:
                self.binding.batch_s = int(req["batch_ms"]) / 1000
            self.note("policy", f"sync policy {policy}, interval {self.interval_ms} ms, "
                      f"batch {round(self.binding.batch_s * 1000)} ms")
            return {"ok": True}
        if cmd == "lossless":
            on = bool(req.get("on", True))
            self.binding.set_lossless(on, now)
            self.note("lossless", f"lossless takeover {'on' if on else 'off'}")
            self.after()
            return {"ok": True, "lossless": self.binding.replay.status()}
        if cmd == "fill":
            return self.fill(req, now)
        if cmd == "full_sync":
            self.agent.full_sync(now)
            self.note("trigger", "full sync requested", trigger=Trigger.FULL_SYNC.value)
            self.flush()
            return {"ok": True}
        if cmd == "leave":
            self.leaving = True
            self.agent.leave(now)
            self.note("trigger", "going offline: pushing all state, handing over buckets",
                      trigger=Trigger.LEAVE.value)
            self.flush()
            return {"ok": True}
        if cmd == "slow":
            # Fault injection: this node handles sync datagrams late, like an overloaded peer.
            self.sync_delay_s = max(0, int(req.get("delay_ms", 0))) / 1000
            self.note("fault", f"sync input delayed by {self.sync_delay_s * 1000:.0f} ms")
            return {"ok": True}
        if cmd == "freeze":
            self.agent.freeze(bool(req.get("on", True)))
            self.note("step", "sync channel frozen" if req.get("on", True) else "sync channel resumed")
            self.flush()
            return {"ok": True, "queued": self.agent.held()}
        if cmd == "step":
            released = self.agent.step()
            msg = self.agent.stepped() if released else None
            self.flush()
            label = f"{self.cfg.node}>{msg['message']}" if msg else ""
            if released:
                self.note("step", f"released {step_text(msg)}" if msg else "released one sync message",
                          message=label)
            return {"ok": True, "released": released, "queued": self.agent.held(),
                    **({"message": {**msg, "text": step_text(msg), "label": label}} if msg else {})}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def fill(self, req: dict[str, Any], now: float) -> dict[str, Any]:
        """Benches only (the lab file's `bench_fill`): add synthetic own connections
        [start, start + count) to the table, spread over the buckets this node owns, without
        telling the peers (engine/synthetic.py says why not real SYNs)."""
        if not self.cfg.bench_fill:
            return {"ok": False, "error": "fill is for bench labs only (bench_fill = true in the lab file)"}
        count = int(req.get("count", 0))
        if not 0 <= count <= 200_000:
            return {"ok": False, "error": "count must be 0 .. 200000 per request (the loop stalls meanwhile)"}
        added = fill_synthetic(self.engine.table, int(req.get("start", 0)), count,
                               sorted(self.binding.owned), now)
        # Long-lived by construction: frozen out of the collector's passes, as what exists at
        # start (main). A full pass over 1M of them held this loop ~0.7 s, past the peers'
        # failure-detection time: a bench's joiner failed this node mid-resync and began again.
        gc.freeze()
        self.note("fill", f"{added} synthetic connection(s) added", added=added)
        return {"ok": True, "added": added, "own": len(self.engine.table.conns)}

    def status(self) -> dict[str, Any]:
        me = self.cfg.node
        view = self.agent.view
        counts = self.engine.store.counts()
        b = self.binding
        backups = list(view.backups.get(me, []))
        backs_up = sorted(n for n, group in view.backups.items() if me in group and n != me)
        lat = sorted(b.hold_latencies_ms)
        return {
            "name": me,
            "pid": os.getpid(),
            "state": str(getattr(view.members.get(me), "value", view.members.get(me, "joining"))),
            "epoch": view.epoch,
            "buckets": b.owned,
            "view_buckets": list(view.bucket_owner),
            "members": {n: str(getattr(s, "value", s)) for n, s in view.members.items()},
            "backups": backups,
            "backs_up": backs_up,
            "sync_address": self.sync_addr[0],
            "own": counts["own"],
            "backup": counts["backup"],
            "common": counts["common"],
            "nat": nat_counts(self.engine),
            **guard_counts(self.engine, time.monotonic()),
            "held": b.held_packets,
            "policy": self.policy,
            "interval_ms": self.interval_ms,
            "batch_ms": round(b.batch_s * 1000),
            "counters": {**self.engine.counters, **b.counters, **self.counters},
            "nfq": self.path.stats(),
            "gc": self.gc_pauses.status(),
            "sync": self.agent.stats(),
            "last_takeover": b.last_takeover,
            "lossless": b.replay.status(),
            "hold_ms_p50": lat[len(lat) // 2] if lat else None,
            "hold_ms_p99": lat[int(len(lat) * 0.99)] if lat else None,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "queued": self.agent.held(),
            "loop": dict(self.loop),
            "paths": self.paths_status(),
            # degraded: a data link lost, buckets handed on; attention: the minority side of a
            # cut on every path, forwarding nothing (sync/agent.py)
            "health": ("degraded" if self.agent.fenced else "attention" if self.agent.attention else "ok"),
        }

    def carries(self, pairs: Any) -> list[int]:
        """Which of the given flows (pairs of "ip:port" endpoints, either way round) are this
        node's own connections: the indexes of those it carries. One key lookup per flow and
        protocol, so the daemon can map its few flows to nodes without reading whole tables."""
        conns = self.engine.table.conns
        out: list[int] = []
        if not isinstance(pairs, list):
            return out
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            a, b = parse_endpoint(pair[0]), parse_endpoint(pair[1])
            if a is None or b is None:
                continue
            if any(make_key(proto, a[0], a[1], b[0], b[1])[0] in conns for proto in (TCP, UDP)):
                out.append(i)
        return out

    def paths_status(self) -> dict[str, Any] | None:
        """Per peer and path: heard, ms ago, the sync route; refused frames; degraded."""
        pio = self.pathio
        if pio is None:
            return None
        out = pio.paths.status(time.monotonic())
        out["send_errors"] = dict(pio.errors)
        out["carrier"] = pio.carriers()
        out["degraded"] = self.agent.fenced
        return out

    def table(self, scope: str, needle: str, limit: int) -> dict[str, Any]:
        """The first `limit` rows of a scope (those matching `needle`, if given) and how many
        there are. Without a needle only the rows returned are built: the console and the
        recorder ask for a table often, and building all of 100k rows held the node's loop
        for over a second (its peers heard nothing meanwhile). A needle still reads them all."""
        limit = max(0, limit)
        if needle:
            rows = [r for r in self.engine.rows(scope) if needle in " ".join(str(v) for v in r.values())]
            total = len(rows)
            rows = rows[:limit]
        else:
            rows = list(itertools.islice(self.engine.rows(scope, limit), limit))
            e = self.engine
            total = (len(e.table.conns) if scope == "own" else len(e.backups) if scope == "backup"
                     else sum(1 for _ in e.rows(scope)))
        for r in rows:
            key = r.get("key")
            prov = self.agent.provenance(bytes.fromhex(key)) if isinstance(key, str) else None
            if prov:
                r["synced_to"] = prov.get("sent_to", [])
                r["acked_by"] = prov.get("acked_by", [])
                r["trigger"] = prov.get("trigger", r.get("trigger"))
        return {"rows": rows, "total": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="syncwall-node", description=__doc__)
    ap.add_argument("--config", required=True, type=Path, help="node config JSON written by the lab daemon")
    ap.add_argument("--log", type=Path, help="log file (default: stderr)")
    ap.add_argument("--no-nfqueue", action="store_true", help="sync only, no packet engine (tests)")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        filename=str(args.log) if args.log else None,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cfg = NodeConfig.load(args.config)
    # A gateway's packet and sync path outranks the lab's traffic generators: a node starved of
    # CPU misses heartbeats and is declared failed. Best effort (needs root).
    try:
        # Real-time round robin at a low RT priority; the kernel's RT throttling keeps a
        # runaway node from locking a core. Fall back to a high nice value.
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(5))
    except OSError:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    # A node holds up to a million entries, and a resync adds them by the thousand: with the
    # collector's default thresholds (700 new objects) it walks the young ones every ~50
    # records, and under a growing heap its full passes came often enough to double a resync's
    # cost per record. What exists at start (modules, rules) is frozen out of its passes.
    gc.set_threshold(20_000, 10, 10)
    gc.freeze()
    asyncio.run(Node(cfg, use_nfqueue=not args.no_nfqueue).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
