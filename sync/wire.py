"""Sync wire codec: authenticated msgpack frames and records as positional arrays."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from sync.records import Record, Scope, SyncError, Trigger

log = logging.getLogger(__name__)

WIRE_VERSION = 1
TAG_BYTES = 32  # HMAC-SHA256
# The smallest frame that can possibly be valid: a tag plus a tiny msgpack array.
MIN_FRAME_BYTES = TAG_BYTES + 8
# Room kept in a datagram for the frame header around a batch of records.
HEADER_RESERVE_BYTES = 160


class MsgType(Enum):
    """Message types. Values are the wire codes; never renumber one."""

    HELLO = 1
    HEARTBEAT = 2
    ACK = 3
    RECORDS = 4  # insert/update/delete, batched (a delete is a tombstone record)
    BULK_REQUEST = 5
    BULK_START = 6
    BULK_END = 7
    STATE_REQUEST = 8
    STATE_REPLY = 9
    VIEW = 10
    LEAVE = 11
    KEYS = 12  # a part of an owner's key sweep (sync/sweep.py)
    WANT = 13  # keys of a sweep a backup holds nothing of


# Heartbeats, hellos and acks are fire-and-forget; every other type rides the reliable channel.
UNRELIABLE = frozenset({MsgType.HELLO, MsgType.HEARTBEAT, MsgType.ACK})
_TYPES = {t.value: t for t in MsgType}


class BadFrameKind(Enum):
    """Why a received datagram was dropped; each kind has its own counter."""

    SHORT = "short"
    OVERSIZE = "oversize"
    UNDECODABLE = "undecodable"
    BAD_VERSION = "bad-version"
    BAD_HMAC = "bad-hmac"
    WRONG_LAB = "wrong-lab"
    UNKNOWN_SENDER = "unknown-sender"
    WRONG_SOURCE = "wrong-source"
    UNKNOWN_TYPE = "unknown-type"
    STALE = "replayed/stale"
    BAD_PAYLOAD = "bad-payload"
    BAD_VIEW = "bad-view"


class BadFrame(SyncError):
    """A received frame that must be dropped and counted (a misbehaving peer, never our bug)."""

    def __init__(self, kind: BadFrameKind, detail: str = "") -> None:
        super().__init__(f"bad sync frame ({kind.value}){': ' + detail if detail else ''}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. `seq` is the reliable sequence number for reliable types and a
    per-sender freshness counter for unreliable ones. `to_inc` is the incarnation of the
    receiver the sender believes it talks to (0: not known yet)."""

    sender: str
    incarnation: int
    to_inc: int
    epoch: int
    seq: int
    ack: int
    type: MsgType
    payload: Any
    lab: str = ""
    version: int = WIRE_VERSION


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def encode_frame(frame: Frame, key: bytes) -> bytes:
    """Serialise and authenticate a frame: msgpack body followed by its HMAC-SHA256 tag."""
    body: bytes = msgpack.packb(
        [
            frame.version,
            frame.lab,
            frame.sender,
            frame.incarnation,
            frame.to_inc,
            frame.epoch,
            frame.seq,
            frame.ack,
            frame.type.value,
            frame.payload,
        ],
        use_bin_type=True,
    )
    return body + _tag(key, body)


# Header integers and record versions stay far below 2**64, so that `+ 1` (a new epoch, a
# promoted version) can always be encoded again.
MAX_WIRE_INT = 2**62


def _int(v: Any) -> bool:
    return type(v) is int and 0 <= v < MAX_WIRE_INT


def decode_frame(data: bytes, key: bytes, lab: str, max_frame_bytes: int) -> Frame:
    """Check and decode a datagram. Raises BadFrame (only) for anything that is not a valid
    frame of this lab signed with its key."""
    if len(data) < MIN_FRAME_BYTES:
        raise BadFrame(BadFrameKind.SHORT, f"{len(data)} bytes")
    if len(data) > max_frame_bytes:
        raise BadFrame(BadFrameKind.OVERSIZE, f"{len(data)} bytes")
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    # Authenticate before parsing anything, so unauthenticated bytes never reach msgpack.
    if not hmac.compare_digest(tag, _tag(key, body)):
        raise BadFrame(BadFrameKind.BAD_HMAC)
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for garbage
        raise BadFrame(BadFrameKind.UNDECODABLE, type(exc).__name__) from None
    if not isinstance(fields, list) or len(fields) != 10:
        raise BadFrame(BadFrameKind.UNDECODABLE, "not a 10-field array")
    version, flab, sender, inc, to_inc, epoch, seq, ack, code, payload = fields
    if version != WIRE_VERSION:
        raise BadFrame(BadFrameKind.BAD_VERSION, repr(version))
    if flab != lab:
        raise BadFrame(BadFrameKind.WRONG_LAB, repr(flab))
    if not isinstance(sender, str) or not all(_int(v) for v in (inc, to_inc, epoch, seq, ack)):
        raise BadFrame(BadFrameKind.UNDECODABLE, "bad header field")
    mtype = _TYPES.get(code) if isinstance(code, int) else None
    if mtype is None:
        raise BadFrame(BadFrameKind.UNKNOWN_TYPE, repr(code))
    return Frame(sender, inc, to_inc, epoch, seq, ack, mtype, payload, flab, version)


SCOPE_CODE = {Scope.NODE: 0, Scope.COMMON: 1}
CODE_SCOPE = {0: Scope.NODE, 1: Scope.COMMON}
TRIGGER_CODE = {t: i for i, t in enumerate(Trigger)}
CODE_TRIGGER = dict(enumerate(Trigger))

