"""sync/liveness.py over loopback: a peer whose process dies (SIGKILL, or its sockets closed
abruptly) is reported to the agent with its incarnation at once; a paused one (SIGSTOP) and a
stranger who opens and closes a connection in a peer's name are not.

Run as a script it is the child process of these tests (`child`), or measures the time from
SIGKILL to peer_closed (`measure [tries]`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # as the child: make the project importable
    sys.path.insert(0, str(ROOT))

from sync.agent import PeerDown, SyncAgent, SyncConfig, SyncEvent  # noqa: E402
from sync.liveness import MAGIC, Liveness  # noqa: E402
from sync.records import MemoryStore  # noqa: E402
from sync.transport import open_sync_transport  # noqa: E402

KEY = b"liveness-test-key"


class RecordingAgent(SyncAgent):
    """A real agent that also notes every close it is told of, and when."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.closes: list[tuple[str, int, float]] = []
        self.closed_event = asyncio.Event()
        self.seen: list[SyncEvent] = []  # what its transport handed out

    def peer_closed(self, name: str, incarnation: int, now: float) -> bool:
        self.closes.append((name, incarnation, time.monotonic()))
        self.closed_event.set()
        return super().peer_closed(name, incarnation, now)


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _nodes(port: int | None = None) -> list[list[Any]]:
    """Two nodes on two loopback addresses (so the source check is real)."""
    return [["n1", ["127.0.0.1", port or _free_port("127.0.0.1")]],
            ["n2", ["127.0.0.2", _free_port("127.0.0.2")]]]


def _config(node: str, nodes: list[list[Any]], **kw: Any) -> SyncConfig:
    return SyncConfig(lab_id="t", key=KEY, node=node, nodes=tuple((n, (a[0], a[1])) for n, a in nodes),
                      buckets=4, **kw)


def _addr(nodes: list[list[Any]], node: str) -> tuple[str, int]:
    a = dict((n, a) for n, a in nodes)[node]
    return (a[0], int(a[1]))


async def _until(pred: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Await a condition we cannot be called back for (polled every millisecond)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not pred():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.001)
    return True


