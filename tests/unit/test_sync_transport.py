"""The asyncio UDP transport: two agents over real loopback sockets replicate a record."""

from __future__ import annotations

import asyncio
import socket

from sync.agent import SyncAgent, SyncCompleted, SyncConfig, SyncEvent
from sync.records import MemoryStore, Record, Scope
from sync.transport import open_sync_transport


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_agents_over_loopback_sync_a_record() -> None:
    async def main() -> None:
        nodes = (("n1", ("127.0.0.1", _free_port())), ("n2", ("127.0.0.1", _free_port())))
        base = dict(lab_id="t", key=b"loopback-test-key", nodes=nodes, buckets=4, heartbeat_ms=10)
        stores = {n: MemoryStore() for n, _ in nodes}
        events: dict[str, list[SyncEvent]] = {n: [] for n, _ in nodes}
        loop = asyncio.get_running_loop()
        agents = {
            n: SyncAgent(SyncConfig(node=n, **base), stores[n], loop.time())  # type: ignore[arg-type]
            for n, _ in nodes
        }
        transports = [
            await open_sync_transport(agents[n], addr, tick_ms=2, on_events=events[n].extend)
            for n, addr in nodes
        ]
        try:
            deadline = loop.time() + 5.0
            while loop.time() < deadline and not all(a.mode.name == "ACTIVE" for a in agents.values()):
                await asyncio.sleep(0.01)
            assert all(a.mode.name == "ACTIVE" for a in agents.values())
            stores["n1"].put_local(Record(b"k", Scope.COMMON, "n1", 1, -1, [1, "x"]))
            token = agents["n1"].sync_and_notify([b"k"], loop.time(), timeout_s=2.0)
            transports[0].flush()
            while loop.time() < deadline and not any(isinstance(e, SyncCompleted) for e in events["n1"]):
                await asyncio.sleep(0.005)
            assert SyncCompleted(token, True, ("n2",)) in events["n1"]
            got = stores["n2"].get(b"k")
            assert got is not None and got.data == [1, "x"]
            assert agents["n2"].stats()["bad_frames"] == {}
        finally:
            for t in transports:
                t.close()

    asyncio.run(main())
