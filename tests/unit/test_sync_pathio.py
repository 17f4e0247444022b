"""sync/pathio.py without sockets: a node judges its paths only after reading every path's
socket, so a stall of its loop cannot make working links look cut (a node once fenced itself
on a healthy lab: the sync path's probes had been read just before a stall, the inside ones
waited unread, and inside looked silent)."""

from __future__ import annotations

import copy
from collections import deque

from sync.pathio import PathIO
from sync.paths import PATHS, Paths

NAMES = ["n1", "n2", "n3"]
KEY = b"lab-key-0123456789abcdef"
PACKET_MULTICAST = 2  # what the kernel says of a frame to the path group MAC


class _Socket:
    """What PathIO reads of an AF_PACKET socket: frames waiting, then BlockingIOError."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.waiting: deque[bytes] = deque()

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int, int, int, bytes]]:
        if not self.waiting:
            raise BlockingIOError
        return self.waiting.popleft()[:size], (self.ifname, 0x88B5, PACKET_MULTICAST, 1, b"\0" * 6)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _node(name: str, inc: int, clock: _Clock) -> tuple[PathIO, dict[str, _Socket]]:
    paths = Paths("lab1", KEY, name, NAMES, inc, clock.t, grace_s=0.0)
    # Interface names no host has: carriers() reads /sys/class/net/NAME and takes "unknown" as up.
    pio = PathIO(paths, {p: f"swt-none-{p}" for p in PATHS}, lambda r, now: None, clock)
    socks = {p: _Socket(p) for p in PATHS}
    pio.socks = socks  # type: ignore[assignment]  # stand-ins for the packet sockets
    return pio, socks


def _probe_all(rx: dict[str, _Socket], senders: list[Paths], now: float,
               paths: tuple[str, ...] = PATHS) -> None:
    for s in senders:
        for p in paths:
            rx[p].waiting.append(s.probe(p, now))


def _peers_go_on(clock: _Clock, n2: PathIO, s2: dict[str, _Socket], n3: PathIO,
                 s3: dict[str, _Socket]) -> None:
    """One probe interval of n2 and n3 hearing each other on every path."""
    clock.t += 0.01
    _probe_all(s2, [n3.paths], clock.t)
    _probe_all(s3, [n2.paths], clock.t)
    n2.drain()
    n3.drain()


def test_a_stalled_loop_reads_every_path_before_judging_and_does_not_fence_itself() -> None:
    clock = _Clock()
    n1, s1 = _node("n1", 11, clock)
    n2, s2 = _node("n2", 22, clock)
    n3, s3 = _node("n3", 33, clock)
    # Everyone hears everyone on every path for a few probe intervals.
    for _ in range(4):
        clock.t += 0.01
        for rx, others in ((s1, [n2, n3]), (s2, [n1, n3]), (s3, [n1, n2])):
            _probe_all(rx, [o.paths for o in others], clock.t)
        for pio in (n1, n2, n3):
            pio.drain()
    assert not n1.fencing()
    # n1's loop stalls for 50 ms. Its peers go on probing; the sync path's socket happens to be
    # read just before the stall, and the inside and outside frames wait in their sockets.
    for _ in range(5):
        _peers_go_on(clock, n2, s2, n3, s3)
        _probe_all(s1, [n2.paths, n3.paths], clock.t)
    n1._readable("sync", s1["sync"])  # type: ignore[arg-type]
    clock.t += 0.005
    carrier = {"inside": True, "outside": True}
    # Judged on what was read, n1 would fence: it hears its peers on sync, they report hearing
    # each other on inside, and it has read nothing on inside for longer than three probes.
    judged_unread = copy.deepcopy(n1.paths).fencing(clock.t, carrier)
    assert judged_unread, "the stall must be one that fences a node that judges before reading"
    assert not n1.fencing(), n1.paths.fence_why
    assert not any(s1[p].waiting for p in PATHS), "every path's socket was read"
    # And a real silent cut of inside still fences after the read.
    for _ in range(5):
        _peers_go_on(clock, n2, s2, n3, s3)
        _probe_all(s1, [n2.paths, n3.paths], clock.t, ("sync", "outside"))
    assert n1.fencing() and "inside" in str(n1.paths.fence_why)

