"""Backup copies of other nodes' connections, kept out of the packet path until promoted.

conntrack-tools keeps a node's own state (the internal cache) apart from what peers sent it
(the external cache) and commits the external one on takeover. This is our external cache:
the packet path looks only at the connection table (own entries), so it never has to ask
whose an entry is; a takeover moves copies into that table in one step."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterator, Mapping

from engine.conntrack import Conn, ConnState, ConnTable, next_version


class Backups:
    """Copies of peers' connections by key. A copy lives until its owner deletes it, it is
    dropped with its owner, it is promoted, or its owner has been silent about it for the
    state's timeout plus `grace_s` (conntrackd's CacheTimeout): an owner re-announces every
    living entry once per timeout (ConnTable.expire), so only a copy whose delete never came
    (lost to a false failover, or sent while we were thought down) goes that way. Its deadline
    is kept in `Conn.sched`, which a copy does not use otherwise (cleared when it leaves)."""

    __slots__ = ("_heap", "_seq", "copies", "grace_s", "timeout_by_state")

    def __init__(self, timeout_by_state: Mapping[ConnState, float] | None = None,
                 grace_s: float = 30.0) -> None:
        self.copies: dict[bytes, Conn] = {}
        self.timeout_by_state = dict(timeout_by_state or {})
        self.grace_s = grace_s
        self._heap: list[tuple[float, int, Conn]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.copies)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self.copies.values()))

    def get(self, key: bytes) -> Conn | None:
        return self.copies.get(key)

    def put(self, e: Conn, now: float) -> None:
        """File a copy heard of at `now` (our clock: the owner's may differ)."""
        timeout = self.timeout_by_state.get(e.state)
        if timeout is None:
            e.sched = -1.0  # no timeouts given (a bare store in a test): it never expires
        else:
            e.sched = now + timeout + self.grace_s
            heapq.heappush(self._heap, (e.sched, next(self._seq), e))
        self.copies[e.key] = e

    def pop(self, key: bytes) -> Conn | None:
        e = self.copies.pop(key, None)
        if e is not None:
            e.sched = -1.0
        return e

    def drop_owner(self, owner: str) -> int:
        gone = [k for k, e in self.copies.items() if e.owner == owner]
        for k in gone:
            self.copies.pop(k).sched = -1.0
        return len(gone)

    def expire(self, now: float) -> list[Conn]:
        """Forget the copies whose owner has been silent about them too long; returns them.
        No tombstone and no event: the entry is the owner's, and it says nothing more."""
        gone: list[Conn] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, _, e = heapq.heappop(heap)
            if e.sched != d or self.copies.get(e.key) is not e:
                continue  # superseded by a later copy, or no longer a copy
            del self.copies[e.key]
            e.sched = -1.0
            gone.append(e)
        return gone

    def promote(self, table: ConnTable, buckets: Collection[int], now: float) -> list[Conn]:
        """Take over: every copy in `buckets` becomes an own connection of the table's node
        with a higher version and a fresh idle period, moved into the table in one step."""
        moved = [e for e in self.copies.values() if e.bucket in buckets]
        for e in moved:
            del self.copies[e.key]
            e.sched = -1.0
            adopt(table, e, "promoted", now)
        return moved

    def adopt_one(self, table: ConnTable, key: bytes, now: float) -> Conn | None:
        """Claim 14: a packet of this copy reached us in a bucket we own; we carry it now."""
        e = self.pop(key)
        if e is not None:
            e.owner = table.node
            e.last_seen = max(e.last_seen, now)
            table.tombs.pop(key, None)
            table.conns[key] = e
            table.changed(e, "adopted", now)  # a new version, and peers hear who carries it
        return e


def adopt(table: ConnTable, e: Conn, trigger: str, now: float) -> None:
    """Make a peer's connection an own one: owner, version and idle period are ours."""
    e.owner = table.node
    e.version = next_version(e.version, now)
    e.trigger = trigger
    # A fresh idle period: the copy's last_seen is as old as its last sync.
    e.last_seen = max(e.last_seen, now)
    table.tombs.pop(e.key, None)
    table.conns[e.key] = e
    table.refresh(e)
    table.told(e, now)  # the takeover hands promoted entries on to our backups
    table.schedule(e)