# A record on the wire: the positional array record_to_wire makes (a list or a tuple, packed
# alike). Stores build these for a bulk resync without a Record each (StateStore.wire_rows),
# and a receiver checks them (check_row) and applies them without one (StateStore.apply_rows).
WireRow = Sequence[Any]


def record_to_wire(r: Record) -> list[Any]:
    """A record as a positional array: key, scope, owner, version, bucket, data, deleted."""
    return [r.key, SCOPE_CODE[r.scope], r.owner, r.version, r.bucket, r.data, r.deleted]


def check_row(a: Any) -> None:
    """BadFrame(BAD_PAYLOAD) unless `a` is a well-formed record array as msgpack decoded it."""
    check_rows((a,))


def check_rows(rows: Iterable[Any], seq: type[list[Any]] | type[tuple[Any, ...]] = list) -> None:
    """check_row for each of `rows`, in one loop (a bulk resync checks ~17 per frame). `seq`:
    the type msgpack decoded arrays as (list, or tuple: rows_from_blob's `tuples`)."""
    scopes = CODE_SCOPE
    a: Any
    for a in rows:
        if type(a) is not seq or len(a) != 7:
            raise BadFrame(BadFrameKind.BAD_PAYLOAD, "record is not a 7-field array")
        key, scope, owner, version, bucket, data, deleted = a
        # `type(x) is int` on purpose: it refuses bools, which isinstance would let through.
        if (
            type(key) is not bytes
            or type(scope) is not int
            or scope not in scopes
            or type(owner) is not str
            or type(version) is not int
            or not 0 <= version < MAX_WIRE_INT
            or type(bucket) is not int
            or not -(2**31) <= bucket < 2**31
            or type(data) is not seq
            or type(deleted) is not bool
        ):
            raise BadFrame(BadFrameKind.BAD_PAYLOAD, "record field of the wrong type")


def record_of_row(a: WireRow) -> Record:
    """The record of a checked array (check_row); its data as lists, however decoded."""
    data = a[5]
    return Record(a[0], CODE_SCOPE[a[1]], a[2], a[3], a[4],
                  data if type(data) is list else _lists(data), a[6])


def _lists(v: Any) -> Any:
    """Arrays decoded as tuples, as lists (rows_from_blob's `tuples`: a blob without maps)."""
    return [_lists(x) for x in v] if type(v) is tuple else v


def record_from_wire(a: Any) -> Record:
    """Rebuild a record from its positional array; BadFrame(BAD_PAYLOAD) if malformed."""
    check_row(a)
    return record_of_row(a)


def trigger_from_wire(code: Any) -> Trigger:
    if isinstance(code, bool) or not isinstance(code, int) or code not in CODE_TRIGGER:
        raise BadFrame(BadFrameKind.BAD_PAYLOAD, f"unknown trigger {code!r}")
    return CODE_TRIGGER[code]


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one RECORDS payload as a packed msgpack array (each record packed once,
    while sizing the batch), with their keys for provenance."""

    blob: bytes
    keys: list[bytes]


def batch_records(records: Iterable[Record], budget_bytes: int) -> Iterator[Batch]:
    """Pack records as positional arrays into batches of at most `budget_bytes`."""
    return batch_rows(map(record_to_wire, records), budget_bytes)


def batch_rows(rows: Iterable[WireRow], budget_bytes: int) -> Iterator[Batch]:
    """Pack record arrays (record_to_wire's, or a store's wire_rows) into batches of at most
    `budget_bytes`.

    A record that alone exceeds the budget cannot travel in one datagram; it is logged and
    skipped (the engine's records are a few dozen bytes, so this means a bug upstream)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    parts: list[bytes] = []
    keys: list[bytes] = []
    size = 0
    room = budget_bytes - 3
    for a in rows:
        b = pack(a)
        n = len(b)
        if n > room:
            log.error("record %r is %d bytes, more than a datagram can carry; not sent", a[0], n)
            continue
        if parts and (size + n > room or len(parts) == 65535):
            yield Batch(pack_array(parts), keys)
            parts, keys, size = [], [], 0
        parts.append(b)
        keys.append(a[0])
        size += n
    if parts:
        yield Batch(pack_array(parts), keys)


def pack_array(parts: list[bytes]) -> bytes:
    """A msgpack array of already packed items: one C call unpacks it on the other side."""
    n = len(parts)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return head + b"".join(parts)


def rows_from_blob(blob: Any, *, tuples: bool = False) -> Sequence[Sequence[Any]]:
    """Unpack a RECORDS payload blob into checked record arrays (check_row), no Record built;
    BadFrame(BAD_PAYLOAD) if any of it is malformed.

    `tuples`: arrays decoded as tuples, twice as fast to build as lists (a bulk resync's
    receiver). Only for a blob without maps: with one (a map key may be an array, hashable as
    a tuple, not as a list) the blob is decoded with lists, so what is refused stays the same."""
    if not isinstance(blob, bytes):
        raise BadFrame(BadFrameKind.BAD_PAYLOAD, "records blob is not bytes")
    if tuples:
        try:
            got = msgpack.unpackb(blob, raw=False, use_list=False, max_map_len=0)
        except Exception:  # a map, or garbage: decoded again as below, refused as below
            pass
        else:
            if type(got) is tuple:
                check_rows(got, tuple)
                return got
    try:
        items = msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:
        raise BadFrame(BadFrameKind.BAD_PAYLOAD, f"records blob: {type(exc).__name__}") from None
    if not isinstance(items, list):
        raise BadFrame(BadFrameKind.BAD_PAYLOAD, "records blob is not an array")
    check_rows(items)
    return items


def records_from_blob(blob: Any) -> list[Record]:
    """Unpack a RECORDS payload blob; BadFrame(BAD_PAYLOAD) if any of it is malformed."""
    return [record_of_row(a) for a in rows_from_blob(blob)]
