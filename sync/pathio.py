"""Thin asyncio binding of sync/paths.py: one non-blocking AF_PACKET socket per cluster
interface, bound to the path EtherType, read with `loop.add_reader`; probes sent on a timer.
Like sync/transport.py and sync/liveness.py, a binding of a pure core to sockets.

SOCK_DGRAM packet sockets: the kernel adds and strips the Ethernet header; we send to the
path group MAC. Frames this host sent itself (PACKET_OUTGOING) are ignored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from sync.paths import ETHERTYPE, GROUP_MAC, DatagramTooBig, Paths, Received

log = logging.getLogger(__name__)

PACKET_OUTGOING = 4
_READ_BUDGET = 256


def carrier(ifname: str) -> bool:
    """Whether `ifname` (in this process's namespace) is up with carrier; True if unknown."""
    try:
        return Path(f"/sys/class/net/{ifname}/operstate").read_text().strip() != "down"
    except OSError:
        return True


class PathIO:
    """Sends the probes of `paths` on every interface of `ifaces` (path -> interface name)
    and hands what arrives to `on_received(Received, now)`."""

    def __init__(self, paths: Paths, ifaces: Mapping[str, str],
                 on_received: Callable[[Received, float], None], clock: Callable[[], float]) -> None:
        self.paths = paths
        self.ifaces = {p: i for p, i in ifaces.items() if p in paths.paths}
        self.on_received = on_received
        self.clock = clock
        self.socks: dict[str, socket.socket] = {}
        self.errors: Counter[str] = Counter()
        self._next_probe = 0.0

    def open(self) -> PathIO:
        loop = asyncio.get_running_loop()
        for path, ifname in self.ifaces.items():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETHERTYPE))
            s.bind((ifname, ETHERTYPE))
            s.setblocking(False)
            self.socks[path] = s
            loop.add_reader(s.fileno(), self._readable, path, s)
        return self

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self.socks.values():
            with contextlib.suppress(Exception):
                loop.remove_reader(s.fileno())
            s.close()
        self.socks.clear()

    def _send(self, path: str, data: bytes) -> bool:
        s = self.socks.get(path)
        if s is None:
            return False
        try:
            s.sendto(data, (self.ifaces[path], ETHERTYPE, 0, 0, GROUP_MAC))
            return True
        except OSError as exc:  # the interface is down, or its queue full: the path is silent
            self.errors[f"send:{path}"] += 1
            log.debug("path %s send failed: %s", path, exc)
            return False

    def tick(self, now: float) -> None:
        """Send the probes when they are due (every probe interval, on every path)."""
        if now < self._next_probe:
            return
        self._next_probe = now + self.paths.probe_s
        for path in self.socks:
            self._send(path, self.paths.probe(path, now))

    def send_record(self, path: str, dst: str, datagram: bytes) -> bool:
        """One sync datagram for `dst` on data path `path`; False if it could not go."""
        try:
            frame = self.paths.record(path, dst, datagram)
        except DatagramTooBig as exc:
            log.warning("sync datagram to %s not sent on %s: %s", dst, path, exc)
            return False
        return self._send(path, frame)

    def drain(self) -> None:
        """Read every path's socket now. Judging the paths right after a stall (a long callback,
        a starved CPU) without this would see the sockets read last before it as fresh and the
        others as silent: frames waiting unread on inside, say, while the sync path's were read
        just before the stall, look like a node that hears no peer on inside, and it would
        fence itself with its links working."""
        for path, s in self.socks.items():
            self._readable(path, s)

    def fencing(self) -> bool:
        """Whether this node should be fenced now (sync/paths.py), judged on every path's
        frames that arrived up to now: each socket is drained first."""
        self.drain()
        return self.paths.fencing(self.clock(), self.carriers())

    def carriers(self) -> dict[str, bool]:
        return {p: carrier(i) for p, i in self.ifaces.items()}

    def _readable(self, path: str, s: socket.socket) -> None:
        now = self.clock()
        for _ in range(_READ_BUDGET):
            try:
                data, addr = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.errors[f"recv:{path}"] += 1
                log.debug("path %s recv failed: %s", path, exc)
                break
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            got = self.paths.receive(path, data, now)
            if got is not None:
                self.on_received(got, now)

