"""The intrusion blocklist: a port-scan detector and its entries as common state (no I/O).

A source that is refused on `ports` distinct destination ports within `window_s` seconds is a
scanner. The node that sees it writes one common record (key BLOCK_TAG + source address) with
an absolute `until`; every node that holds the record drops that source's new packets, and
every node forgets it once `until` has passed, whether or not the creator's delete arrived."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sync.records import NO_BUCKET, Record, Scope

BLOCK_TAG = b"B"  # 66: not a protocol we track, so blocklist keys never collide with connection keys

DEFAULT_PORTS = 8  # distinct refused ports ...
DEFAULT_WINDOW_S = 2.0  # ... within this many seconds make a scan
DEFAULT_BLOCK_S = 10.0  # how long a scanner stays blocked


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """The lab's `[blocklist]` settings. `ports` 0 turns detection off."""

    ports: int = DEFAULT_PORTS
    window_s: float = DEFAULT_WINDOW_S
    block_s: float = DEFAULT_BLOCK_S

    def __post_init__(self) -> None:
        if self.ports < 0 or self.window_s <= 0 or self.block_s <= 0:
            raise ValueError(
                "blocklist settings: ports >= 0, window_s > 0 and block_s > 0 "
                f"(got ports={self.ports}, window_s={self.window_s}, block_s={self.block_s})"
            )


def block_key(src: bytes) -> bytes:
    return BLOCK_TAG + src


def block_record(src: bytes, owner: str, version: int, detected: float, until: float,
                 ports: int) -> Record:
    """Blocklist record data (positional): source address, detected at, until, distinct ports seen."""
    return Record(block_key(src), Scope.COMMON, owner, version, NO_BUCKET,
                  [src, detected, until, ports])


def block_until(r: Record) -> float:
    """The time the entry ends; ValueError if the record is not a blocklist entry."""
    if r.key[:1] != BLOCK_TAG or len(r.data) < 4 or bytes(r.data[0]) != r.key[1:]:
        raise ValueError(f"not a blocklist record: {r.key.hex()}")
    return float(r.data[2])


class ScanDetector:
    """Counts refused (source, port) pairs per source in a sliding window."""

    def __init__(self, settings: ScanSettings) -> None:
        self.settings = settings
        self._seen: dict[bytes, deque[tuple[float, int]]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def refused(self, src: bytes, dport: int, now: float) -> int:
        """Note one refused packet; returns the distinct ports refused within the window if
        that reaches the threshold (a scan: the source's history is then forgotten), else 0."""
        s = self.settings
        if s.ports == 0:
            return 0
        q = self._seen.get(src)
        if q is None:
            q = self._seen[src] = deque()
        q.append((now, dport))
        while q and q[0][0] <= now - s.window_s:
            q.popleft()
        distinct = len({p for _, p in q})
        if distinct >= s.ports:
            del self._seen[src]
            return distinct
        return 0

    def forget_older(self, now: float) -> None:
        """Drop sources whose last refusal left the window (keeps the table small)."""
        w = self.settings.window_s
        for src in [k for k, q in self._seen.items() if not q or q[-1][0] <= now - w]:
            del self._seen[src]
