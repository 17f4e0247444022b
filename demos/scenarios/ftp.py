"""The "ftp" demo: an FTP PORT packet is held until its expectation is synced to every node."""

from __future__ import annotations

import statistics
import time
from typing import Any

from demos.scenarios.framework import (
    DemoContext,
    Scenario,
    Step,
    delta,
    events_since,
    expect_mem,
    fixed,
    judge,
    note_spurious,
    per_node,
)

FTP_SESSIONS = 8


# Where sessions are expected to fail (a data connection on a node that knows no expectation):
# each failing one waits out its step timeout, so a shorter one than the lab's 3 s. A step that
# works takes milliseconds.
FAILING_STEP_S = 1.5


def run_ftp(ctx: DemoContext, sessions: int, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Active FTP sessions to completion; each with the node of its control and data connections.
    `timeout_s`: how long a session's step may take (the lab's default when None)."""
    opts: dict[str, Any] = {} if timeout_s is None else {"timeout_s": timeout_s}
    name = ctx.traffic("ftp", mode="active", sessions=sessions, **opts)
    placed: dict[str, dict[str, str]] = {}

    def finished() -> list[dict[str, Any]] | None:
        fl = ctx.flows([name])
        for f in fl:  # remember placements: they vanish once the nodes expire the connections
            p = placed.setdefault(f["name"], {})
            for k in ("node", "data_node"):
                if f.get(k):
                    p.setdefault(k, f[k])
        done = [f for f in fl if f["health"] in ("done", "failed")]
        return done if len(done) >= sessions else None

    ctx.wait_for(f"{sessions} FTP sessions to end", finished, 40, 0.2)
    end = time.monotonic() + 2.0  # the daemon maps connections to nodes once a second
    while time.monotonic() < end:
        fl = finished() or []
        if all(placed.get(f["name"], {}).get("node") for f in fl) and all(
                placed[f["name"]].get("data_node") for f in fl if f["health"] == "done"):
            break
        time.sleep(0.2)
    out = []
    for f in ctx.flows([name]):
        out.append({**f, **placed.get(f["name"], {})})
    return out


def release_latencies(ctx: DemoContext, t0: float) -> list[float]:
    return [float(e["latency_ms"]) for e in events_since(ctx, t0)
            if e.get("kind") == "release" and e.get("latency_ms") is not None]


def session_line(s: dict[str, Any]) -> str:
    num = s["name"].rsplit("-", 1)[-1]
    return f"{num}: control {s.get('node') or '?'} data {s.get('data_node') or '?'} {s['health']}"


FTP_KEYS = ("released_by_ack", "released_by_timeout", "held", "no-rule-match")


def ftp_on_demand(ctx: DemoContext) -> str:
    ctx.call({"cmd": "policy", "policy": "hybrid", "interval_ms": 1000})
    ctx.mem["c0"] = ctx.settled_counters(FTP_KEYS)
    ctx.mem["t0"] = time.time()
    sessions = run_ftp(ctx, FTP_SESSIONS)
    ctx.mem["c1"] = ctx.settled_counters(FTP_KEYS)
    failed = [s for s in sessions if s["health"] != "done"]
    crossed = [s for s in sessions if s.get("node") and s.get("data_node") and s["node"] != s["data_node"]]
    ctx.figures["hybrid_sessions_ok"] = len(sessions) - len(failed)
    ctx.figures["hybrid_cross_node"] = len(crossed)
    judge(ctx, "all", not failed and len(sessions) == FTP_SESSIONS,
          f"{len(sessions) - len(failed)} of {FTP_SESSIONS} sessions transferred and verified their file"
          + (f"; failed: {[s.get('detail') for s in failed][:3]}" if failed else ""))
    judge(ctx, "crossed", bool(crossed), "; ".join(session_line(s) for s in sessions))
    return f"{len(crossed)} of {len(sessions)} data connections landed on another node than their control"


def ftp_held(ctx: DemoContext) -> str:
    c0, c1 = ctx.mem["c0"], ctx.mem["c1"]
    acked = delta(c0, c1, "released_by_ack")
    timed_out = delta(c0, c1, "released_by_timeout")
    lat = release_latencies(ctx, ctx.mem["t0"])
    ctx.figures["hold_ms_p50"] = fixed(statistics.median(lat), 2) if lat else None
    ctx.figures["hold_ms_max"] = fixed(max(lat), 2) if lat else None
    judge(ctx, "held", sum(acked.values()) >= FTP_SESSIONS,
          f"PORT packets released by ack: {per_node(acked)}")
    judge(ctx, "no-timeout", sum(timed_out.values()) == 0, f"released by timeout: {per_node(timed_out)}")
    if not lat:
        return "no release events were recorded"
    return f"{len(lat)} holds, median {statistics.median(lat):.2f} ms, longest {max(lat):.2f} ms"


def ftp_periodic(ctx: DemoContext) -> str:
    ctx.call({"cmd": "policy", "policy": "periodic", "interval_ms": 60000})
    ctx.mem["p0"] = ctx.settled_counters(FTP_KEYS)
    t0 = time.time()
    sessions = run_ftp(ctx, FTP_SESSIONS, FAILING_STEP_S)
    ctx.mem["p1"] = ctx.settled_counters(FTP_KEYS)
    failed = [s for s in sessions if s["health"] == "failed"]
    ok = [s for s in sessions if s["health"] == "done"]
    ctx.mem["p_failed"] = failed
    ctx.figures["periodic_sessions_failed"] = len(failed)
    strays = [s for s in ok if s.get("data_node") and s["data_node"] != s.get("node")]
    judge(ctx, "fails", bool(failed), "; ".join(session_line(s) for s in sessions))
    judge(ctx, "same-node", not strays,
          f"{len(ok)} sessions worked, all with their data connection on the control connection's node"
          if not strays else f"these worked across nodes without a synced expectation: "
                             f"{[session_line(s) for s in strays]}")
    held = delta(ctx.mem["p0"], ctx.mem["p1"], "released_by_ack")
    judge(ctx, "no-hold", sum(held.values()) == 0, f"packets released by ack: {per_node(held)}")
    return f"{len(failed)} of {len(sessions)} sessions failed{note_spurious(ctx, t0, set())}"


def ftp_who(ctx: DemoContext) -> str:
    nrm = delta(ctx.mem["p0"], ctx.mem["p1"], "no-rule-match")
    failed = ctx.mem.get("p_failed", [])
    fig = ctx.figures
    fig["headline"] = (f"hybrid: {fig.get('hybrid_sessions_ok')}/{FTP_SESSIONS} sessions ok "
                       f"({fig.get('hybrid_cross_node')} across nodes), PORT held "
                       f"{fig.get('hold_ms_p50')} ms median; periodic: {len(failed)}/{FTP_SESSIONS} failed")
    ctx.figures["periodic_no_rule_match"] = nrm
    judge(ctx, "dropped", sum(nrm.values()) >= len(failed) > 0,
          f"no-rule-match drops: {per_node(nrm)} for {len(failed)} failed sessions")
    return "the data connection's SYN met a node with no expectation: " + per_node(
        {n: v for n, v in nrm.items() if v})


FTP = Scenario(
    name="ftp",
    title="FTP across nodes: the PORT packet waits until its expectation is synced",
    teaches="An FTP PORT command announces a data connection the server will open back to the "
            "client; that connection may hash to another node. On-demand sync holds the PORT "
            "packet until every node knows the expectation, so the data connection is admitted "
            "anywhere. With periodic-only sync it is not known in time and is dropped.",
    lab_name="dm-ftp",
    steps=(
        Step(f"Hybrid sync. {FTP_SESSIONS} active-mode FTP sessions from c1 to s2; each data "
             "connection hashes to its own node.", ftp_on_demand,
             (expect_mem("every session transfers its file", "all"),
              expect_mem("some data connections land on another node", "crossed"))),
        Step("Each PORT packet was held until the other nodes acknowledged its expectation.", ftp_held,
             (expect_mem("every PORT packet was released by an ack", "held"),
              expect_mem("none had to be released by the timeout", "no-timeout"))),
        Step("Periodic-only sync every 60 s: the PORT goes on at once; the expectation waits for "
             "the next period.", ftp_periodic,
             (expect_mem("sessions whose data connection lands elsewhere fail", "fails"),
              expect_mem("only same-node sessions work", "same-node"),
              expect_mem("nothing is held", "no-hold"))),
        Step("The node that got the data connection had no expectation and no rule for it.", ftp_who,
             (expect_mem("it dropped the data connection as no-rule-match", "dropped"),)),
    ),
)

