"""The backup's replay queue (lossless takeover): packets of the buckets a node backs up, held a
short window without a verdict, dropped when it passes, and handed back when the node adopts
their bucket. Pure: handles and a clock in, handles to drop or replay out."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H")  # the node's handle of a queued packet

WINDOW_MS = 50  # a few times the detection of a killed peer (~2 ms) and its takeover (~15-20 ms)
CAP_PACKETS = 2048  # below the NFQUEUE's own length (4096): owned packets must still fit
CAP_BYTES = 4 << 20
EXPIRE_SLACK_S = 0.005  # put() expires only this long past the window (the node's tick is 5 ms)


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """The lab's lossless settings (the lab file's sync/timers table)."""

    enabled: bool = False
    window_ms: int = WINDOW_MS
    cap_packets: int = CAP_PACKETS
    cap_bytes: int = CAP_BYTES


class ReplayQueue(Generic[H]):
    """A deque per backed-up bucket of (arrival, handle, bytes, mark), oldest on the left.

    Every packet put here gets exactly one verdict later: a drop (`expire`, `forget`, or a
    replay the engine refuses) or whatever the engine says at `take`."""

    def __init__(self, settings: ReplaySettings) -> None:
        self.settings = settings
        self.window_s = settings.window_ms / 1000
        self.queues: dict[int, deque[tuple[float, H, bytes, int]]] = {}
        self.packets = 0
        self.bytes = 0
        self.counters: dict[str, int] = {
            "held": 0, "replayed": 0, "replayed_udp": 0, "expired": 0, "dropped_by_cap": 0,
            "evicted_by_cap": 0, "dropped_not_backed_up": 0,
        }
        self.buckets: frozenset[int] = frozenset()  # the buckets queued now (the node reads it per packet)

    def put(self, bucket: int, handle: H, data: bytes, mark: int, now: float) -> list[H]:
        """Hold one packet of a backed-up bucket. Returns handles to drop now: the ones that
        expired from this bucket's left, the oldest held ones evicted to make room when the
        cap is reached (the newest packets are the ones a takeover most needs: the oldest were
        the likeliest forwarded already), and `handle` itself when it alone exceeds the cap."""
        q = self.queues.get(bucket)
        if q is None:
            q = self.queues[bucket] = deque()
        # A backstop for late timer ticks (which expire every bucket each tick): all buckets at
        # once, and only a slack past the window, so the expired leave together, oldest first, in
        # one batch drop verdict (engine/nfqlib.py) rather than one at a time from this bucket.
        out = self.expire(now) if q and q[0][0] < now - self.window_s - EXPIRE_SLACK_S else []
        s = self.settings
        size = len(data)
        if size > s.cap_bytes or s.cap_packets < 1:
            self.counters["dropped_by_cap"] += 1
            out.append(handle)
            return out
        while self.packets >= s.cap_packets or self.bytes + size > s.cap_bytes:
            out.append(self._evict_oldest())
        q.append((now, handle, data, mark))
        self.packets += 1
        self.bytes += len(data)
        self.counters["held"] += 1
        return out

    def _evict_oldest(self) -> H:
        """Drop the oldest held packet of any bucket (the cap is reached); counted."""
        oldest = min((q for q in self.queues.values() if q), key=lambda q: q[0][0])
        _, h, data, _ = oldest.popleft()
        self.packets -= 1
        self.bytes -= len(data)
        self.counters["evicted_by_cap"] += 1
        return h

    def _expire_queue(self, q: deque[tuple[float, H, bytes, int]], before: float) -> list[H]:
        out: list[H] = []
        while q and q[0][0] < before:
            _, h, data, _ = q.popleft()
            self.packets -= 1
            self.bytes -= len(data)
            out.append(h)
        self.counters["expired"] += len(out)
        return out

    def expire(self, now: float) -> list[H]:
        """Every packet older than the window, to be dropped."""
        before = now - self.window_s
        out: list[H] = []
        for q in self.queues.values():
            if q and q[0][0] < before:
                out += self._expire_queue(q, before)
        return out

    def take(self, buckets: Iterable[int], now: float) -> list[tuple[H, bytes, int]]:
        """The packets of adopted buckets, oldest first per bucket, still inside the window (the
        older ones are counted expired and come back as (handle, b"", -1): drop them)."""
        out: list[tuple[H, bytes, int]] = []
        before = now - self.window_s
        for b in sorted(buckets):
            q = self.queues.pop(b, None)
            if not q:
                continue
            for t, h, data, mark in q:
                self.packets -= 1
                self.bytes -= len(data)
                if t < before:
                    self.counters["expired"] += 1
                    out.append((h, b"", -1))
                else:
                    out.append((h, data, mark))
        return out

    def replayed(self, data: bytes) -> bool:
        """Count one replayed packet. True for UDP: it may duplicate a datagram the dead node had
        forwarded (TCP drops a duplicate segment; UDP hands it to the application)."""
        self.counters["replayed"] += 1
        if data and (data[9] if data[0] >> 4 == 4 else data[6] if len(data) > 6 else 0) == 17:
            self.counters["replayed_udp"] += 1
            return True
        return False

    def forget(self, buckets: Iterable[int]) -> list[H]:
        """Buckets no longer backed up (nor adopted): their packets, to be dropped."""
        out: list[H] = []
        for b in buckets:
            q = self.queues.pop(b, None)
            if q:
                for _, h, data, _ in q:
                    self.packets -= 1
                    self.bytes -= len(data)
                    out.append(h)
                self.counters["expired"] += len(q)
        return out

    def drain(self) -> list[H]:
        """Every held handle (the node is stopping, or lossless was switched off)."""
        return self.forget(list(self.queues))

    def status(self) -> dict[str, int | bool]:
        s = self.settings
        return {"enabled": s.enabled, "window_ms": s.window_ms, "cap_packets": s.cap_packets,
                "cap_bytes": s.cap_bytes, "holding": self.packets, "holding_bytes": self.bytes,
                "buckets": len(self.buckets), **self.counters}
