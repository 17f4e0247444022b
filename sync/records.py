"""Replicated state records: what the sync layer moves between nodes, knowing nothing of firewalls."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from syncwall_errors import SyncwallError

NO_BUCKET = -1


class Scope(Enum):
    """Where a record is replicated: the owner's backup group, or every live node."""

    NODE = "node"
    COMMON = "common"


class Trigger(Enum):
    """The predetermined irregular action that caused a record to be sent (DESIGN.md table)."""

    MODIFIED = "state-modified"
    FULL_SYNC = "full-sync"
    PERIODIC = "periodic"
    FAILOVER = "node-failed"
    RESYNC = "resync-request"
    LEAVE = "graceful-leave"
    STATE_REQUEST = "state-request"
    RELATED = "related-connection"
    REBALANCE = "rebalance"


@dataclass(slots=True)
class Record:
    """One versioned piece of replicated state.

    `data` is a positional list of msgpack-able values whose meaning belongs to the
    layer above (the engine). `bucket` is the distribution bucket the record lives in
    (NO_BUCKET for common records). A deleted record is a tombstone that still carries
    its version, so that an older insert arriving late cannot resurrect it.
    """

    key: bytes
    scope: Scope
    owner: str
    version: int
    bucket: int = NO_BUCKET
    data: list[Any] = field(default_factory=list)
    deleted: bool = False


class StateStore(Protocol):
    """The state a sync agent replicates. The engine supplies one over its tables; tests use MemoryStore."""

    def get(self, key: bytes) -> Record | None: ...

    def apply(self, record: Record) -> bool:
        """Apply a record received from a peer. False (and no change) if its version is not newer."""
        ...

    def wire_rows(self, keys: Iterable[bytes]) -> list[Sequence[Any]]:
        """The records of these keys as the wire's positional arrays, exactly what
        `sync.wire.record_to_wire(get(key))` gives for each key held (tombstones too), in
        order; keys not held are left out. A bulk resync's sender: no Record per entry."""
        ...

    def apply_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """Apply checked wire arrays (`sync.wire.check_row`) as `apply` would apply their
        records, in order, with no events; returns how many were applied. A bulk resync's
        receiver: no Record per entry where the store can do without."""
        ...

    def records(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
    ) -> Iterator[Record]:
        """Live (not deleted) records matching every given filter."""
        ...

    def keys(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
        not_owner: str | None = None,
    ) -> list[bytes]:
        """The keys `records` would yield now, without building the records (a bulk resync
        takes this snapshot and builds each record when it sends it); `not_owner`: only
        records some other node owns. One call of a bulk answer on this node's loop: it must
        stay cheap at 1M records (no record built, no per-key Python work it can avoid)."""
        ...

    def promote(self, buckets: Iterable[int], new_owner: str) -> list[Record]:
        """Take over: every node-scope record in `buckets` not owned by `new_owner` becomes
        owned by it with a higher version. Returns the promoted records."""
        ...

    def drop_owner(self, owner: str, keep_buckets: Collection[int] = ()) -> int:
        """Forget the node-scope records owned by `owner` (no longer backed up here), except
        those in `keep_buckets`. Returns how many went."""
        ...

    def sweep_keys(self, owner: str) -> Iterator[bytes]:
        """The keys of the live node-scope records of `owner` that its peers may know of (an
        own entry not yet announced to them is left out)."""
        ...

    def forget(self, owner: str, keys: Iterable[bytes]) -> int:
        """Forget these node-scope records if `owner` still owns them here, leaving no tombstone
        (their owner no longer has them: sync/sweep.py). Returns how many went."""
        ...


class MemoryStore:
    """A dict-backed StateStore: the reference implementation the sync tests run against."""

    def __init__(self) -> None:
        self._records: dict[bytes, Record] = {}

    def __len__(self) -> int:
        return sum(1 for r in self._records.values() if not r.deleted)

    def get(self, key: bytes) -> Record | None:
        return self._records.get(key)

    def put_local(self, record: Record) -> Record:
        """A local change: bump the version past whatever is stored and keep it."""
        old = self._records.get(record.key)
        if old is not None and record.version <= old.version:
            record.version = old.version + 1
        self._records[record.key] = record
        return record

    def apply(self, record: Record) -> bool:
        old = self._records.get(record.key)
        if old is not None and record.version <= old.version:
            return False
        self._records[record.key] = record
        return True

    def wire_rows(self, keys: Iterable[bytes]) -> list[Sequence[Any]]:
        from sync.wire import record_to_wire  # (sync.wire imports this module)

        get = self._records.get
        return [record_to_wire(r) for r in map(get, keys) if r is not None]

    def apply_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        from sync.wire import record_of_row

        return sum(1 for a in rows if self.apply(record_of_row(a)))

    def records(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
    ) -> Iterator[Record]:
        wanted = None if buckets is None else set(buckets)
        for r in list(self._records.values()):  # a snapshot: the caller may change the store
            if r.deleted:
                continue
            if owner is not None and r.owner != owner:
                continue
            if scope is not None and r.scope is not scope:
                continue
            if wanted is not None and r.bucket not in wanted:
                continue
            yield r

    def keys(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
        not_owner: str | None = None,
    ) -> list[bytes]:
        return [r.key for r in self.records(owner=owner, scope=scope, buckets=buckets)
                if not_owner is None or r.owner != not_owner]

    def promote(self, buckets: Iterable[int], new_owner: str) -> list[Record]:
        wanted = set(buckets)
        out = []
        for r in self._records.values():
            if (
                not r.deleted
                and r.scope is Scope.NODE
                and r.bucket in wanted
                and r.owner != new_owner
            ):
                r.owner = new_owner
                r.version += 1
                out.append(r)
        return out

    def drop_owner(self, owner: str, keep_buckets: Collection[int] = ()) -> int:
        gone = [k for k, r in self._records.items()
                if r.scope is Scope.NODE and r.owner == owner and r.bucket not in keep_buckets]
        for k in gone:
            del self._records[k]
        return len(gone)

    def sweep_keys(self, owner: str) -> Iterator[bytes]:
        for r in self._records.values():
            if not r.deleted and r.scope is Scope.NODE and r.owner == owner:
                yield r.key

    def forget(self, owner: str, keys: Iterable[bytes]) -> int:
        n = 0
        for k in keys:
            r = self._records.get(k)
            if r is not None and not r.deleted and r.scope is Scope.NODE and r.owner == owner:
                del self._records[k]
                n += 1
        return n


class SyncError(SyncwallError):
    """Root of the sync layer's errors (sync/ imports nothing above it, so it has its own root)."""


class SyncUsageError(SyncError):
    """The caller misused the sync API (our bug, not a peer's): the message says what to fix."""
