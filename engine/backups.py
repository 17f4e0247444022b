"""Backup copies of other nodes' connections, kept out of the packet path until promoted.

conntrack-tools keeps a node's own state (the internal cache) apart from what peers sent it
(the external cache) and commits the external one on takeover. This is our external cache:
the packet path looks only at the connection table (own entries), so it never has to ask
whose an entry is; a takeover moves copies into that table in one step."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from engine.conntrack import Conn, ConnTable, next_version


class Backups:
    """Copies of peers' connections by key. They never expire here: a copy lives until its
    owner deletes it, it is dropped with its owner, or it is promoted."""

    __slots__ = ("copies",)

    def __init__(self) -> None:
        self.copies: dict[bytes, Conn] = {}

    def __len__(self) -> int:
        return len(self.copies)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self.copies.values()))

    def get(self, key: bytes) -> Conn | None:
        return self.copies.get(key)

    def put(self, e: Conn) -> None:
        e.sched = -1  # not queued for expiry: a copy's clock is its owner's
        self.copies[e.key] = e

    def pop(self, key: bytes) -> Conn | None:
        return self.copies.pop(key, None)

    def drop_owner(self, owner: str, keep_buckets: Collection[int] = ()) -> int:
        gone = [k for k, e in self.copies.items() if e.owner == owner and e.bucket not in keep_buckets]
        for k in gone:
            del self.copies[k]
        return len(gone)

    def promote(self, table: ConnTable, buckets: Collection[int], now: float) -> list[Conn]:
        """Take over: every copy in `buckets` becomes an own connection of the table's node
        with a higher version and a fresh idle period, moved into the table in one step."""
        moved = [e for e in self.copies.values() if e.bucket in buckets]
        for e in moved:
            del self.copies[e.key]
            adopt(table, e, "promoted", now)
        return moved

    def adopt_one(self, table: ConnTable, key: bytes, now: float) -> Conn | None:
        """Claim 14: a packet of this copy reached us in a bucket we own; we carry it now."""
        e = self.copies.pop(key, None)
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
    table.schedule(e)
