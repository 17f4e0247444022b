"""The engine's tables seen as sync records (a sync.records.StateStore): own connections (the
packet path's table), backup copies (engine.backups) and common state."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from engine.auth import USER_TAG, check_user_record
from engine.backups import Backups
from engine.blocklist import BLOCK_TAG, block_until
from engine.conntrack import (
    EXPECT_TAG,
    Conn,
    ConnState,
    ConnTable,
    Expectation,
    next_version,
)
from engine.ftp import make_helper
from engine.nat import NatBinding
from engine.packet import ICMP, ICMPV6, TCP, UDP, split_key
from sync.records import NO_BUCKET, Record, Scope
from sync.wire import SCOPE_CODE, record_of_row, record_to_wire

log = logging.getLogger(__name__)

_PROTOS = frozenset({TCP, UDP, ICMP, ICMPV6})
_STATES = {s.value: s for s in ConnState}
NODE_CODE = SCOPE_CODE[Scope.NODE]
_ARRAYS = (list, tuple)  # a msgpack array as decoded (sync.wire.rows_from_blob)


NAT_EXTRA = "nat"  # the extra item that carries a connection's NAT binding


def conn_record(e: Conn) -> Record:
    """Connection record data (positional): state, orig_low, created, last_seen, helper name,
    helper state, extra as [k, v, ...], trigger. A translated connection's binding is the extra
    item "nat": [src, sport, dst, dport] of its translated tuple."""
    h = e.helper
    nat = e.nat
    if e.extra is None and nat is None:
        extra: list[Any] = []  # most entries
    else:
        extra = []
        if e.extra:
            for k, v in e.extra.items():
                extra += [k, v]
        if nat is not None:
            extra += [NAT_EXTRA, nat.record()]
    return Record(
        e.key,
        Scope.NODE,
        e.owner,
        e.version,
        e.bucket,
        [
            e.state._value_,
            e.orig_low,
            e.created,
            e.last_seen,
            h.name if h is not None else "",
            h.state() if h is not None else [],
            extra,
            e.trigger,
        ],
    )


def expect_record(x: Expectation) -> Record:
    """Expectation record data (positional): proto, src ip, src port (0 = any), dst ip, dst port,
    master key, timeout_s, created, helper name, trigger."""
    return Record(
        x.key,
        Scope.COMMON,
        x.owner,
        x.version,
        NO_BUCKET,
        [x.proto, x.src_ip, x.src_port, x.dst_ip, x.dst_port, x.master, x.timeout_s,
         x.created, x.helper, x.trigger],
    )


def check_common(record: Record) -> None:
    """ValueError if a blocklist or user record is malformed (other kinds are kept as given)."""
    tag = record.key[:1]
    if tag == BLOCK_TAG:
        block_until(record)
    elif tag == USER_TAG:
        check_user_record(record)


def _check_conn_key(key: bytes) -> None:
    if len(key) not in (13, 37) or key[0] not in _PROTOS:
        raise ValueError(f"not a connection key: {key.hex()}")


class EngineStore:
    """StateStore over the own table and the backup copies. A node record lands by its owner:
    ours in the table, a peer's among the copies (no events: the sync layer already knows
    them); common records that are not expectations are kept as given."""

    def __init__(self, table: ConnTable, backups: Backups, clock: Callable[[], float]) -> None:
        self.table = table
        self.backups = backups
        self._clock = clock
        self.common: dict[bytes, Record] = {}
        self.applied: dict[bytes, float] = {}  # when each common record arrived here (`stamp`)
        self.stamp = clock  # the node sets a real clock here (the engine's is the last packet's)
        self.rejected = 0  # malformed records refused by apply

    # ---- reading ------------------------------------------------------------------------
    def get(self, key: bytes) -> Record | None:
        t = self.table
        e = t.conns.get(key) or self.backups.get(key)
        if e is not None:
            return conn_record(e)
        x = t.expects.get(key)
        if x is not None:
            return expect_record(x)
        r = self.common.get(key)
        if r is not None:
            return r
        tomb = t.tombs.get(key)
        if tomb is not None:
            return Record(key, tomb.scope, tomb.owner, tomb.version, tomb.bucket, [], True)
        return None

    def wire_rows(self, keys: Iterable[bytes]) -> list[Sequence[Any]]:
        """`record_to_wire(get(key))` for each key held, in order. A connection with no helper,
        extras or NAT (nearly all of a bulk resync) is laid out here at once, without the
        Record and lists of `conn_record`: the same array, field for field."""
        conns = self.table.conns
        copies = self.backups.copies
        get = self.get
        out: list[Sequence[Any]] = []
        add = out.append
        for k in keys:
            e = conns.get(k) or copies.get(k)
            if e is not None and e.helper is None and e.extra is None and e.nat is None:
                add((k, NODE_CODE, e.owner, e.version, e.bucket,
                     (e.state._value_, e.orig_low, e.created, e.last_seen, "", (), (), e.trigger), False))
                continue
            r = get(k)
            if r is not None:
                add(record_to_wire(r))
        return out

    def _common_tie_won(self, record: Record, cur: int) -> bool:
        """Two nodes may write one common key in the same millisecond (both see the same scan):
        equal versions then, and without a tie-break each would keep its own forever. The
        higher owner name wins everywhere, so every node ends with the same record."""
        if record.version != cur or record.scope is not Scope.COMMON or record.deleted:
            return False
        mine = self.common.get(record.key)
        return mine is not None and record.owner > mine.owner

    def _version(self, key: bytes) -> int | None:
        t = self.table
        e = t.conns.get(key) or self.backups.get(key)
        if e is not None:
            return e.version
        x = t.expects.get(key)
        if x is not None:
            return x.version
        r = self.common.get(key)
        if r is not None:
            return r.version
        tomb = t.tombs.get(key)
        return tomb.version if tomb is not None else None

    def records(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
    ) -> Iterator[Record]:
        wanted = None if buckets is None else set(buckets)
        if scope is None or scope is Scope.NODE:
            me = self.table.node
            own = owner is None or owner == me
            copies = owner is None or owner != me
            for e in [*(self.table.conns.values() if own else ()), *(self.backups if copies else ())]:
                if owner is not None and e.owner != owner:
                    continue
                if wanted is not None and e.bucket not in wanted:
                    continue
                yield conn_record(e)
        if scope is None or scope is Scope.COMMON:
            if wanted is not None and NO_BUCKET not in wanted:
                return
            for x in list(self.table.expects.values()):
                if owner is None or x.owner == owner:
                    yield expect_record(x)
            for r in list(self.common.values()):
                if owner is None or r.owner == owner:
                    yield r

    def keys(
        self,
        *,
        owner: str | None = None,
        scope: Scope | None = None,
        buckets: Iterable[int] | None = None,
        not_owner: str | None = None,
    ) -> list[bytes]:
        wanted = None if buckets is None else set(buckets)
        out: list[bytes] = []
        if scope is None or scope is Scope.NODE:
            me = self.table.node
            conns, copies = self.table.conns, self.backups.copies
            if (owner is None or owner == me) and not_owner != me:
                # (every entry of the table is our own; list() of 1M keys takes ~5 ms)
                out = list(conns) if wanted is None else [k for k, e in conns.items() if e.bucket in wanted]
            if owner is None or owner != me:
                if owner is None and not_owner is None and wanted is None:
                    out += list(copies)
                else:
                    out += [k for k, e in copies.items()
                            if (owner is None or e.owner == owner) and (wanted is None or e.bucket in wanted)
                            and e.owner != not_owner]
        if scope is None or scope is Scope.COMMON:
            if wanted is not None and NO_BUCKET not in wanted:
                return out
            out += [k for k, x in self.table.expects.items()
                    if (owner is None or x.owner == owner) and x.owner != not_owner]
            out += [k for k, r in self.common.items()
                    if (owner is None or r.owner == owner) and r.owner != not_owner]
        return out

    # ---- writing ------------------------------------------------------------------------
    def apply(self, record: Record) -> bool:
        key = record.key
        if (record.scope is Scope.NODE and not record.deleted and record.owner != self.table.node
                and self._unheard(key)):
            # A copy of a peer's entry we never heard of, the whole of a bulk resync: built
            # in one step. An entry with a helper or extras takes the general path below.
            done = self._new_copy(key, record.owner, record.version, record.bucket, record.data)
            if done is not None:
                return done
        cur = self._version(record.key)
        if cur is not None and record.version <= cur and not self._common_tie_won(record, cur):
            return False
        try:
            if record.deleted:
                self._remove(record)
            elif record.scope is Scope.NODE:
                self._apply_conn(record)
            elif record.key[:1] == EXPECT_TAG:
                self._apply_expect(record)
            else:
                check_common(record)
                self.applied[record.key] = self.stamp()
                self.common[record.key] = Record(
                    record.key, record.scope, record.owner, record.version,
                    record.bucket, list(record.data), False,
                )
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            self.rejected += 1
            log.warning("refused record %s from %s: %s", record.key.hex(), record.owner, exc)
            return False
        return True

    def _unheard(self, key: bytes) -> bool:
        t = self.table
        return (key not in self.backups.copies and key not in t.conns and key not in t.tombs
                and key not in self.common and key not in t.expects)

    def _new_copy(self, key: bytes, owner: str, version: int, bucket: int, d: Any) -> bool | None:
        """A copy of a peer's entry this node holds nothing of (`_unheard`), with no helper,
        extras or NAT: built and kept in one step. None if the entry is not of that plain kind
        (the general path applies it); False if it is malformed (refused and counted)."""
        if not (type(d) is list and len(d) == 8 and d[4] == "" and type(d[6]) is list and not d[6]):
            return None
        try:
            _check_conn_key(key)
            e = Conn(key, bool(d[1]), _STATES[d[0]], owner, version, bucket, float(d[2]),
                     trigger=str(d[7]))
            e.last_seen = float(d[3])
        except (ValueError, TypeError, KeyError) as exc:
            self.rejected += 1
            log.warning("refused record %s from %s: %s", key.hex(), owner, exc)
            return False
        self.backups.put(e)
        return True

    def apply_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """As `apply` for each checked wire array, without a Record for the plain copies of a
        bulk resync: `apply`'s first step (`_unheard`, `_new_copy`) written out in this loop,
        where a bulk resync spends its receiver's time (a unit test keeps the two the same)."""
        t = self.table
        me = t.node
        copies, conns, tombs, expects, common = self.backups.copies, t.conns, t.tombs, t.expects, self.common
        states = _STATES
        protos = _PROTOS
        put = self.backups.put
        applied = 0
        for a in rows:
            key, scope, owner, version, bucket, d, deleted = a
            if (scope == NODE_CODE and not deleted and owner != me and len(d) == 8 and d[4] == ""
                    and not d[6] and type(d[6]) in _ARRAYS and key not in copies and key not in conns
                    and key not in tombs and key not in common and key not in expects):
                try:
                    if len(key) not in (13, 37) or key[0] not in protos:
                        raise ValueError(f"not a connection key: {key.hex()}")
                    e = Conn(key, bool(d[1]), states[d[0]], owner, version, bucket, float(d[2]),
                             trigger=str(d[7]))
                    e.last_seen = float(d[3])
                except (ValueError, TypeError, KeyError) as exc:
                    self.rejected += 1
                    log.warning("refused record %s from %s: %s", key.hex(), owner, exc)
                    continue
                put(e)
                applied += 1
                continue
            applied += self.apply(record_of_row(a))
        return applied

    def _remove(self, record: Record) -> None:
        t = self.table
        key = record.key
        for e in (t.conns.pop(key, None), self.backups.pop(key)):
            if e is not None:
                t.unindex_nat(e)
                t.unfast(e)
        t.expects.pop(key, None)
        self.common.pop(key, None)
        self.applied.pop(key, None)
        t.bury(key, record.version, record.owner, record.scope, record.bucket, self._clock())

    def _apply_conn(self, record: Record) -> None:
        key = record.key
        _check_conn_key(key)
        d = record.data
        state = ConnState(d[0])
        orig_low = bool(d[1])
        created, last_seen = float(d[2]), float(d[3])
        helper_name, helper_state = str(d[4]), list(d[5])
        flat = list(d[6])
        extra = {str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
        nat_data = extra.pop(NAT_EXTRA, None)
        nat = None
        if nat_data is not None:
            proto, a, ap, b, bp = split_key(key)
            orig = (a, ap, b, bp) if orig_low else (b, bp, a, ap)
            nat = NatBinding.from_record(proto, orig, nat_data)
        trigger = str(d[7])
        helper = None
        if helper_name:
            _, a, _, b, _ = split_key(key)
            client, server = (a, b) if orig_low else (b, a)
            helper = make_helper(helper_name, client, server, helper_state)
        t = self.table
        e = t.conns.pop(key, None) or self.backups.pop(key)
        if e is None:
            e = Conn(key, orig_low, state, record.owner, record.version, record.bucket, created)
        t.tombs.pop(key, None)
        t.unindex_nat(e)
        e.nat = nat
        t.index_nat(e)
        e.orig_low = orig_low
        e.state = state
        e.owner = record.owner
        e.version = record.version
        e.bucket = record.bucket
        e.created = created
        e.last_seen = last_seen
        e.helper = helper
        e.extra = extra or None
        e.trigger = trigger
        t.refresh(e)
        if e.owner == t.node:
            t.conns[key] = e
            e.last_seen = max(last_seen, self._clock())
            t.schedule(e)
        else:
            self.backups.put(e)

    def _apply_expect(self, record: Record) -> None:
        d = record.data
        proto, src_ip, src_port = int(d[0]), bytes(d[1]), int(d[2])
        dst_ip, dst_port, master = bytes(d[3]), int(d[4]), bytes(d[5])
        timeout_s, created = float(d[6]), float(d[7])
        x = Expectation(
            proto, src_ip, src_port, dst_ip, dst_port, master, record.owner, record.version,
            self._clock(), timeout_s, str(d[8]), str(d[9]),
        )
        if x.key != record.key:
            raise ValueError("expectation data does not match its key")
        x.created = created
        self.table.put_expect(x)

    def promote(self, buckets: Iterable[int], new_owner: str) -> list[Record]:
        wanted = set(buckets)
        t = self.table
        now = self._clock()
        if new_owner == t.node:
            return [conn_record(e) for e in self.backups.promote(t, wanted, now)]
        # Someone else's now (not what an agent asks of its own store, but the protocol allows it).
        out = []
        for e in [*t.conns.values(), *self.backups]:
            if e.bucket in wanted and e.owner != new_owner:
                t.conns.pop(e.key, None)
                e.owner = new_owner
                e.version = next_version(e.version, now)
                e.trigger = "promoted"
                t.refresh(e)
                self.backups.put(e)
                out.append(conn_record(e))
        return out

    def drop_owner(self, owner: str, keep_buckets: Collection[int] = ()) -> int:
        t = self.table
        if owner == t.node:  # (never asked with keep_buckets: a node drops its own table whole)
            gone = len(t.conns)
            for e in t.conns.values():
                t.unfast(e)
            t.conns.clear()
        else:
            gone = self.backups.drop_owner(owner, keep_buckets)
        if t.nat_keys:  # forget the translated tuples of the entries that went
            for k in [k for k, v in t.nat_keys.items() if v not in t.conns and v not in self.backups.copies]:
                del t.nat_keys[k]
        for k in [k for k, tb in t.tombs.items()
                  if tb.scope is Scope.NODE and tb.owner == owner and tb.bucket not in keep_buckets]:
            del t.tombs[k]
        return gone

    def sweep_keys(self, owner: str) -> Iterator[bytes]:
        """Own keys peers know of (not those still in a quiet state), or a peer's copies' keys."""
        if owner == self.table.node:
            return (k for k, e in self.table.conns.items() if e.announced and e.owner == owner)
        return (k for k, e in self.backups.copies.items() if e.owner == owner)

    def forget(self, owner: str, keys: Iterable[bytes]) -> int:
        """Drop copies of `owner`'s connections that it no longer has (sync/sweep.py): no
        tombstone, no event. Never an own entry."""
        if owner == self.table.node:
            return 0
        t = self.table
        n = 0
        for k in keys:
            e = self.backups.get(k)
            if e is None or e.owner != owner:
                continue
            self.backups.pop(k)
            t.unindex_nat(e)
            t.unfast(e)
            n += 1
        return n

    def counts(self) -> dict[str, int]:
        """How many records of each kind this node keeps: own, backup (copies), common."""
        return {
            "own": len(self.table.conns),
            "backup": len(self.backups),
            "common": len(self.table.expects) + len(self.common),
        }
