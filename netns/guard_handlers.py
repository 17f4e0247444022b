"""The lab daemon's side of `syncwall auth` and the guards listing (netns/handlers.py calls in):
a login or logout goes to one running node, which writes the common record every node hears."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from netns import api
from syncwall_errors import NotFoundError, StateError

if TYPE_CHECKING:
    from netns.daemon import LabDaemon, NodeProc


def _running(d: LabDaemon) -> list[NodeProc]:
    return [n for n in d.nodes.values()
            if n.link is not None and n.proc is not None and n.proc.returncode is None]


def _host_ip(d: LabDaemon, name: str) -> str:
    hosts = {h.name: h for h in d.spec.hosts}
    if name not in hosts:
        raise NotFoundError(f"no host {name!r} in lab {d.spec.name!r}; hosts are "
                            f"{', '.join(sorted(hosts))}")
    return str(hosts[name].ip)


async def handle_guards(d: LabDaemon, req: api.Request) -> dict[str, Any]:
    nodes = _running(d)
    if not nodes:
        raise StateError("no node is running: start one (syncwall revive NODE) first")
    match req:
        case api.AuthLogin(user=user, host=host):
            ip = _host_ip(d, host)
            assert nodes[0].link is not None
            r = await nodes[0].link.request({"cmd": "auth_login", "user": user, "addr": ip})
            if r.get("ok"):
                d.note("action", f"auth login {user} from {host} ({ip}) via {nodes[0].name}",
                       action="auth")
            return {**r, "host": host, "addr": ip, "node": nodes[0].name}
        case api.AuthLogout(host=host):
            ip = _host_ip(d, host)
            assert nodes[0].link is not None
            r = await nodes[0].link.request({"cmd": "auth_logout", "addr": ip})
            if r.get("ok"):
                d.note("action", f"auth logout {host} ({ip}) via {nodes[0].name}", action="auth")
            return {**r, "host": host, "addr": ip, "node": nodes[0].name}
        case api.Unblock(host=host):
            ip = _host_ip(d, host)
            assert nodes[0].link is not None
            r = await nodes[0].link.request({"cmd": "unblock", "addr": ip})
            if r.get("ok") and r.get("removed"):
                d.note("action", f"unblock {host} ({ip}) via {nodes[0].name}", action="auth")
            return {**r, "host": host, "addr": ip, "node": nodes[0].name}
        case api.Guards():
            replies = await asyncio.gather(*(n.link.request({"cmd": "guards"}) for n in nodes
                                             if n.link is not None))
            return {"ok": True, "nodes": {n.name: r for n, r in zip(nodes, replies, strict=True)}}
    raise StateError(f"not a guards request: {req.CMD!r}")  # pragma: no cover
