"""sync/liveness.py over loopback: a peer whose process dies (SIGKILL, or its sockets closed
abruptly) is reported to the agent with its incarnation at once; a paused one (SIGSTOP) and a
stranger who opens and closes a connection in a peer's name are not.

Run as a script it is the child process of these tests (`child`), or measures the time from
SIGKILL to peer_closed, in both roles (`python tests/unit/test_sync_liveness.py measure 20`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
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
        self.liveness: Liveness | None = None

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
) -> tuple[RecordingAgent, Callable[[], None], Child]:
    """This process runs `me`, a child runs `other`; returns once their link is up, with the
    function that stops this side (its Liveness, and its sync transport if `full`)."""
    nodes = _nodes()
    loop = asyncio.get_running_loop()
    agent = RecordingAgent(_config(me, nodes, **cfg), MemoryStore(), loop.time())
    addr = _addr(nodes, me)
    stops: list[Callable[[], None]] = []
    on_closed = None
    if full:
        transport = await open_sync_transport(agent, addr, tick_ms=2, on_events=agent.seen.extend)
        on_closed = transport.flush
        stops.append(transport.close)
    live = await Liveness(agent, addr, on_closed=on_closed).start()
    stops.append(live.close)
    agent.liveness = live

    def stop() -> None:
        for f in stops:
            f()

    try:
        child = await Child.spawn(other, nodes, full, **cfg)
        assert await _until(lambda: live.connected().get(other) == child.incarnation), live.counters
    except BaseException:
        stop()
        raise
    return agent, stop, child


@pytest.mark.parametrize(("me", "other"), [("n1", "n2"), ("n2", "n1")], ids=["we-dial", "we-listen"])
def test_a_killed_process_is_reported_with_its_incarnation(me: str, other: str) -> None:
    async def main() -> None:
        agent, stop, child = await _pair(me, other)
        try:
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [(n, i) for n, i, _ in agent.closes] == [(other, child.incarnation)]
            assert agent.liveness is not None and agent.liveness.counters["closed"] == 1
        finally:
            stop()
            await child.end()

    asyncio.run(main())


def test_a_paused_process_is_not_reported_then_its_death_is() -> None:
    async def main() -> None:
        agent, stop, child = await _pair("n1", "n2")
        try:
            child.signal(signal.SIGSTOP)
            # Nothing to await: the claim is that nothing happens. Half a second is 50
            # heartbeats of 10 ms, far beyond any detection time.
            await asyncio.sleep(0.5)
            assert agent.liveness is not None
            assert agent.closes == [] and agent.liveness.connected() == {"n2": child.incarnation}
            child.signal(signal.SIGCONT)
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [n for n, _, _ in agent.closes] == ["n2"]
        finally:
            stop()
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


async def _dial_as(
    addr: tuple[str, int], name: str, inc: int, src_ip: str, key: bytes = KEY, proof: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Our own hello to a Liveness listener, as `name`; returns the proof we sent."""
    reader, writer = await asyncio.open_connection(*addr, local_addr=(src_ip, 0))
    mine = f"{MAGIC} t {name} {inc} {os.urandom(16).hex()}"
    writer.write(mine.encode() + b"\n")
    theirs = (await reader.readline()).decode().rstrip("\n")
    sent = proof or hmac.new(key, f"{mine}\n{theirs}".encode(), hashlib.sha256).hexdigest()
    writer.write(sent.encode() + b"\n")
    await writer.drain()
    return reader, writer, sent


async def _listener(node: str = "n2") -> tuple[list[list[Any]], RecordingAgent, Liveness]:
    nodes = _nodes()
    agent = RecordingAgent(_config(node, nodes), MemoryStore(), asyncio.get_running_loop().time())
    return nodes, agent, await Liveness(agent, _addr(nodes, node)).start()


@pytest.mark.parametrize("how", ["replayed-proof", "wrong-key", "wrong-source"])
def test_a_stranger_cannot_fail_a_node_by_closing_a_connection_it_opened(how: str) -> None:
    async def main() -> None:
        nodes, agent, live = await _listener()
        try:
            addr = _addr(nodes, "n2")
            proof = None
            if how == "replayed-proof":  # a proof seen on the wire, from an earlier exchange
                _, w, proof = await _dial_as(addr, "n1", 12345, "127.0.0.1")
                assert await _until(lambda: live.connected() == {"n1": 12345})
                w.write(b"bye\n")
                w.close()
                assert await _until(lambda: live.connected() == {})
            src = "127.0.0.3" if how == "wrong-source" else "127.0.0.1"
            key = b"not-the-key" if how == "wrong-key" else KEY
            _, writer, _ = await _dial_as(addr, "n1", 12345, src, key, proof)
            assert await _until(lambda: live.counters["hello-refused"] == 1)
            writer.transport.abort()  # and "dies"
            await asyncio.sleep(0.05)  # nothing to await: the claim is that nothing happens
            assert agent.closes == [] and live.connected() == {} and live.counters["closed"] == 0
        finally:
            live.close()

    asyncio.run(main())


