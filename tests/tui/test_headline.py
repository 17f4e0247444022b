"""The headline (netns/headline.py) from events in the daemon's own shape, and through its status."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from netns import api, headline
from netns.handlers import ControlHandlers

T0 = 1_000_000.0


def ev(dt: float, node: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"t": T0 + dt, "node": node, "kind": kind, "text": extra.pop("text", kind), **extra}


def takeover(dt: float, node: str, promoted: int, **extra: Any) -> dict[str, Any]:
    """The daemon's takeover event: the adopter, what it promoted, how long it took."""
    return ev(dt, node, "takeover", buckets=[1, 4], promoted=promoted,
              detect_to_accept_ms=25.0, apply_ms=3.0, **extra)


def kill_n1_taken_by_n3() -> list[dict[str, Any]]:
    # n2 was offline earlier: the old daemon blamed every non-active node ("of n2").
    return [ev(0, "n2", "action", action="offline", text="offline n2: graceful leave"),
            ev(0.5, "n2", "leave"), takeover(0.6, "n3", 9),
            ev(5, "n1", "action", action="kill", text="kill n1: SIGKILL"),
            ev(5.01, "n3", "peer-down", peer="n1", closed=True),
            ev(5.02, "n3", "takeover", buckets=[1], promoted=11),  # the engine's own: no timing
            takeover(5.03, "n3", 11, takeover_ms=28.0)]


def test_a_takeover_names_the_adopter_and_the_failed_node_and_ages() -> None:
    head = headline.build(kill_n1_taken_by_n3(), T0 + 17)
    assert head.kind == "takeover" and head.nodes == ["n3", "n1"]
    assert head.render(T0 + 17) == "n3 took over 11 connections of n1 in 28 ms · 11 s ago"


def test_a_graceful_offline_reads_as_a_leave() -> None:
    head = headline.build(kill_n1_taken_by_n3()[:3], T0 + 1)
    assert head.kind == "leave"
    assert head.text == "n2 left gracefully: n3 took over its 9 connections in 25 ms"


def test_it_returns_to_all_nodes_in_step_after_the_hold() -> None:
    events = kill_n1_taken_by_n3()
    assert headline.build(events, T0 + 5.03 + headline.HOLD_S - 1).kind == "takeover"
    assert headline.build(events, T0 + 5.03 + headline.HOLD_S + 1).text == headline.QUIET
    assert headline.build(events, T0 + 99, down=["n1"]).text == "n1 down; the others in step"


def test_rejoin_false_suspicion_fault_and_replayed() -> None:
    rejoin = [*kill_n1_taken_by_n3(), ev(20, "n1", "action", action="revive"),
              ev(21, "n3", "peer-up", peer="n1"), takeover(22, "n1", 7)]
    assert headline.build(rejoin, T0 + 23).text == (
        "n1 rejoined: took back buckets 1, 4 with 7 connections in 25 ms")
    false = [ev(0, "n2", "peer-down", peer="n1", closed=False), takeover(0.1, "n2", 5),
             ev(0.9, "n2", "peer-up", peer="n1")]
    head = headline.build(false, T0 + 1)
    assert head.kind == "suspicion" and head.text.startswith("false suspicion: n2 thought n1 failed")
    assert "took over 5 connections" in head.text and "answered 900 ms later" in head.text
    fault = headline.build([], T0, faults=[{"kind": "loss", "percent": 30}])
    assert fault.kind == "fault" and "loss 30" in fault.text
    replay = [ev(0, "n2", "peer-down", peer="n1", closed=True), takeover(0.1, "n2", 5, replayed=3)]
    assert headline.build(replay, T0 + 1).text.endswith(", replayed 3 packets")
    one = [ev(0, "n2", "peer-down", peer="n1", closed=True), takeover(0.1, "n2", 1, replayed=1)]
    assert headline.build(one, T0 + 1).text == "n2 took over 1 connection of n1 in 25 ms, replayed 1 packet"


class StubDaemon:
    """Just what ControlHandlers.status reads of the daemon, in its shapes."""

    def __init__(self, events: list[dict[str, Any]], now: float) -> None:
        self.events = deque(events)
        self.faults_active: list[dict[str, Any]] = []
        self.now = now
        self.headline = "n3 took over 11 connections of n2 in 28 ms"  # what the old one said

    def status(self) -> dict[str, Any]:
        return {"lab": "t", "time": self.now, "headline": self.headline,
                "nodes": [{"name": "n1", "state": "failed"}, {"name": "n2", "state": "offline"},
                          {"name": "n3", "state": "active"}]}


def test_the_daemon_status_carries_the_headline_built_from_its_events() -> None:
    handlers = ControlHandlers(StubDaemon(kill_n1_taken_by_n3(), T0 + 7))  # type: ignore[arg-type]
    st = asyncio.run(handlers.handle(api.Status()))
    assert st["headline"] == "n3 took over 11 connections of n1 in 28 ms · 1 s ago"
    assert st["headline_event"]["kind"] == "takeover"


def test_the_lab_in_one_sentence_for_people() -> None:
    ring = {"buckets": 12, "nodes": [{"name": "n1", "backups": ["n2"]}, {"name": "n2", "backups": ["n3"]},
                                     {"name": "n3", "backups": ["n1"]}]}
    assert headline.describe_lab(ring) == "3 nodes, 12 buckets, backups n1→n2→n3→n1"
    two = {"buckets": 12, "nodes": [{"name": "n1", "backups": ["n2", "n3"]},
                                    {"name": "n2", "backups": ["n1", "n3"]},
                                    {"name": "n3", "backups": ["n1", "n2"]}]}
    assert headline.describe_lab(two) == "3 nodes, 12 buckets, backups n1→n2,n3; n2→n1,n3; n3→n1,n2"
    assert headline.describe_lab({"buckets": 4, "nodes": [{"name": "n1", "backups": []}]}) == (
        "1 node, 4 buckets")


def test_after_a_heal_the_views_merge_and_one_connection_is_singular() -> None:
    events = [*kill_n1_taken_by_n3(), ev(30, "lab", "fault", text='fault partition: {"groups": []}'),
              ev(40, "lab", "fault", text="fault heal: {}"), takeover(41, "n3", 0)]
    head = headline.build(events, T0 + 42)
    assert head.kind == "rejoin" and head.text == "after the heal, n3 holds buckets 1, 4 (0 connections)"
    one = [ev(0, "n2", "peer-down", peer="n1", closed=True), takeover(0.1, "n2", 1)]
    assert headline.build(one, T0 + 1).text == "n2 took over 1 connection of n1 in 25 ms"
