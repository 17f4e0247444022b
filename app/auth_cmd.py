"""`syncwall auth login USER --host HOST` and `syncwall auth logout --host HOST`: a user
record, common state, admits (or no longer admits) the host on every node at once; and
`syncwall auth unblock --host HOST` lifts a blocklist entry on every node before its timeout;
`syncwall auth list`: every node's users and blocklisted sources."""

from __future__ import annotations

import argparse
import json
from typing import Any

from netns import api
from netns import lab as lab_life
from netns.control import ControlError
from syncwall_errors import SyncwallError


class AuthError(SyncwallError):
    """Bad input for `syncwall auth`: the message says what to fix."""


def _call(lab: str, req: api.Request) -> dict[str, Any]:
    try:
        reply = lab_life.client(lab, 10.0).request(req)
    except ControlError as e:
        raise AuthError(f"lab {lab!r} does not answer: {e}") from e
    if not reply.get("ok"):
        raise AuthError(str(reply.get("error", "the lab refused")))
    return reply


def request_of(args: argparse.Namespace) -> api.Request:
    """The request for the command line; AuthError for what is missing or malformed."""
    try:
        if args.action == "login":
            if not args.user:
                raise AuthError("auth login needs a USER (syncwall auth login alice --host c1)")
            if not args.host:
                raise AuthError("auth login needs --host HOST (a lab host, e.g. c1)")
            return api.AuthLogin(user=args.user, host=args.host)
        if args.action == "logout":
            if not args.host:
                raise AuthError("auth logout needs --host HOST (a lab host, e.g. c1)")
            return api.AuthLogout(host=args.host)
        if args.action == "unblock":
            if not args.host:
                raise AuthError("auth unblock needs --host HOST (a blocklisted lab host, e.g. c2)")
            return api.Unblock(host=args.host)
        return api.Guards()
    except api.RequestError as e:
        raise AuthError(f"{e.field}: {e}") from e


def cmd_auth(args: argparse.Namespace) -> int:
    req = request_of(args)
    lab = lab_life.pick_lab(args.lab)
    reply = _call(lab, req)
    if args.json:
        print(json.dumps(reply))
        return 0
    if args.action == "login":
        print(f"{args.user} logged in from {reply['host']} ({reply['addr']}): a common record "
              f"written by {reply['node']}, every node admits it")
    elif args.action == "logout":
        done = "logged out" if reply.get("removed") else "was not logged in"
        print(f"{reply['host']} ({reply['addr']}) {done} on every node")
    elif args.action == "unblock":
        done = "unblocked" if reply.get("removed") else "was not blocklisted"
        print(f"{reply['host']} ({reply['addr']}) {done} on every node")
    else:
        for node, r in sorted(reply["nodes"].items()):
            ents = r.get("entries", [])
            print(f"{node}: {len(ents)} entries")
            for e in ents:
                what = f"user {e['user']}" if e["kind"] == "user" else (
                    f"blocked ({e['ports']} ports), {max(0.0, e['until'] - r['now']):.1f} s left")
                print(f"  {e['addr']:16} {what:32} by {e['owner']}")
    return 0


def add_parser(add: Any) -> None:
    """Called by app.cli.build_parser with its `add(name, fn, help)`."""
    p = add("auth", cmd_auth, "log a lab host in or out (users are common state), lift a "
                              "blocklist entry, list users and blocklisted sources")
    p.add_argument("action", choices=("login", "logout", "unblock", "list"))
    p.add_argument("user", nargs="?", help="login: the user name")
    p.add_argument("--host", help="login, logout, unblock: the lab host (e.g. c1)")