def test_a_link_dropped_after_a_bye_tells_nothing_and_one_dropped_without_tells_its_death() -> None:
    async def main() -> None:
        nodes, agent, live = await _listener()
        try:
            addr = _addr(nodes, "n2")
            _, writer, _ = await _dial_as(addr, "n1", 111, "127.0.0.1")
            assert await _until(lambda: live.connected() == {"n1": 111})
            writer.write(b"bye\n")  # a live process dropping the link on purpose
            writer.transport.abort()  # even with a reset right behind it
            assert await _until(lambda: live.connected() == {})
            assert live.counters["bye"] == 1 and agent.closes == []
            _, writer, _ = await _dial_as(addr, "n1", 222, "127.0.0.1")
            assert await _until(lambda: live.connected() == {"n1": 222})
            writer.transport.abort()  # a death
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [(n, i) for n, i, _ in agent.closes] == [("n1", 222)]
        finally:
            live.close()

    asyncio.run(main())


def test_a_new_link_of_the_same_peer_replaces_the_old_one_which_then_tells_nothing() -> None:
    async def main() -> None:
        nodes, agent, live = await _listener()
        try:
            addr = _addr(nodes, "n2")
            old_reader, old_writer, _ = await _dial_as(addr, "n1", 111, "127.0.0.1")
            await old_reader.readline()  # its proof
            assert await _until(lambda: live.connected() == {"n1": 111})
            # n1 restarted while the old link was cut (no close reached n2): a new link.
            _, writer, _ = await _dial_as(addr, "n1", 222, "127.0.0.1")
            assert await _until(lambda: live.connected() == {"n1": 222})
            assert await asyncio.wait_for(old_reader.readline(), 5.0) == b"bye\n"
            old_writer.transport.abort()
            writer.transport.abort()  # the new process dies
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert [(n, i) for n, i, _ in agent.closes] == [("n1", 222)]
        finally:
            live.close()

    asyncio.run(main())


def test_a_killed_engine_is_taken_over_through_its_closed_link_not_its_silence() -> None:
    async def main() -> None:
        # Heartbeats would take a second to notice: if the takeover comes, the close did it.
        cfg = {"heartbeat_ms": 10, "miss_limit": 100}
        agent, stop, child = await _pair("n1", "n2", full=True, **cfg)
        try:
            assert await _until(lambda: agent.mode.name == "ACTIVE" and agent.peers["n2"].up
                                and agent.view.state("n2").value == "active")
            child.signal(signal.SIGKILL)
            await asyncio.wait_for(agent.closed_event.wait(), 5.0)
            assert PeerDown("n2", closed=True) in agent.seen
            assert agent.stats()["counters"]["peer-closed"] == 1
            assert agent.owned_buckets == [1, 2, 3, 4]
        finally:
            stop()
            await child.end()

    asyncio.run(main())


async def _measure(tries: int, me: str = "n1", other: str = "n2") -> list[float]:
    out = []
    for _ in range(tries):
        agent, stop, child = await _pair(me, other)
        t0 = time.monotonic()
        child.signal(signal.SIGKILL)
        await asyncio.wait_for(agent.closed_event.wait(), 5.0)
        out.append((agent.closes[0][2] - t0) * 1e3)
        stop()
        await child.end()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "child":
        asyncio.run(_child_main(json.loads(sys.argv[2])))
    elif sys.argv[1] == "measure":
        tries = int(sys.argv[2]) if len(sys.argv) > 2 else 20
        for me, other, role in (("n1", "n2", "we dial"), ("n2", "n1", "we listen")):
            ms = asyncio.run(_measure(tries, me, other))
            print(f"SIGKILL -> peer_closed ({role}) over {len(ms)} tries: "
                  f"p50 {statistics.median(ms):.3f} ms, max {max(ms):.3f} ms")
