"""The lab daemon's control API: each request, parsed by netns/api.py, to the action it asks for.

The daemon (netns/daemon.py) owns the lab and its processes; this module answers the control
socket on its behalf: one `ControlHandlers` per daemon, one `handle` with a `match` per request
type, and the operator's actions (kill, crash, revive, offline, traffic, faults, step)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from netns import api, headline
from netns import build as lab_build
from netns.guard_handlers import handle_guards
from syncwall_errors import NotFoundError, StateError, SyncwallError

if TYPE_CHECKING:
    from netns.daemon import LabDaemon, NodeProc

log = logging.getLogger(__name__)

# kind -> (module and subcommand, server role, server port); the options and their defaults are
# netns.api.TRAFFIC_OPTIONS, passed as `--option-name VALUE`.
WORKLOADS: dict[str, tuple[list[str], str, str]] = {
    "tcp": (["netns.workloads.tcpflows", "client"], "server", "5001"),
    "udp": (["netns.workloads.udpflows", "client"], "server", "5002"),
    "burst": (["netns.workloads.burst"], "server", "5001"),
    "ftp": (["netns.workloads.ftpclient"], "ftp", ""),
}
assert set(WORKLOADS) == set(api.TRAFFIC_OPTIONS)



class ControlHandlers:
    """Answers control requests for one lab daemon."""

    def __init__(self, daemon: LabDaemon) -> None:
        self.d = daemon

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "request too long"}\n')
                    break
                if not line:
                    break
                reply = await self.answer(line)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line: a bad request gets an answer, never kills the daemon."""
        try:
            return await self.handle(api.parse_request(json.loads(line)))
        except api.RequestError as e:  # the field lets a program point at what to fix
            return {**api.refused(str(e)), "field": e.field}
        except ValueError as e:  # not JSON
            return api.refused(f"a request is one JSON object per line ({e})")
        except SyncwallError as e:  # expected: the message is for the operator as it is
            return api.refused(str(e))
        except Exception as e:
            log.exception("request %r failed", line[:200])
            return api.refused(f"the lab daemon failed on this request ({type(e).__name__}: {e}); "
                               "see its daemon.log")

    async def handle(self, req: api.Request) -> dict[str, Any]:
        match req:
            case api.Status():
                return {"ok": True, **self.status()}
            case api.Snapshot(since=since, max_events=max_events):
                evs = [e for e in self.d.events if e["t"] > since][-max_events:] if max_events else []
                return {"ok": True, **self.status(), "flows": self.d.flows(), "events": evs}
            case api.Table():
                np = self._node(req.node)
                if np.link is None or np.proc is None or np.proc.returncode is not None:
                    return {"ok": True, "rows": [], "total": 0, "note": f"{np.name} is not running"}
                return await np.link.request(
                    {"cmd": "table", "scope": req.scope, "filter": req.filter, "limit": req.limit},
                    timeout_s=5.0,
                )
            case api.Kill() | api.Crash() | api.Revive() | api.Offline():
                action = getattr(self, f"do_{req.CMD}")
                reply: dict[str, Any] = await action(self._node(req.node))
                return reply
            case api.SetPolicy():
                self.d.policy = req.policy
                if req.interval_ms is not None:
                    self.d.interval_ms = req.interval_ms
                if req.batch_ms is not None:
                    self.d.batch_ms = req.batch_ms
                await self._all_nodes({
                    "cmd": "policy", "policy": req.policy, "interval_ms": self.d.interval_ms,
                    "differential": True if req.differential is None else req.differential,
                    "batch_ms": self.d.batch_ms,
                })
                self.d.note("policy", f"sync policy set to {req.policy}, interval {self.d.interval_ms} ms, "
                            f"batch {self.d.batch_ms} ms")
                return {"ok": True, "policy": req.policy, "interval_ms": self.d.interval_ms,
                        "batch_ms": self.d.batch_ms}
            case api.SetLossless(on=on):
                self.d.lossless = on
                await self._all_nodes({"cmd": "lossless", "on": on})
                self.d.note("lossless", f"lossless takeover {'on' if on else 'off'} on every node")
                return {"ok": True, "lossless": on}
            case api.FullSync():
                await self._all_nodes({"cmd": "full_sync"})
                self.d.note("trigger", "full sync requested on every node")
                return {"ok": True}
            case api.Freeze() | api.Resume():
                self.d.frozen = isinstance(req, api.Freeze)
                await self._all_nodes({"cmd": "freeze", "on": self.d.frozen})
                self.d.note("step", "sync channel frozen: step releases one message" if self.d.frozen
                          else "sync channel resumed")
                return {"ok": True, "frozen": self.d.frozen}
            case api.Step():
                return await self.step()
            case api.TrafficStart():
                return await self.traffic_start(req)
            case api.TrafficStop(name=name):
                return self.traffic_stop(name)
            case api.TrafficClear():
                for f in (self.d.run_dir / "flows").glob("*.json"):
                    if f.stem not in self.d.workloads:
                        f.unlink()
                return {"ok": True}
            case api.Fault():
                return await self.fault(req)
            case api.AuthLogin() | api.AuthLogout() | api.Unblock() | api.Guards():
                return await handle_guards(self.d, req)
            case api.Down():
                self.d.note("action", "down requested")
                self.d.stop.set()
                return {"ok": True, "daemon_pid": os.getpid()}
        raise StateError(f"the lab daemon does not handle {req.CMD!r} yet")  # pragma: no cover

    def status(self) -> dict[str, Any]:
        """The daemon's status with the headline built from its events (netns/headline.py)."""
        st = self.d.status()
        down = [n["name"] for n in st.get("nodes", []) if n.get("state") in ("failed", "offline")]
        head = headline.build(self.d.events, st["time"], faults=self.d.faults_active, down=down)
        return {**st, "headline": head.render(st["time"]), "headline_event": head.to_dict()}

    async def step(self) -> dict[str, Any]:
        """Release one held sync message, from the node that has waited longest with one queued."""
        if not self.d.frozen:
            return {"ok": False, "error": "the sync channel is not frozen (freeze it first)"}
        for np in self.d._running():
            assert np.link is not None
            if int(np.status.get("queued", 0) or 0) <= 0:
                continue
            r = await np.link.request({"cmd": "step"})
            if r.get("released"):
                np.status["queued"] = r.get("queued", 0)
                msg = r.get("message") or {}
                what = f": {msg['text']}" if msg.get("text") else " one sync message"
                text = f"{np.name} sent{what} ({r.get('queued', 0)} still queued there)"
                label = str(msg.get("label") or "")  # "n1>n2#7": the name a release note gives it
                self.d.note("step", text, node=np.name, message=label)
                return {"ok": True, "released": {**msg, "node": np.name, "text": text, "message": label},
                        "queued": self.d.queued()}
        return {"ok": True, "released": None, "queued": self.d.queued()}

    def _node(self, name: str) -> NodeProc:
        if name not in self.d.nodes:
            raise NotFoundError(f"no node {name!r}; nodes are {', '.join(self.d.nodes)}")
        return self.d.nodes[name]

    async def _all_nodes(self, msg: dict[str, Any]) -> None:
        await asyncio.gather(
            *(
                n.link.request(msg)
                for n in self.d.nodes.values()
                if n.link is not None and n.proc is not None and n.proc.returncode is None
            )
        )

    async def do_kill(self, np: NodeProc) -> dict[str, Any]:
        if np.proc is None or np.proc.returncode is not None:
            return {"ok": False, "error": f"{np.name} is not running"}
        np.intent = "killed"
        # Noted before the signal: the peers notice the death within milliseconds, and the
        # timeline must show the cause ahead of its effects (noted after the wait, it came
        # ~50 ms after their peer-down events).
        self.d.note("action", f"kill {np.name}: SIGKILL to its engine (pid {np.proc.pid})", node=np.name,
                    action="kill")
        self.d.failed_at = time.time()
        np.proc.send_signal(signal.SIGKILL)
        await np.proc.wait()
        assert self.d.record is not None
        self.d.record.remove_process(np.proc.pid)
        return {"ok": True, "killed_at": time.time()}

    async def do_crash(self, np: NodeProc) -> dict[str, Any]:
        if np.intent != "active":
            return {"ok": False, "error": f"{np.name} is {np.intent}, not active"}
        assert self.d.record is not None
        np.intent = "crashed"
        record = self.d.record

        def cut() -> float:
            lab_build.cut_links(record, np.name)
            return time.time()

        # The crash is the cut, stamped in the thread that made it: the request can come 100 ms
        # before it (pyroute2 entering the fabric namespace) and this loop resume as late after.
        # Noted first, so the timeline shows it ahead of the peers' reaction.
        self.d.note("action", f"crash {np.name}: all its links cut at once", node=np.name, action="crash")
        self.d.failed_at = cut_at = await asyncio.to_thread(cut)
        return {"ok": True, "crashed_at": cut_at}

    async def do_revive(self, np: NodeProc) -> dict[str, Any]:
        if np.intent == "active" and np.proc is not None and np.proc.returncode is None:
            return {"ok": False, "error": f"{np.name} is already active"}
        assert self.d.record is not None
        if np.proc is not None and np.proc.returncode is None:
            # A crashed node reboots: the isolated process goes, a fresh one joins.
            np.proc.send_signal(signal.SIGKILL)
            await np.proc.wait()
            self.d.record.remove_process(np.proc.pid)
        if np.intent == "crashed":
            await asyncio.to_thread(lab_build.restore_links, self.d.record, np.name)
        await self.d.start_node(np.name)
        self.d.note("action", f"revive {np.name}: a fresh engine joins and resyncs", node=np.name,
                    action="revive")
        return {"ok": True}

    async def do_offline(self, np: NodeProc) -> dict[str, Any]:
        if np.intent != "active" or np.link is None or np.proc is None:
            return {"ok": False, "error": f"{np.name} is not active"}
        np.intent = "offline"
        reply = await np.link.request({"cmd": "leave"})
        if not reply.get("ok"):
            return reply
        self.d.note("action", f"offline {np.name}: graceful leave", node=np.name, action="offline")
        try:
            await asyncio.wait_for(np.proc.wait(), 10.0)
        except TimeoutError:
            return {"ok": False, "error": f"{np.name} did not finish leaving within 10 s"}
        self.d.record.remove_process(np.proc.pid) if self.d.record else None
        return {"ok": True}

    def traffic_stop(self, name: str | None) -> dict[str, Any]:
        names = [n for n, (_p, m) in self.d.workloads.items()
                 if m.get("kind") != "server" and (name is None or n == name)]
        if name is not None and not names:
            running = [n for n, (_p, m) in self.d.workloads.items() if m.get("kind") != "server"]
            raise NotFoundError(f"no traffic workload {name!r} runs; running: "
                                f"{', '.join(running) or 'none'}")
        for n in names:
            proc, _ = self.d.workloads[n]
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return {"ok": True, "stopped": names}

    async def traffic_start(self, req: api.TrafficStart) -> dict[str, Any]:
        hosts = {h.name: h for h in self.d.spec.hosts}
        if req.client not in hosts or hosts[req.client].segment != "inside":
            inside = [h.name for h in self.d.spec.hosts if h.segment == "inside"]
            raise NotFoundError(f"client must be an inside host ({', '.join(inside)}), "
                                f"not {req.client!r}")
        module, role, port = WORKLOADS[req.kind]
        if req.server is not None:
            if req.server not in hosts or hosts[req.server].role != role:
                fits = [h.name for h in self.d.spec.hosts if h.role == role]
                raise NotFoundError(f"server for {req.kind} traffic must be one of "
                                    f"{', '.join(fits) or 'none'}, not {req.server!r}")
            server = hosts[req.server]
        else:
            candidates = [h for h in self.d.spec.hosts if h.role == role]
            if not candidates:
                raise StateError(f"this lab has no host with role {role!r} for {req.kind} traffic")
            server = candidates[0]
        address = str(server.ip)
        if req.ipv6:
            if server.ip6 is None:
                raise StateError(f"this lab has no IPv6 (server {server.name} has no IPv6 address)")
            address = str(server.ip6)
        self.d.traffic_seq += 1
        name = f"{req.kind}{'6' if req.ipv6 else ''}-{req.client}-{self.d.traffic_seq}"
        health = str(self.d.run_dir / "flows" / f"{name}.json")
        args = [*module, "--server", address, *(["--port", port] if port else [])]
        for option, value in req.options().items():
            args += [f"--{option.replace('_', '-')}", str(value)]
        args += ["--health-file", health, "--name", name]
        meta = {"kind": req.kind, **req.options(), **({"ipv6": True} if req.ipv6 else {})}
        await self.d.start_workload(name, req.client, args, meta)
        return {"ok": True, "name": name, "health_file": health, "options": req.options()}

    async def fault(self, req: api.Fault) -> dict[str, Any]:
        """Fault injection on the sync segment (loss, partition, slow peer, heal): see netns/faults.py."""
        from netns import faults

        assert self.d.record is not None
        msg = req.to_dict()
        if req.kind == "heal":
            # Heal undoes every fault, the nodes' slow sync input included.
            await self._all_nodes({"cmd": "slow", "delay_ms": 0})
        if req.kind == "slow":
            assert req.node is not None and req.delay_ms is not None  # the schema requires them
            np = self._node(req.node)
            if np.link is None:
                return api.refused(f"{np.name} is not running")
            reply = await np.link.request({"cmd": "slow", "delay_ms": req.delay_ms})
        else:
            reply = await asyncio.to_thread(faults.apply_fault, self.d.spec, self.d.record, msg)
        if reply.get("ok"):
            self.d.faults_active = faults.describe_active(self.d.faults_active, msg)
            given = {k: v for k, v in msg.items() if k != "cmd"}
            self.d.note("fault", f"fault {req.kind}: {json.dumps(given)}")
        return reply

