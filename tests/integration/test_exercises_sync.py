"""The sync exercises, step-through and periodic-interval, on a real lab, both ways, through the
`syncwall exercise` command a student uses (helpers shared with test_exercises). Run under the
lab lock."""

from __future__ import annotations

import time
from typing import Any

import pytest

from netns import lab as lab_life
from netns.control import ControlClient
from tests.integration.test_console_tmux import console_on, see
from tests.integration.test_exercises import _remove_our_sessions, ex, failing, started, sw

pytestmark = pytest.mark.integration
__all__ = ["_remove_our_sessions"]  # the module's session records are removed afterwards


def releases(c: ControlClient) -> list[dict[str, Any]]:
    return [e for e in c.request({"cmd": "snapshot"}).get("events", [])
            if e.get("kind") == "release" and e.get("message")]


def released_nothing(c: ControlClient, stepped: list[str]) -> str | None:
    """A message of `stepped` whose ack released no held packet, if one."""
    by = {str(e["message"]) for e in releases(c)}
    return next((m for m in stepped if m and m not in by), None)


def test_step_through_both_ways() -> None:
    """Also the console's task panel on a real lab (in tmux): the first criterion ticks live
    when the stepped message releases the PORT, before any `exercise check`."""
    released = "a held PORT was released by a message you stepped"
    with started("step-through", "ex-step"), console_on("ex-step"):
        rc, res = ex("answer", "n1>n2#1")  # nothing was stepped yet
        assert rc == 3 and failing(res)[0]["text"] == released
        assert "frozen" in failing(res)[0]["hint"]
        see("the task panel, nothing released yet",
            lambda s: "exercise step-through" in s and "✗ a held PORT was released" in s
            and "checks 1 · hints 0" in s)

        # The scripted student: freeze, one active FTP session, step until a PORT is released.
        with ControlClient(lab_life.control_socket("ex-step"), timeout_s=15.0) as c:
            assert c.request({"cmd": "freeze"})["frozen"]
            c.request({"cmd": "traffic", "action": "start", "kind": "ftp", "mode": "active",
                       "sessions": 1})
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the PORT is held: its expectation is queued
                held = sum(int(n["counters"].get("held", 0)) for n in c.request({"cmd": "status"})["nodes"])
                if held:
                    break
                time.sleep(0.1)
            assert held, "no PORT packet was held"
            stepped: list[str] = []
            while not releases(c) and len(stepped) < 40:
                r = c.request({"cmd": "step"})
                if r.get("released"):
                    stepped.append(str(r["released"]["message"]))
                time.sleep(0.3)
            rel = releases(c)
            assert rel, f"no release after stepping {stepped}"
            see("the release ticked live in the panel", lambda s: "✓ a held PORT was released" in s
                and "checks 1 · hints 0" in s)  # no check ran since: the panel read the lab
            right = str(rel[0]["message"])
            assert right in stepped, (right, stepped)
            # A wrong answer: a message stepped that released nothing. If the release came
            # with the first step, step more (the session's later sync messages) until one.
            wrong = released_nothing(c, stepped)
            for _ in range(20):
                if wrong is not None:
                    break
                r = c.request({"cmd": "step"})
                if r.get("released"):
                    stepped.append(str(r["released"]["message"]))
                time.sleep(0.3)  # its ack is in: had it released a packet, the event would be there
                wrong = released_nothing(c, stepped)
            c.request({"cmd": "resume"})
        assert wrong is not None, f"every message stepped released a held packet: {stepped}"
        rc, res = ex("answer", wrong)
        named = "you named the message whose ack released it"
        assert rc == 3 and [f["text"] for f in failing(res)] == [named]
        assert repr(wrong) in failing(res)[0]["details"] and failing(res)[0]["hint"]
        rc, res = ex("answer", right.replace(">", " -> "))
        assert rc == 0 and res["passed"], res


def test_periodic_interval_both_ways() -> None:
    with started("periodic-interval", "ex-period"):
        rc, res = ex("check")  # the starting 8 s period loses the victim's connections
        assert rc == 3
        first = failing(res)[0]
        assert first["text"] == "the failure on your setting loses at most 0 connections", res
        assert "lost" in first["details"] and first["hint"]

        sw("policy", "periodic", "--interval-ms", "2000", "--lab", "ex-period")
        rc, res = ex("check")
        assert rc == 0 and res["passed"], res
        assert "4000 ms, lost" in res["criteria"][2]["details"]
