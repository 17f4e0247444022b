"""Chaos run: kill, crash, offline and revive random nodes under TCP and FTP traffic; count flows lost."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from demos import flows as flow_judge
from netns.control import ControlClient, ControlError
from netns.record import RUN_ROOT
from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

ACTIONS = ("kill", "crash", "offline")
SETTLE_TIMEOUT_S = 30.0
TAKEOVER_TIMEOUT_S = 10.0
REVIVE_TIMEOUT_S = 20.0
# After the cluster has settled, a flow has this long to move again; one that does not is lost
# (its state is gone: TCP retransmits into a firewall that drops it until it times out).
RESUME_S = 10.0

Progress = Callable[[str], None]


class ChaosError(SyncwallError):
    """The chaos run cannot start or the lab stopped answering; the message says what to do."""


@dataclass(slots=True)
class Round:
    """One failure and its repair, with the flows it cost."""

    t_s: float
    action: str
    node: str
    backups: list[str]
    backups_alive: bool
    takeover_s: float | None = None
    revived: bool = False
    lost: list[dict[str, Any]] = field(default_factory=list)
    divergence: int | None = None
    note: str = ""


class Lab:
    """The few control requests the chaos run needs, on a running lab."""

    def __init__(self, name: str) -> None:
        self.name = name
        sock = RUN_ROOT / name / "control.sock"
        if not sock.exists():
            raise ChaosError(f"lab {name!r} is not running (no {sock}); start it with `syncwall up`")
        self.sock = sock

    def request(self, msg: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        c = ControlClient(self.sock, timeout_s)
        try:
            reply = c.request(msg)
        except ControlError as e:
            raise ChaosError(f"lab {self.name!r} does not answer: {e}") from e
        finally:
            c.close()
        return reply

    def status(self) -> dict[str, Any]:
        return self.request({"cmd": "status"})

    def flows(self) -> list[dict[str, Any]]:
        return list(self.request({"cmd": "snapshot", "max_events": 0}).get("flows", []))


def _settled(st: dict[str, Any]) -> bool:
    """Every node active and every bucket owned by exactly one of them."""
    if not all(n["state"] == "active" for n in st["nodes"]):
        return False
    return sorted(b for n in st["nodes"] for b in n["buckets"]) == list(range(1, st["buckets"] + 1))


def divergence(st: dict[str, Any]) -> int:
    """Backup copies that differ from what their owners hold, summed over nodes (0: converged)."""
    ns = {n["name"]: n for n in st["nodes"]}
    return sum(abs(n["backup"] - sum(ns[o]["own"] for o in n["backs_up"] if o in ns)) for n in ns.values())


def _status_if_settled(link: Lab) -> dict[str, Any] | None:
    st = link.status()
    return st if _settled(st) else None


def _wait(what: str, pred: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every_s)
    return None


def run_chaos(lab: str, minutes: float, seed: int, *, tcp_flows: int = 100,
              progress: Progress | None = None) -> dict[str, Any]:
    """Break random nodes of the running lab `lab` for `minutes` and report what it cost.

    Traffic: `tcp_flows` long-lived, sequence-checked TCP flows (half from c1, half from c2)
    and FTP sessions one after another (active from c1, passive from c2). Each round takes
    one node down by kill, crash or offline, but only when every node is active and the
    cluster has settled, so the failed node's backup group is always alive (never the last
    live member of a group at once); then it revives the node. A flow that was healthy
    before a round and does not move again after the cluster settled is lost; each lost
    flow is reported with the node that carried it and whether that node's backups lived.
    """
    say = progress or (lambda msg: log.info("%s", msg))
    rng = random.Random(seed)
    link = Lab(lab)
    st = link.status()
    names = [n["name"] for n in st["nodes"]]
    if not _wait("a settled cluster", lambda: _settled(link.status()), SETTLE_TIMEOUT_S):
        raise ChaosError(f"lab {lab!r} is not settled (every node active, every bucket owned once)")
    started: list[str] = []
    t0 = time.monotonic()
    rounds: list[Round] = []
    lost_names: set[str] = set()
    ftp_seen: dict[str, str] = {}
    ftp_names: list[str] = []
    flows_started = 0
    try:
        tcp_names: list[str] = []

        def tcp() -> list[dict[str, Any]]:
            return [f for f in link.flows() if f.get("workload") in tcp_names]

        def start_tcp() -> None:
            """Fresh long-lived flows (again after a round lost some, so later rounds still count)."""
            for name in tcp_names:
                link.request({"cmd": "traffic", "action": "stop", "name": name})
            tcp_names.clear()
            half = tcp_flows // 2
            for client, n in (("c1", tcp_flows - half), ("c2", half)):
                r = link.request({"cmd": "traffic", "action": "start", "kind": "tcp", "client": client,
                                  "flows": n, "interval_ms": 200})
                _ok(r, "start TCP flows")
                started.append(r["name"])
                tcp_names.append(r["name"])
            if not _wait(f"{tcp_flows} healthy flows", lambda: (fl := tcp()) and len(fl) >= tcp_flows
                         and all(f["health"] == "healthy" for f in fl), 60):
                raise ChaosError(f"the {tcp_flows} TCP flows did not all become healthy within 60 s")

        for client, mode in (("c1", "active"), ("c2", "passive")):
            r = link.request({"cmd": "traffic", "action": "start", "kind": "ftp", "client": client,
                              "mode": mode, "sessions": 0, "interval_ms": 500, "timeout_s": 5})
            _ok(r, "start FTP sessions")
            started.append(r["name"])
            ftp_names.append(r["name"])
        start_tcp()
        flows_started = tcp_flows
        say(f"{tcp_flows} TCP flows healthy, FTP sessions running; chaos for {minutes:g} min (seed {seed})")
        deadline = t0 + minutes * 60
        while time.monotonic() < deadline:
            st = _wait("settled", lambda: _status_if_settled(link), SETTLE_TIMEOUT_S)
            if st is None:
                rounds.append(Round(round(time.monotonic() - t0, 1), "wait", "", [], True,
                                    note=f"cluster not settled within {SETTLE_TIMEOUT_S:.0f} s"))
                say("cluster did not settle; waiting again")
                continue
            _ftp_tally(link.flows(), ftp_names, ftp_seen)
            before = {f["name"]: f for f in tcp() if f["health"] == "healthy"}
            rounds.append(_one_round(link, st, names, rng, t0, say))
            _ftp_tally(link.flows(), ftp_names, ftp_seen)
            rnd = rounds[-1]
            settled_again = _wait("settled", lambda: _settled(link.status()), SETTLE_TIMEOUT_S)
            if not settled_again:
                rnd.note += f" cluster not settled {SETTLE_TIMEOUT_S:.0f} s after the round;"
            # Backup copies should match their owners a moment after the round (up to 5 s).
            _wait("backups converged", lambda: divergence(link.status()) == 0, 5.0)
            rnd.divergence = divergence(link.status())
            # Judged by demos.flows from the moment the cluster settled again: a flow that does
            # not move within RESUME_S after that is lost.
            verdict = flow_judge.judge(tcp, time.time(), RESUME_S,
                                       names=[n for n in before if n not in lost_names], every_s=0.2)
            for cur in verdict.lost:
                name = str(cur["name"])
                f = before[name]
                lost_names.add(name)
                carrier = f.get("node", "")
                rnd.lost.append({
                    "flow": name, "src": f.get("src"), "health": cur.get("health"),
                    "detail": cur.get("detail", ""), "node": carrier,
                    "node_failed": carrier == rnd.node,
                    # The node that carried the flow either failed (then its backups must have
                    # taken over) or stayed alive itself: either way someone held its state.
                    "backup_alive": rnd.backups_alive if carrier == rnd.node else True,
                })
            if rnd.lost:
                say(f"  {len(rnd.lost)} flow(s) lost in this round; starting {tcp_flows} fresh flows")
                start_tcp()
                flows_started += tcp_flows
    finally:
        for name in started:
            with contextlib.suppress(ChaosError):
                link.request({"cmd": "traffic", "action": "stop", "name": name})
        _revive_all(link, names)
    _ftp_tally(link.flows(), ftp_names, ftp_seen)
    lost = [x for r in rounds for x in r.lost]
    lost_backup_alive = [x for x in lost if x["backup_alive"]]
    actions = [r for r in rounds if r.action in ACTIONS]
    return {
        "bench": "chaos",
        "lab": lab,
        "seed": seed,
        "minutes": minutes,
        "duration_s": round(time.monotonic() - t0, 1),
        "tcp_flows": tcp_flows,
        "tcp_flows_started": flows_started,
        "rounds": len(actions),
        "actions": {a: sum(1 for r in actions if r.action == a) for a in ACTIONS},
        "flows_lost": len(lost),
        "flows_lost_backup_alive": len(lost_backup_alive),
        "ftp_sessions": len(ftp_seen),
        "ftp_done": sum(1 for h in ftp_seen.values() if h == "done"),
        "ftp_failed": sum(1 for h in ftp_seen.values() if h == "failed"),
        "takeover_s": [r.takeover_s for r in actions if r.takeover_s is not None],
        "rounds_backups_diverged": sum(1 for r in actions if r.divergence),
        "max_backup_divergence": max((r.divergence or 0 for r in actions), default=0),
        "log": [_round_doc(r) for r in rounds],
        "ok": not lost_backup_alive,
    }


def _ok(reply: dict[str, Any], what: str) -> None:
    if not reply.get("ok"):
        raise ChaosError(f"{what}: the lab refused: {reply.get('error')}")


def _one_round(link: Lab, st: dict[str, Any], names: list[str], rng: random.Random, t0: float,
               say: Progress) -> Round:
    ns = {n["name"]: n for n in st["nodes"]}
    action = rng.choice(ACTIONS)
    node = rng.choice(names)
    backups = list(ns[node]["backups"])
    # Never the last live member of a backup group: act only when the victim's backups live.
    alive = all(ns[b]["state"] == "active" for b in backups) and bool(backups)
    rnd = Round(round(time.monotonic() - t0, 1), action, node, backups, alive)
    if not alive:
        rnd.action, rnd.note = "skip", f"{node}'s backups {backups} not all active"
        return rnd
    say(f"t={rnd.t_s:6.1f}s {action} {node} (backups {', '.join(backups)})")
    t_act = time.monotonic()
    reply = link.request({"cmd": action, "node": node})
    if not reply.get("ok"):
        rnd.note = f"{action} refused: {reply.get('error')}"
        return rnd
    every = list(range(1, st["buckets"] + 1))

    def taken() -> bool:
        s = link.status()
        others = [n for n in s["nodes"] if n["name"] != node]
        return sorted(b for n in others for b in n["buckets"]) == every

    if _wait("takeover", taken, TAKEOVER_TIMEOUT_S, 0.05):
        rnd.takeover_s = round(time.monotonic() - t_act, 2)
    else:
        rnd.note += f" {node}'s buckets not all taken over within {TAKEOVER_TIMEOUT_S:.0f} s;"
    time.sleep(rng.uniform(1.0, 3.0))
    reply = link.request({"cmd": "revive", "node": node})
    rnd.revived = bool(reply.get("ok"))
    if not rnd.revived:
        rnd.note += f" revive refused: {reply.get('error')};"
    elif not _wait("revived", lambda: (n := _node(link.status(), node))["state"] == "active" and n["buckets"],
                   REVIVE_TIMEOUT_S):
        rnd.note += f" {node} not active with buckets {REVIVE_TIMEOUT_S:.0f} s after revive;"
    return rnd


def _node(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in st["nodes"] if n["name"] == name)


def _revive_all(link: Lab, names: list[str]) -> None:
    """Leave the lab as we found it: every node running."""
    with contextlib.suppress(ChaosError):
        for n in link.status()["nodes"]:
            if n["intent"] != "active" or n["state"] in ("failed", "offline"):
                link.request({"cmd": "revive", "node": n["name"]})


def _ftp_tally(flows: list[dict[str, Any]], workloads: list[str], seen: dict[str, str]) -> None:
    """Remember the final health of every FTP session (the health file keeps only recent ones)."""
    for f in flows:
        if f.get("workload") in workloads and f.get("health") in ("done", "failed"):
            seen[f"{f['workload']}/{f['name']}"] = f["health"]


def _round_doc(r: Round) -> dict[str, Any]:
    return {"t_s": r.t_s, "action": r.action, "node": r.node, "backups": r.backups,
            "backups_alive": r.backups_alive, "takeover_s": r.takeover_s, "revived": r.revived,
            "divergence": r.divergence, "lost": r.lost, "note": r.note.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="syncwall-chaos", description=__doc__)
    ap.add_argument("--lab", required=True, help="a running lab (syncwall up)")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flows", type=int, default=100,
                    help="long-lived TCP flows (at least 100 for the bench)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        doc = run_chaos(args.lab, args.minutes, args.seed, tcp_flows=args.flows)
    except ChaosError as e:
        print(json.dumps({"ok": False, "error": str(e)}) if args.json else f"chaos: {e}")
        return 1
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{doc['rounds']} rounds {doc['actions']}, {doc['tcp_flows']} TCP flows: "
              f"{doc['flows_lost']} lost ({doc['flows_lost_backup_alive']} while the backup lived); "
              f"FTP {doc['ftp_done']} ok / {doc['ftp_failed']} failed")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
