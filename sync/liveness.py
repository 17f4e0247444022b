"""Fast, certain failure detection: one authenticated TCP connection per pair of nodes on the
sync segment. When a node's process dies its kernel closes that connection at once (FIN, or
RST if data was unread), and the peer's agent hears of it within a millisecond through
`SyncAgent.peer_closed`. Like sync/transport.py, a binding of the pure agent to sockets.

Why this cannot mistake a slow node for a dead one: after the hello nothing is ever sent on
the connection and nothing here waits for anything with a timeout, so a paused or busy
process, whose kernel keeps its sockets open and answers TCP for it, is never reported. Only
an orderly end (EOF) or a reset of a connection that had been established and
authenticated counts; a refused or timed-out connection attempt, or any other socket error,
is merely retried. Crashes without a close (a frozen host, a cut link) stay the heartbeats'
job.

Who connects: the node earlier in the configured ring dials the later one, so each pair has
exactly one connection and nobody has to break ties. Where: the peer's sync address, the same
port number as its UDP sync socket but on TCP (a separate port space): no new setting, and a
firewall rule for the sync segment names one port. The dialer binds its own sync address, so
the listener can check that a connection comes from where the claimed peer lives.

The hello, one line each way then one proof each way:
    SWLIVE1 <lab> <node> <incarnation> <nonce hex>
    <HMAC-SHA256 with the lab key over both hellos, sender's first, hex>
The incarnation says which process holds the connection, so a close of an old process
cannot fail its successor (the agent checks it against the one it knows); the fresh nonces
make a recorded proof useless, so a stranger without the key cannot open a connection
in a peer's name and close it to fail that peer.

After the proofs only one thing is ever sent: `bye`, by a live process just before it drops
a link on purpose (it gave up a slow handshake the other side had already completed, a newer
link replaces it, it is stale). A link that ends after a bye tells nothing; TCP delivers the
bye before the end, so a live process's own close is never taken for its death. Only
`close()`, when the node itself goes away, ends its links without one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sync.agent import SyncAgent
from sync.config import Address
from sync.records import SyncError

log = logging.getLogger(__name__)

MAGIC = "SWLIVE1"
_MAX_LINE = 512  # the stream limit: a hello line is far shorter


class _Refused(SyncError):
    """A hello we do not accept (internal: the connection is dropped and counted)."""


@dataclass(slots=True)
class _Conn:
    peer: str
    incarnation: int
    writer: asyncio.StreamWriter
    quiet: bool = False  # dropped on purpose by either end: its end tells nothing


class Liveness:
    """Keeps one authenticated TCP connection to every peer of `agent` and reports the close
    of an established one to `agent.peer_closed`; `on_closed()` then (for instance the sync
    transport's flush, so the view that follows leaves at once). Start it with `start()`,
    stop it with `close()`."""

    def __init__(
        self,
        agent: SyncAgent,
        local_addr: Address,
        *,
        clock: Callable[[], float] | None = None,
        on_closed: Callable[[], None] | None = None,
        backoff_s: tuple[float, float] = (0.005, 0.5),
        hello_timeout_s: float = 1.0,
    ) -> None:
        self.agent = agent
        self.local_addr = local_addr
        self.on_closed = on_closed
        self._clock = clock
        self._backoff = backoff_s
        # Only the handshake is bounded in time (an unauthenticated connection tells nothing,
        # so giving up on it can never fail a peer).
        self._hello_timeout_s = hello_timeout_s
        cfg = agent.config
        self._key = cfg.key
        self._lab = cfg.lab_id
        names = cfg.names
        me = names.index(cfg.node)
        self._addrs: dict[str, Address] = {n: (a[0], int(a[1])) for n, a in cfg.nodes if n != cfg.node}
        self._dial = list(names[me + 1:])
        self._accept = set(names[:me])
        self._conns: dict[str, _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self.counters: Counter[str] = Counter()

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # ---- life ---------------------------------------------------------------------------

    async def start(self) -> Liveness:
        """Listen for the earlier nodes (if any) and begin dialling the later ones."""
        if self._accept:
            self._server = await asyncio.start_server(
                self._accepted, self.local_addr[0], self.local_addr[1], reuse_address=True, limit=_MAX_LINE
            )
        for name in self._dial:
            self._spawn(self._dial_loop(name))
        self._spawn(self._watch())
        return self

    def close(self) -> None:
        """Stop, when this node's process goes away: close every link without a bye (the
        peers take it as our end, as they should) and stop listening and dialling."""
        self._closing = True
        for c in self._conns.values():
            c.quiet = True
            c.writer.close()
        self._conns.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()

    def connected(self) -> dict[str, int]:
        """Peer -> the incarnation at the other end of its authenticated connection."""
        return {n: c.incarnation for n, c in self._conns.items()}

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- the two sides ----------------------------------------------------------------------

    async def _dial_loop(self, name: str) -> None:
        lo, hi = self._backoff
        delay = lo
        host, port = self._addrs[name]
        while not self._closing:
            try:
                # Bounded: a SYN into a cut link would otherwise wait for the kernel's minutes.
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(self.local_addr[0], 0), limit=_MAX_LINE),
                    self._hello_timeout_s,
                )
            except (OSError, TimeoutError) as exc:  # refused (not up yet, or gone), no answer: later
                self.counters["connect-failed"] += 1
                log.debug("%s: liveness connect to %s failed: %s", self.agent.node, name, exc)
                await asyncio.sleep(delay)
                delay = min(hi, delay * 2)
                continue
            established = await self._serve(reader, writer, name)
            # Right after a close, the node may be coming back at once: try again soon.
            delay = lo if established else min(hi, delay * 2)
            await asyncio.sleep(delay)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # so that close() ends it too
            self._tasks.add(task)
        try:
            await self._serve(reader, writer, None)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expect: str | None
    ) -> bool:
        """One connection: the hello, then wait for its end. Returns whether it was established."""
        try:
            try:
                name, inc = await asyncio.wait_for(self._hello(reader, writer, expect), self._hello_timeout_s)
            except Exception as exc:  # refused, timed out, cut, malformed: all end the same way
                self.counters["hello-refused"] += 1
                log.info("%s: liveness hello refused (%s): %s", self.agent.node, expect or "incoming", exc)
                # The other end may have completed its side: tell it we drop this on purpose.
                self._bye(writer)
                return False
            if self._closing:
                return False
            conn = _Conn(name, inc, writer)
            old = self._conns.get(name)
            if old is not None:  # a newer process, or the same one again: the old link tells nothing more
                self._drop(old)
            self._conns[name] = conn
            self.counters["established"] += 1
            log.info("%s: liveness link to %s (incarnation %d) up", self.agent.node, name, inc)
            await self._until_closed(reader, conn)
            return True
        finally:
            writer.close()

    async def _until_closed(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        closed = False
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    closed = True  # EOF: the peer's socket was closed (its process ended)
                    break
                # Only a bye follows the hello: the other end drops this link on purpose.
                self.counters["bye"] += 1
                conn.quiet = True
        except ConnectionResetError:
            closed = True  # RST: its process ended with unread data
        except OSError as exc:  # a timeout or an unreachable host is not a death certificate
            self.counters["lost"] += 1
            log.info("%s: liveness link to %s lost: %s", self.agent.node, conn.peer, exc)
        if self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]
        if not closed or conn.quiet or self._closing:
            return
        self.counters["closed"] += 1
        log.info("%s: liveness link to %s closed by its end", self.agent.node, conn.peer)
        self.agent.peer_closed(conn.peer, conn.incarnation, self.now())
        if self.on_closed is not None:
            self.on_closed()

    async def _watch(self) -> None:
        """A link whose peer the agent knows by a newer incarnation is a leftover (its end
        died while a link was cut, so no close came): drop it quietly so a new one forms."""
        while not self._closing:
            await asyncio.sleep(0.25)
            for name, c in list(self._conns.items()):
                p = self.agent.peers.get(name)
                if p is not None and p.inc not in (0, c.incarnation):
                    self.counters["stale-link"] += 1
                    self._drop(c)

    def _drop(self, c: _Conn) -> None:
        c.quiet = True
        self._bye(c.writer)

    @staticmethod
    def _bye(writer: asyncio.StreamWriter) -> None:
        """Drop a link on purpose: a bye first (sent at once, before the FIN or RST)."""
        if not writer.is_closing():
            with contextlib.suppress(OSError):
                writer.write(b"bye\n")
        writer.close()

    # ---- the hello ----------------------------------------------------------------------------

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expect: str | None
    ) -> tuple[str, int]:
        """Exchange hellos and proofs; returns the authenticated peer and its incarnation."""
        me, my_inc, my_nonce = self.agent.node, self.agent.incarnation, os.urandom(16).hex()
        mine = f"{MAGIC} {self._lab} {me} {my_inc} {my_nonce}"
        writer.write(mine.encode() + b"\n")
        theirs = await self._line(reader)
        fields = theirs.split(" ")
        if len(fields) != 5 or fields[0] != MAGIC or fields[1] != self._lab:
            raise _Refused(f"not a liveness hello of this lab: {theirs[:80]!r}")
        name, inc_s, nonce = fields[2], fields[3], fields[4]
        if expect is not None and name != expect:
            raise _Refused(f"dialled {expect}, answered by {name!r}")
        if expect is None:
            if name not in self._accept:
                raise _Refused(f"{name!r} is not a node that dials us")
            peer_ip = writer.get_extra_info("peername")[0]
            if peer_ip != self._addrs[name][0]:
                raise _Refused(f"{name} from {peer_ip}, not its sync address")
        if not inc_s.isdigit() or not 0 < int(inc_s) < 2**63 or len(nonce) != 32:
            raise _Refused("bad incarnation or nonce")
        writer.write(self._proof(mine, theirs).encode() + b"\n")
        await writer.drain()
        proof = await self._line(reader)
        if not hmac.compare_digest(proof, self._proof(theirs, mine)):
            raise _Refused(f"{name}: bad proof")
        return name, int(inc_s)

    def _proof(self, sender_hello: str, receiver_hello: str) -> str:
        msg = f"{sender_hello}\n{receiver_hello}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    @staticmethod
    async def _line(reader: asyncio.StreamReader) -> str:
        line = await reader.readuntil(b"\n")  # the stream's limit bounds it (LimitOverrunError)
        return line[:-1].decode("ascii")


async def open_liveness(
    agent: SyncAgent,
    local_addr: Address,
    *,
    clock: Callable[[], float] | None = None,
    on_closed: Callable[[], None] | None = None,
) -> Liveness:
    """Start the liveness links of `agent`, whose sync socket is bound at `local_addr`."""
    return await Liveness(agent, local_addr, clock=clock, on_closed=on_closed).start()
