"""Every request the console sends to the lab, built from the one schema (netns/api.py).

The console's screens and keys take their requests from here, and the contract test sends
exactly these to a real lab daemon, so the console cannot drift from what the daemon reads."""

from __future__ import annotations

from netns import api

SNAPSHOT = api.Snapshot()
FULL_SYNC = api.FullSync()
FREEZE = api.Freeze()
RESUME = api.Resume()
STEP = api.Step()

NODE_ACTIONS: dict[str, type[api.NodeAction]] = {
    "kill": api.Kill, "crash": api.Crash, "offline": api.Offline, "revive": api.Revive}

# The traffic dialog's choices: (key, label, request). The label promises what the request asks.
TRAFFIC: tuple[tuple[str, str, api.TrafficStart], ...] = (
    ("ftp", "FTP session (passive, through the cluster)",
     api.TrafficStart(kind="ftp", mode="passive", sessions=1)),
    ("burst", "Burst of 200 short TCP connections", api.TrafficStart(kind="burst", count=200)),
    ("tcp", "3 long-lived TCP flows", api.TrafficStart(kind="tcp", flows=3)),
    ("udp", "1 UDP flow", api.TrafficStart(kind="udp", flows=1)),
)


def table(node: str, scope: str, filter_text: str, limit: int) -> api.Table:
    # The filter box may hold more than the schema takes; only what fits is sent. The engines
    # match it against every field of a row, case-sensitively, and their values are lower case;
    # the console then keeps the rows whose shown cells match (ConnectionsPane.apply).
    return api.Table(node, scope=scope, filter=filter_text[:api.MAX_TEXT].lower(),
                     limit=max(1, min(limit, api.MAX_LIMIT)))


def node_action(action: str, node: str) -> api.NodeAction:
    return NODE_ACTIONS[action](node)


def policy(name: str, interval_ms: int) -> api.SetPolicy:
    return api.SetPolicy(name, interval_ms=interval_ms)


def traffic(ident: str) -> api.TrafficStart:
    for key, _label, req in TRAFFIC:
        if key == ident:
            return req
    raise KeyError(f"no traffic choice {ident!r}")


def every_request(node: str, policy_name: str = "hybrid", interval_ms: int = 1000
                  ) -> list[api.Request]:
    """All the kinds of request the console can send, for `node` (for the contract test)."""
    out: list[api.Request] = [SNAPSHOT, *(table(node, s, "", 500) for s in api.SCOPES)]
    out += [req for _key, _label, req in TRAFFIC]
    out += [policy(policy_name, interval_ms), FULL_SYNC, FREEZE, STEP, RESUME]
    out += [node_action(a, node) for a in NODE_ACTIONS]
    return out
