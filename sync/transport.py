"""Thin asyncio UDP binding for a SyncAgent: the only module of sync/ that touches sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from sync.agent import Address, SyncAgent, SyncEvent

log = logging.getLogger(__name__)


class SyncTransport(asyncio.DatagramProtocol):
    """Feeds received datagrams to the agent, sends what it has to send, and ticks it.

    `on_events` is called (from the event loop) with the agent's events after every step."""

    def __init__(
        self,
        agent: SyncAgent,
        on_events: Callable[[list[SyncEvent]], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.agent = agent
        self.on_events = on_events
        self._clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.send_errors = 0

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        src: Address = (str(addr[0]), int(addr[1]))
        self.agent.receive(data, src, self.now())
        self.flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer and the like: expected, not fatal.
        log.debug("sync socket error: %s", exc)

    def flush(self) -> None:
        """Send pending datagrams and hand out pending events."""
        if self.transport is not None and not self.transport.is_closing():
            for addr, data in self.agent.datagrams():
                try:
                    self.transport.sendto(data, addr)
                except OSError as exc:
                    self.send_errors += 1
                    log.debug("sync send to %s failed: %s", addr, exc)
        events = self.agent.events()
        if events and self.on_events is not None:
            self.on_events(events)

    async def _tick_loop(self, tick_s: float) -> None:
        while True:
            self.agent.tick(self.now())
            self.flush()
            await asyncio.sleep(tick_s)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self.transport is not None:
            self.transport.close()


async def open_sync_transport(
    agent: SyncAgent,
    local_addr: Address,
    *,
    tick_ms: float = 2.0,
    on_events: Callable[[list[SyncEvent]], None] | None = None,
) -> SyncTransport:
    """Bind the agent's UDP socket at `local_addr` (its configured sync address), start it
    and tick it every `tick_ms`. Close with `SyncTransport.close()`."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: SyncTransport(agent, on_events), local_addr=local_addr
    )
    agent.start(proto.now())
    proto.flush()
    proto._ticker = asyncio.create_task(proto._tick_loop(tick_ms / 1000.0))
    return proto
