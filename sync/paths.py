"""Every cluster interface is a path: probes on the sync, inside and outside segments tell who
hears whom where, and sync datagrams fail over to a data segment when the sync one is cut.

A pure core (bytes and a clock in, bytes out); sync/pathio.py binds it to AF_PACKET sockets.

Why raw Ethernet frames with their own EtherType (0x88B5, IEEE "local experimental") to a
locally administered group MAC, and not IP: the nodes share one MAC and one IP address on the
data segments. A link-local IP per node would be answered by ARP with the shared MAC (every
node would claim every address), and iptables' HMARK and NFQUEUE would need exceptions for
it. A frame of an EtherType nobody registers is dropped by every client and server kernel
(no protocol handler), never reaches iptables (it is not IP), and the bridge floods a group
address to every port, so each node hears every other node's probes as a switch would carry
them.

The frame after the Ethernet header (all integers big-endian):
    magic "SWP1" | kind u8 | lab tag 8 bytes | sender index u8 | receiver index u8 (255: all)
    | incarnation u64 | path u8 | seq u64 | body | HMAC-SHA256 (lab key) over all before it
A probe's body is one u32 per path: the bitmask of node indexes the sender hears there. A
record's body is one sync datagram (already a frame authenticated by sync/wire.py), carried
to the receiver named in the header.

Refused input is counted by kind and changes nothing: `garbage` (short, bad magic or kind,
malformed), `foreign-lab` (another lab's tag), `forged` (bad HMAC, unknown or own sender),
`replayed` (a sequence number already seen on that path, or a retired incarnation),
`wrong-path` (an authentic frame that arrived on another segment than the one it names)."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.records import SyncError

ETHERTYPE = 0x88B5
GROUP_MAC = bytes.fromhex("035357000001")  # locally administered (0x02) group (0x01) address
PATHS: tuple[str, ...] = ("sync", "inside", "outside")
DATA_PATHS: tuple[str, ...] = ("inside", "outside")
MAGIC = b"SWP1"
KIND_PROBE = 1
KIND_RECORD = 2
ALL = 255
TAG_BYTES = 32
ETH_HEADER_BYTES = 14
MTU = 1500
_HEAD = struct.Struct("!4sB8sBBQBQ")
_MASKS = struct.Struct("!" + "I" * len(PATHS))
# The largest sync datagram a record frame can carry within one Ethernet MTU.
MAX_DATAGRAM = MTU - _HEAD.size - TAG_BYTES
REFUSED_KINDS = ("garbage", "foreign-lab", "forged", "replayed", "wrong-path")


class DatagramTooBig(SyncError):
    """A sync datagram that does not fit one record frame (more than MAX_DATAGRAM bytes)."""


def lab_tag(lab_id: str) -> bytes:
    return hashlib.blake2b(lab_id.encode(), digest_size=8, person=b"sw-paths").digest()


@dataclass(frozen=True, slots=True)
class Received:
    """What an accepted frame brought: a probe (`masks`: whom the sender hears, per path)
    or a record (`datagram`: one sync datagram for this node)."""

    kind: int
    sender: str
    incarnation: int
    path: str
    datagram: bytes = b""
    masks: tuple[int, ...] = ()


@dataclass(slots=True)
class _PeerPaths:
    inc: int = 0
    retired: deque[int] = field(default_factory=lambda: deque(maxlen=16))
    last_seq: dict[str, int] = field(default_factory=dict)
    last_heard: dict[str, float] = field(default_factory=dict)
    hears: dict[str, frozenset[str]] = field(default_factory=dict)  # what it reports, per path
    route: str = "sync"
    routed_at: float | None = None  # when route() last chose for it (a stalled loop shows here)


class Paths:
    """Who this node hears on which path, what it sends there, and where each peer's sync
    datagrams go. `silent_s` is how long a path must be silent before it counts as unheard
    (three probe intervals by default)."""

    def __init__(self, lab_id: str, key: bytes, node: str, names: Sequence[str], incarnation: int,
                 now: float, *, probe_ms: float = 10.0, silent_probes: int = 3,
                 paths: Sequence[str] = PATHS, grace_s: float = 1.0, unfence_s: float = 0.5) -> None:
        if node not in names or len(names) > 32:
            raise ValueError(f"node {node!r} must be one of at most 32 names {list(names)}")
        self.key = key
        self.tag = lab_tag(lab_id)
        self.node = node
        self.names = tuple(names)
        self.index = self.names.index(node)
        self.incarnation = incarnation
        self.paths = tuple(p for p in PATHS if p in paths)
        self.probe_s = probe_ms / 1000.0
        self.silent_s = self.probe_s * silent_probes
        self.started = now
        self.peers: dict[str, _PeerPaths] = {n: _PeerPaths() for n in self.names if n != node}
        self._seq: dict[str, int] = dict.fromkeys(self.paths, 0)
        self.refused: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.switches: list[dict[str, Any]] = []  # route changes, newest last (bounded)
        self.grace_s = grace_s
        self.unfence_s = unfence_s
        self.fence_why: str | None = None
        self._clear_since: float | None = None

    # ---- sending ------------------------------------------------------------------------

    def _encode(self, kind: int, path: str, dst: int, body: bytes) -> bytes:
        self._seq[path] += 1
        head = _HEAD.pack(MAGIC, kind, self.tag, self.index, dst, self.incarnation,
                          PATHS.index(path), self._seq[path])
        msg = head + body
        return msg + hmac.new(self.key, msg, hashlib.sha256).digest()

    def probe(self, path: str, now: float) -> bytes:
        """A probe for `path`, announcing whom this node hears on every path."""
        masks = [self._mask(p, now) for p in PATHS]
        self.counters[f"probe-sent:{path}"] += 1
        return self._encode(KIND_PROBE, path, ALL, _MASKS.pack(*masks))

    def record(self, path: str, dst: str, datagram: bytes) -> bytes:
        """A sync datagram for `dst`, carried on `path`. Raises DatagramTooBig past the MTU."""
        if len(datagram) > MAX_DATAGRAM:
            self.counters["record-too-big"] += 1
            raise DatagramTooBig(f"a sync datagram of {len(datagram)} bytes exceeds {MAX_DATAGRAM}")
        self.counters[f"record-sent:{path}"] += 1
        return self._encode(KIND_RECORD, path, self.names.index(dst), datagram)

    # ---- receiving ----------------------------------------------------------------------

    def receive(self, path: str, data: bytes, now: float) -> Received | None:
        """One frame heard on `path` (the payload after the Ethernet header). Returns what it
        brought, or None if refused (counted by kind) or not for us. Never raises."""
        n = len(data)
        if n < _HEAD.size + TAG_BYTES or data[:4] != MAGIC:
            self.refused["garbage"] += 1
            return None
        _magic, kind, tag, src, dst, inc, pcode, seq = _HEAD.unpack_from(data)
        if tag != self.tag:
            self.refused["foreign-lab"] += 1
            return None
        body, mac = data[_HEAD.size:-TAG_BYTES], data[-TAG_BYTES:]
        if not hmac.compare_digest(mac, hmac.new(self.key, data[:-TAG_BYTES], hashlib.sha256).digest()):
            self.refused["forged"] += 1
            return None
        if (kind not in (KIND_PROBE, KIND_RECORD) or pcode >= len(PATHS) or inc == 0
                or src >= len(self.names) or (kind == KIND_PROBE and len(body) != _MASKS.size)):
            self.refused["garbage"] += 1
            return None
        sender = self.names[src]
        if sender == self.node:
            self.refused["forged"] += 1  # our own key and name, not our socket: a replay or worse
            return None
        if PATHS[pcode] != path:
            self.refused["wrong-path"] += 1
            return None
        pp = self.peers[sender]
        if inc != pp.inc:
            if inc in pp.retired:
                self.refused["replayed"] += 1
                return None
            if pp.inc:
                pp.retired.append(pp.inc)
            pp.inc = inc
            pp.last_seq.clear()
        if seq <= pp.last_seq.get(path, 0):
            self.refused["replayed"] += 1
            return None
        pp.last_seq[path] = seq
        pp.last_heard[path] = now
        if kind == KIND_PROBE:
            masks = _MASKS.unpack(body)
            pp.hears = {p: self._names_of(m) for p, m in zip(PATHS, masks, strict=True)}
            self.counters[f"probe-heard:{path}"] += 1
            return Received(kind, sender, inc, path, masks=masks)
        if dst != self.index:
            self.counters["record-not-ours"] += 1
            return None
        self.counters[f"record-heard:{path}"] += 1
        return Received(kind, sender, inc, path, datagram=bytes(body))

    # ---- what is heard ------------------------------------------------------------------

    def _names_of(self, mask: int) -> frozenset[str]:
        return frozenset(n for i, n in enumerate(self.names) if mask >> i & 1)

    def _mask(self, path: str, now: float) -> int:
        m = 0
        for name, pp in self.peers.items():
            if self.heard(name, path, now, pp):
                m |= 1 << self.names.index(name)
        return m

    def heard(self, peer: str, path: str, now: float, pp: _PeerPaths | None = None) -> bool:
        pp = pp if pp is not None else self.peers[peer]
        t = pp.last_heard.get(path)
        return t is not None and now - t <= self.silent_s

    def heard_anywhere(self, peer: str, now: float) -> bool:
        return any(self.heard(peer, p, now) for p in self.paths)

    def reports(self, peer: str, path: str) -> frozenset[str]:
        """Whom `peer` said it hears on `path`, in its latest probe."""
        return self.peers[peer].hears.get(path, frozenset())

    # ---- routing sync datagrams ---------------------------------------------------------

    def route(self, peer: str, now: float) -> str:
        """The path for `peer`'s sync datagrams: the sync segment while it is heard there (or
        nothing is heard anywhere: then no other path would do better), else the first data
        path that hears it. Route changes are recorded in `switches`."""
        pp = self.peers[peer]
        if "sync" not in self.paths or self.heard(peer, "sync", now, pp):
            new = "sync"
        else:
            new = next((p for p in self.paths if p != "sync" and self.heard(peer, p, now, pp)), "sync")
        if new != pp.route:
            silent_ms = (now - pp.last_heard.get("sync", self.started)) * 1e3
            # gap_ms: since the route was last chosen. Datagrams (heartbeats at least) leave
            # every probe interval, so a gap much longer than that is a loop that did nothing
            # meanwhile, and the switch came late for that reason, not for the path's.
            gap_ms = None if pp.routed_at is None else round((now - pp.routed_at) * 1e3, 1)
            self.switches.append({"peer": peer, "from": pp.route, "to": new, "at": now,
                                  "sync_silent_ms": round(silent_ms, 1), "gap_ms": gap_ms})
            del self.switches[:-32]
            self.counters["route-switch"] += 1
            pp.route = new
        pp.routed_at = now
        return new

    # ---- self-fencing --------------------------------------------------------------------

    def fence_reason(self, now: float, carrier: Mapping[str, bool]) -> str | None:
        """Why this node cannot carry its flows, or None: a data interface without carrier,
        or a data segment on which it hears no peer while a peer it hears elsewhere reports
        hearing another node there (so the segment works and it is this node that is cut
        off). Nothing is judged in the first `grace_s` after start, before probes could
        arrive."""
        if now - self.started < self.grace_s:
            return None
        for path in DATA_PATHS:
            if path not in self.paths:
                continue
            if not carrier.get(path, True):
                return f"{path} link down"
            if any(self.heard(n, path, now, pp) for n, pp in self.peers.items()):
                continue
            for name, pp in self.peers.items():
                others = pp.hears.get(path, frozenset()) - {self.node}
                if others and self.heard_anywhere(name, now):
                    return f"hears no peer on {path} while {name} hears {', '.join(sorted(others))} there"
        return None

    def fencing(self, now: float, carrier: Mapping[str, bool]) -> bool:
        """Whether this node should be fenced now: at once when a reason appears, and until
        no reason has been seen for `unfence_s` (a flapping link does not bounce buckets)."""
        why = self.fence_reason(now, carrier)
        if why is not None:
            if self.fence_why is None:
                self.counters["fence"] += 1
            self.fence_why = why
            self._clear_since = None
            return True
        if self.fence_why is None:
            return False
        if self._clear_since is None:
            self._clear_since = now
        if now - self._clear_since >= self.unfence_s:
            self.fence_why = None
            self._clear_since = None
            return False
        return True

    def status(self, now: float) -> dict[str, Any]:
        """Per peer and path: heard or not and how long ago; the sync route; refused frames."""
        peers: dict[str, Any] = {}
        for name, pp in self.peers.items():
            peers[name] = {
                "paths": {
                    p: {"heard": self.heard(name, p, now, pp),
                        "ago_ms": (None if p not in pp.last_heard
                                   else round((now - pp.last_heard[p]) * 1e3, 1)),
                        "hears": sorted(pp.hears.get(p, ()))}
                    for p in self.paths
                },
                "route": pp.route,
            }
        return {"peers": peers, "refused": {k: self.refused[k] for k in REFUSED_KINDS},
                "counters": dict(self.counters), "switches": list(self.switches[-8:]),
                "max_datagram": MAX_DATAGRAM, "fenced": self.fence_why}
