"""A node's control commands and status counts for the blocklist and users (no I/O: the node
passes requests in and sends the answers back; engine/guards.py does the work)."""

from __future__ import annotations

import ipaddress
from typing import Any

from engine.auth import USER_TAG
from engine.blocklist import BLOCK_TAG
from engine.core import Engine

COMMANDS = frozenset({"auth_login", "auth_logout", "unblock", "guards"})


def _addr(req: dict[str, Any]) -> bytes:
    try:
        return ipaddress.ip_address(str(req.get("addr", ""))).packed
    except ValueError:
        raise ValueError(f"not an IP address: {req.get('addr')!r}") from None


def guard_counts(engine: Engine, now: float) -> dict[str, dict[str, int]]:
    """Blocklisted sources and users this node holds: own (it wrote them), backup (always 0:
    they are common state, no node's backup) and common (every live entry it honours)."""
    me = engine.node
    out = {}
    for name, tag in (("blocklist", BLOCK_TAG), ("users", USER_TAG)):
        live = [r for r in engine.guards.entries(tag)
                if tag != BLOCK_TAG or float(r.data[2]) > now]
        out[name] = {"own": sum(1 for r in live if r.owner == me), "backup": 0, "common": len(live)}
    return out


def guard_entries(engine: Engine, now: float) -> list[dict[str, Any]]:
    """Every blocklist and user entry, with when this node got it (`applied`, the node's clock,
    the same monotonic clock as `detected` on one host)."""
    out = []
    for tag, kind in ((BLOCK_TAG, "blocklist"), (USER_TAG, "user")):
        for r in engine.guards.entries(tag):
            e: dict[str, Any] = {
                "kind": kind, "addr": str(ipaddress.ip_address(r.key[1:])), "owner": r.owner,
                "version": r.version, "applied": engine.store.applied.get(r.key),
            }
            if tag == BLOCK_TAG:
                e.update(detected=float(r.data[1]), until=float(r.data[2]), ports=r.data[3],
                         live=float(r.data[2]) > now)
            else:
                e.update(user=r.data[0], since=float(r.data[2]))
            out.append(e)
    return out


def guard_control(engine: Engine, req: dict[str, Any], now: float) -> dict[str, Any]:
    """Answer one of COMMANDS (the caller flushes the engine's events afterwards)."""
    cmd = req.get("cmd")
    if cmd == "auth_login":
        user = str(req.get("user", ""))
        r = engine.guards.login(user, _addr(req), now)
        return {"ok": True, "key": r.key.hex(), "version": r.version}
    if cmd == "auth_logout":
        return {"ok": True, "removed": engine.guards.logout(_addr(req), now)}
    if cmd == "unblock":
        return {"ok": True, "removed": engine.guards.unblock(_addr(req), now)}
    if cmd == "guards":
        return {"ok": True, "entries": guard_entries(engine, now), "now": now,
                **guard_counts(engine, now)}
    return {"ok": False, "error": f"unknown command {cmd!r}"}
