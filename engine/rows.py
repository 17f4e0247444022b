"""The console's view of an engine: its connections, backup copies and common records as plain rows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.conntrack import Conn
from engine.guards import guard_row
from engine.nat import binding_text
from engine.packet import ICMP, ICMPV6, TCP, UDP, addr_text, endpoint_text, split_key
from engine.rules import EngineError

if TYPE_CHECKING:
    from engine.core import Engine

PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}


def rows(engine: Engine, scope: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows for the console: scope "own" (this node's connections), "backup" (copies of other
    nodes' connections) or "common" (expectations and other cluster-wide records); the first
    `limit` of them when given."""
    now = engine._now
    if scope in ("own", "backup"):
        # A copy of what is read, so the table may change while the rows are consumed; only
        # `limit` entries of it: the recorder and the console ask often, and a list of every
        # entry was 8 MB at 1M connections each time (which the allocator then kept).
        entries = (engine.table.conns if scope == "own" else engine.backups.copies).values()
        for e in list(entries) if limit is None else list(itertools.islice(entries, max(0, limit))):
            yield conn_row(e, now)
    elif scope == "common":
        for x in list(engine.table.expects.values()):
            yield {
                "key": x.key.hex(),
                "proto": PROTO_NAMES.get(x.proto, str(x.proto)),
                "src": endpoint_text(x.src_ip, x.src_port or None),
                "dst": endpoint_text(x.dst_ip, x.dst_port),
                "state": "expected",
                "owner": x.owner,
                "age_s": round(now - x.created, 3),
                "trigger": x.trigger,
                "version": x.version,
                "bucket": -1,
                "kind": "expect",
            }
        for r in list(engine.store.common.values()):
            g = guard_row(r, now)
            if g is not None:
                yield g
                continue
            yield {
                "key": r.key.hex(), "proto": "", "src": "", "dst": "", "state": "",
                "owner": r.owner, "age_s": 0.0, "trigger": "", "version": r.version,
                "bucket": r.bucket, "kind": "common",
            }
    else:
        raise EngineError(f"rows(scope={scope!r}): expected 'own', 'backup' or 'common'")


def conn_row(e: Conn, now: float) -> dict[str, Any]:
    """One connection (own or a backup copy) as the console shows it, addresses the way it was opened."""
    proto, a, ap, b, bp = split_key(e.key)
    icmp = proto in (ICMP, ICMPV6)
    (sa, sp), (da, dp) = ((a, ap), (b, bp)) if e.orig_low else ((b, bp), (a, ap))
    return {
        "key": e.key.hex(),
        "proto": PROTO_NAMES.get(proto, str(proto)),
        "src": addr_text(sa) if icmp else endpoint_text(sa, sp),
        "dst": addr_text(da) if icmp else endpoint_text(da, dp),
        "state": e.state.value,
        "owner": e.owner,
        "age_s": round(now - e.created, 3),
        "trigger": e.trigger,
        "version": e.version,
        "bucket": e.bucket,
        "kind": "conn",
        "nat": binding_text(e.nat),
    }


def key_text(key: bytes) -> str:
    """A record key as people read it: a connection's protocol and endpoints (in key order, so
    `↔`), an expectation's tag, or the hex of anything else."""
    try:
        proto, a, ap, b, bp = split_key(key)
    except (ValueError, IndexError, EngineError):
        return key.hex()
    name = PROTO_NAMES.get(proto)
    if name is None:
        return key.hex()
    if proto in (ICMP, ICMPV6):
        return f"{name} {addr_text(a)} ↔ {addr_text(b)}"
    return f"{name} {endpoint_text(a, ap)} ↔ {endpoint_text(b, bp)}"


def step_text(msg: dict[str, Any]) -> str:
    """One released sync message (sync.context.released) in a sentence: type, record, peer."""
    what = str(msg.get("type", "?"))
    if "records" in msg:
        n = int(msg["records"])
        what += f" ({msg.get('trigger') or '?'}): {n} record{'s' if n != 1 else ''}"
        if msg.get("key"):
            rec = key_text(bytes.fromhex(str(msg["key"])))
            gone = " deleted" if msg.get("deleted") else ""
            what += f", {rec} of {msg.get('owner')} v{msg.get('version')}{gone}"
            if n > 1:
                what += f" and {n - 1} more"
    return f"{what} to {msg.get('peer', '?')}"
