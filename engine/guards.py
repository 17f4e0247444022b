"""Source guards over common state: the intrusion blocklist and authenticated users (no I/O).

The records themselves live in the engine store's common table (engine.store), so they are
synced, resynced and shown like any other common record; this module reads and writes them
for the packet path."""

from __future__ import annotations

from collections.abc import Iterator

from engine.auth import USER_TAG, user_key, user_record
from engine.blocklist import BLOCK_TAG, ScanDetector, ScanSettings, block_key, block_record
from engine.conntrack import ConnTable, EventKind, next_version
from engine.packet import addr_text
from engine.store import EngineStore
from sync.records import NO_BUCKET, Record, Scope, Trigger


class Guards:
    """What the engine asks per new packet: is its source blocklisted, is it logged in."""

    def __init__(self, node: str, store: EngineStore, table: ConnTable,
                 settings: ScanSettings | None = None) -> None:
        self.node = node
        self.store = store
        self.table = table
        self.scan = ScanDetector(settings if settings is not None else ScanSettings())
        self.detections = 0

    # ---- reading ------------------------------------------------------------------------
    def blocked(self, src: bytes, now: float) -> bool:
        r = self.store.common.get(BLOCK_TAG + src)
        return r is not None and float(r.data[2]) > now

    def authed(self, src: bytes) -> bool:
        return USER_TAG + src in self.store.common

    def entries(self, tag: bytes) -> Iterator[Record]:
        for k, r in self.store.common.items():
            if k[:1] == tag:
                yield r

    def counts(self, now: float) -> dict[str, int]:
        blocked = sum(1 for r in self.entries(BLOCK_TAG) if float(r.data[2]) > now)
        users = sum(1 for _ in self.entries(USER_TAG))
        return {"blocklisted": blocked, "users": users}

    # ---- writing (own records: an event tells the sync layer) ---------------------------
    def _put(self, r: Record, now: float) -> Record:
        old = self.store.get(r.key)
        r.version = next_version(old.version if old is not None else 0, now)
        self.table.tombs.pop(r.key, None)
        self.store.common[r.key] = r
        self.store.applied[r.key] = now
        kind = EventKind.NEW if old is None or old.deleted else EventKind.UPDATE
        self.table.emit(kind, r.key, Scope.COMMON, Trigger.MODIFIED)
        return r

    def _delete(self, key: bytes, now: float) -> bool:
        r = self.store.common.pop(key, None)
        self.store.applied.pop(key, None)
        if r is None:
            return False
        version = next_version(r.version, now)
        self.table.bury(key, version, self.node, Scope.COMMON, NO_BUCKET, now)
        self.table.emit(EventKind.DELETE, key, Scope.COMMON, Trigger.MODIFIED)
        return True

    def refused(self, src: bytes, dport: int, now: float) -> Record | None:
        """A new packet from `src` to `dport` was refused; a blocklist record if that made a scan."""
        if self.blocked(src, now):
            return None
        ports = self.scan.refused(src, dport, now)
        if not ports:
            return None
        self.detections += 1
        until = now + self.scan.settings.block_s
        return self._put(block_record(src, self.node, 0, now, until, ports), now)

    def login(self, user: str, addr: bytes, now: float) -> Record:
        return self._put(user_record(user, addr, self.node, 0, now), now)

    def logout(self, addr: bytes, now: float) -> bool:
        return self._delete(user_key(addr), now)

    def unblock(self, src: bytes, now: float) -> bool:
        return self._delete(block_key(src), now)

    def expire(self, now: float) -> int:
        """Forget blocklist entries whose time ended: every node does it by the entry's own
        `until`; the creator also sends the delete, so late copies are buried everywhere."""
        gone = [r for r in self.entries(BLOCK_TAG) if float(r.data[2]) <= now]
        for r in gone:
            if r.owner == self.node:
                self._delete(r.key, now)
            else:
                self.store.common.pop(r.key, None)
                self.store.applied.pop(r.key, None)
        if len(self.scan):
            self.scan.forget_older(now)
        return len(gone)


def guard_row(r: Record, now: float) -> dict[str, object] | None:
    """The console's row for a blocklist or user record; None for other common records."""
    tag = r.key[:1]
    if tag == BLOCK_TAG:
        src, detected, until, ports = r.data[0], float(r.data[1]), float(r.data[2]), r.data[3]
        return {
            "key": r.key.hex(), "proto": "any", "src": addr_text(bytes(src)), "dst": "*",
            "state": f"blocked {max(0.0, until - now):.0f}s left", "owner": r.owner,
            "age_s": round(now - detected, 3), "trigger": f"port-scan:{ports}-ports",
            "version": r.version, "bucket": r.bucket, "kind": "blocklist",
        }
    if tag == USER_TAG:
        user, addr, since = str(r.data[0]), bytes(r.data[1]), float(r.data[2])
        return {
            "key": r.key.hex(), "proto": "any", "src": addr_text(addr), "dst": "*",
            "state": f"user {user}", "owner": r.owner, "age_s": round(now - since, 3),
            "trigger": "auth-login", "version": r.version, "bucket": r.bucket, "kind": "user",
        }
    return None