class Child:
    """The other node in its own process (liveness links only, or with its sync transport).
    A plain Popen, not asyncio's: its child watcher thread would wake at the very moment we
    measure and compete for the interpreter lock."""

    def __init__(self, proc: subprocess.Popen[bytes], incarnation: int) -> None:
        self.proc = proc
        self.incarnation = incarnation

    @classmethod
    async def spawn(cls, node: str, nodes: list[list[Any]], full: bool = False, **cfg: Any) -> Child:
        arg = json.dumps({"node": node, "nodes": nodes, "full": full, "cfg": cfg})
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "child", arg],
                                stdout=subprocess.PIPE, cwd=str(ROOT))
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20.0)
        assert line.startswith(b"ready "), line
        return cls(proc, int(line.split()[1]))

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def end(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)  # a stopped process dies of it too
        await asyncio.to_thread(self.proc.wait)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def _child_main(arg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    nodes = arg["nodes"]
    agent = SyncAgent(_config(arg["node"], nodes, **arg["cfg"]), MemoryStore(), loop.time())
    addr = _addr(nodes, arg["node"])
    if arg["full"]:
        transport = await open_sync_transport(agent, addr, tick_ms=2)
        live = await Liveness(agent, addr, on_closed=transport.flush).start()
    else:
        live = await Liveness(agent, addr).start()
    sys.stdout.write(f"ready {agent.incarnation}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        live.close()


async def _pair(
    me: str, other: str, full: bool = False, **cfg: Any
) -> tuple[RecordingAgent, Liveness, Child]:
    """This process runs `me`, a child runs `other`; returns once their link is up. Closing
    the Liveness closes this side's sync transport too (full)."""
    nodes = _nodes()
    loop = asyncio.get_running_loop()
    agent = RecordingAgent(_config(me, nodes, **cfg), MemoryStore(), loop.time())
    addr = _addr(nodes, me)
    on_closed = None
    if full:
        transport = await open_sync_transport(agent, addr, tick_ms=2, on_events=agent.seen.extend)
        on_closed = transport.flush
    live = await Liveness(agent, addr, on_closed=on_closed).start()
    if full:
        close_live = live.close

        def close_both() -> None:
            close_live()
            transport.close()

        live.close = close_both  # type: ignore[method-assign]
    child = await Child.spawn(other, nodes, full, **cfg)
    assert await _until(lambda: live.connected().get(other) == child.incarnation), live.counters
    return agent, live, child


@pytest.mark.parametrize(("me", "other"), [("n1", "n2"), ("n2", "n1")], ids=["we-dial", "we-listen"])
def test_a_killed_process_is_reported_with_its_incarnation(me: str, other: str) -> None:
    async def main() -> None:
        agent, live, child = await _pair(me, other)
        try:
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [(n, i) for n, i, _ in agent.closes] == [(other, child.incarnation)]
            assert live.counters["closed"] == 1
        finally:
            live.close()
            await child.end()

    asyncio.run(main())


def test_a_paused_process_is_not_reported_then_its_death_is() -> None:
    async def main() -> None:
        agent, live, child = await _pair("n1", "n2")
        try:
            child.signal(signal.SIGSTOP)
            # Nothing to await: the claim is that nothing happens. Half a second is 50
            # heartbeats of 10 ms, far beyond any detection time.
            await asyncio.sleep(0.5)
            assert agent.closes == [] and live.connected() == {"n2": child.incarnation}
            child.signal(signal.SIGCONT)
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [n for n, _, _ in agent.closes] == ["n2"]
        finally:
            live.close()
            await child.end()

    asyncio.run(main())


def test_sockets_closed_abruptly_in_process_are_reported_and_the_link_comes_back() -> None:
    async def main() -> None:
        nodes = _nodes()
        loop = asyncio.get_running_loop()
        agents = {n: RecordingAgent(_config(n, nodes), MemoryStore(), loop.time()) for n in ("n1", "n2")}
        lives = {n: await Liveness(a, _addr(nodes, n)).start() for n, a in agents.items()}
        try:
            assert await _until(lambda: len(lives["n1"].connected()) == len(lives["n2"].connected()) == 1)
            lives["n2"].close()  # n2 "dies": its kernel closes its sockets
            await asyncio.wait_for(agents["n1"].closed_event.wait(), 5.0)
            assert [(n, i) for n, i, _ in agents["n1"].closes] == [("n2", agents["n2"].incarnation)]
            assert agents["n2"].closes == []  # our own close is no news to us
            # n2 comes back as a new process: n1 dials it again.
            agents["n2"] = RecordingAgent(_config("n2", nodes), MemoryStore(), loop.time())
            lives["n2"] = await Liveness(agents["n2"], _addr(nodes, "n2")).start()
            inc = agents["n2"].incarnation
            assert await _until(lambda: lives["n1"].connected().get("n2") == inc)
        finally:
            for x in lives.values():
                x.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["replayed-proof", "wrong-key", "wrong-source"])
def test_a_stranger_cannot_fail_a_node_by_closing_a_connection_it_opened(how: str) -> None:
    async def main() -> None:
        nodes = _nodes()
        loop = asyncio.get_running_loop()
        agent = RecordingAgent(_config("n2", nodes), MemoryStore(), loop.time())
        live = await Liveness(agent, _addr(nodes, "n2")).start()
        try:
            src = "127.0.0.3" if how == "wrong-source" else "127.0.0.1"
            reader, writer = await asyncio.open_connection(*_addr(nodes, "n2"), local_addr=(src, 0))
            writer.write(f"{MAGIC} t n1 12345 {'ab' * 16}\n".encode())
            await reader.readline()  # its hello
            if how == "wrong-source":
                proof = b"0" * 64
            elif how == "wrong-key":
                import hashlib
                import hmac
                proof = hmac.new(b"not-the-key", b"x", hashlib.sha256).hexdigest().encode()
            else:
                proof = b"f" * 64  # a proof recorded from another exchange: another nonce
            writer.write(proof + b"\n")
            await writer.drain()
            assert await _until(lambda: live.counters["hello-refused"] == 1)
            writer.transport.abort()  # and "dies"
            await asyncio.sleep(0.05)  # nothing to await: the claim is that nothing happens
            assert agent.closes == [] and live.connected() == {} and live.counters["closed"] == 0
        finally:
            live.close()

    asyncio.run(main())


def test_a_killed_engine_is_taken_over_through_its_closed_link_not_its_silence() -> None:
    async def main() -> None:
        # Heartbeats would take a second to notice: if the takeover comes, the close did it.
        cfg = {"heartbeat_ms": 10, "miss_limit": 100}
        agent, live, child = await _pair("n1", "n2", full=True, **cfg)
        try:
            assert await _until(lambda: agent.mode.name == "ACTIVE" and agent.peers["n2"].up
                                and agent.view.state("n2").value == "active")
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert PeerDown("n2") in agent.seen
            assert agent.stats()["counters"]["peer-closed"] == 1
            assert agent.owned_buckets == [1, 2, 3, 4]
        finally:
            live.close()
            await child.end()

    asyncio.run(main())


async def _measure(tries: int) -> list[float]:
    out = []
    for _ in range(tries):
        agent, live, child = await _pair("n1", "n2")
        t0 = time.monotonic()
        child.signal(signal.SIGKILL)
        await asyncio.wait_for(agent.closed_event.wait(), 5.0)
        out.append((agent.closes[0][2] - t0) * 1e3)
        live.close()
        await child.end()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "child":
        asyncio.run(_child_main(json.loads(sys.argv[2])))
    elif sys.argv[1] == "measure":
        ms = asyncio.run(_measure(int(sys.argv[2]) if len(sys.argv) > 2 else 20))
        print(f"SIGKILL -> peer_closed over {len(ms)} tries: p50 {statistics.median(ms):.3f} ms, "
              f"max {max(ms):.3f} ms")
