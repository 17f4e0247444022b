"""Snapshot tests: what the console looks like, at a fixed size, on a fake lab with a fake clock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from app.console.fake import FakeClock
from tests.tui.snap_app import PRESENT_SIZE, SIZE, advance, build_app, lab_of, settle

pytestmark = pytest.mark.tui


def test_cluster_and_connections(snap_compare: Any) -> None:
    assert snap_compare(build_app(), terminal_size=SIZE, run_before=settle)


def test_takeover(snap_compare: Any) -> None:
    async def kill_n1_watch_n2(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("k", "y", "2")
        await settle(pilot)
        await advance(pilot, 0.5)

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=kill_n1_watch_n2)


@pytest.fixture
def utc() -> Iterator[None]:
    """The timeline shows the local wall clock: the same picture in every time zone."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_timeline_with_provenance(snap_compare: Any, utc: None) -> None:
    """Wall-clock times (the fake lab's clock is the epoch, as the daemon's), three full syncs
    in a row as one row (three times), and the cursor on it."""
    async def open_timeline(pilot: Pilot[Any]) -> None:
        await advance(pilot, 1.0)
        for _ in range(3):
            lab_of(pilot.app).request({"cmd": "full_sync"})  # type: ignore[arg-type]
        await advance(pilot, 0.5)
        await pilot.press("t", "down", "down", "down", "down")
        await settle(pilot)

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=open_timeline)


def test_flows_board_while_frozen(snap_compare: Any) -> None:
    async def freeze_and_ftp(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("z")
        await settle(pilot)
        pilot.app.link.request({"cmd": "traffic", "action": "start", "kind": "ftp"})
        await advance(pilot, 2.0)
        await pilot.press("f")
        await settle(pilot)  # the board is drawn before the picture is taken, however busy the machine

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=freeze_and_ftp)


def test_help(snap_compare: Any) -> None:
    async def help_screen(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)  # the help screen is drawn before the picture is taken, however busy the machine

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=help_screen)


def test_presentation_mode_takeover_at_100x30(snap_compare: Any) -> None:
    async def kill(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.link.request({"cmd": "kill", "node": "n1"})
        await pilot.press("2")
        await settle(pilot)
        await advance(pilot, 0.5)

    app = build_app(present=True)
    assert snap_compare(app, terminal_size=PRESENT_SIZE, run_before=kill)


def test_viewer_mode(snap_compare: Any) -> None:
    assert snap_compare(build_app(viewer=True), terminal_size=SIZE, run_before=settle)


def test_fault_banner(snap_compare: Any) -> None:
    async def loss(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.link.request({"cmd": "fault", "kind": "loss", "rate": 0.3, "node": "n2"})
        await advance(pilot, 0.25)

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=loss)


def test_a_bucket_owned_twice(snap_compare: Any) -> None:
    async def partition(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.link.request({"cmd": "fault", "kind": "partition", "groups": [["n1"], ["n2", "n3"]]})
        await advance(pilot, 0.25)

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=partition)


def test_presentation_mode_with_the_demo_panel_at_100x30(snap_compare: Any) -> None:
    async def one_step(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)

    app = build_app(present=True, demo="takeover", connections=40)
    assert snap_compare(app, terminal_size=PRESENT_SIZE, run_before=one_step)


def test_a_card_shows_flapping(snap_compare: Any) -> None:
    """n1's card with the agent's own stats after n3 missed heartbeats and answered later
    (a simulated cluster, the schema the node reports)."""
    from app.console.cards import ClusterView
    from tests.unit.test_sync_flaps import _cluster

    c = _cluster()
    c.cut = {"n3"}
    c.run(0.08)
    c.cut = set()
    c.run(0.02)
    stats = c.agents["n1"].stats()
    stats["peers"]["n3"]["late_ms"] = 31.0  # fixed for the picture (the simulated one is too)

    async def flap(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        cluster = pilot.app.query_one(ClusterView)
        nodes = [{**c.node, "sync": stats} if n == "n1" else c.node for n, c in cluster.cards.items()]
        await cluster.update_nodes(nodes)
        await pilot.pause()

    assert snap_compare(build_app(), terminal_size=SIZE, run_before=flap)


def test_task_panel_of_an_exercise(snap_compare: Any, tmp_path: Path) -> None:
    """periodic-interval on the fake lab: one criterion ticked live, one failed at the last
    check, one the check could not reach yet."""
    from demos.exercises.session import Session

    s = Session("periodic-interval", "ex-period", str(tmp_path / "periodic-interval.toml"), started=1000.0)
    s.add_check([{"text": "the lab runs periodic sync with one of the choices", "ok": False,
                  "details": "policy periodic, interval 8000 ms"},
                 {"text": "the failure on your setting loses at most 0 connections", "ok": False,
                  "details": "at 8000 ms: 3 lost (at most 0 allowed)"}], False, now=1100.0)
    s.add_hint("the failure on your setting loses at most 0 connections", now=1110.0)
    s.save(tmp_path)
    app = build_app(exercise_root=tmp_path)
    lab_of(app).name = "ex-period"

    async def set_period(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        lab_of(app).request({"cmd": "policy", "policy": "periodic", "interval_ms": 2000})
        await advance(pilot, 0.25)

    assert snap_compare(app, terminal_size=SIZE, run_before=set_period)


def test_task_panel_of_an_observe_exercise(snap_compare: Any, tmp_path: Path) -> None:
    """step-through on the fake lab: the student stepped two sync messages, the second one's
    ack released the held PORT (ticked live), and the answer names the first (live: wrong)."""
    from demos.exercises.session import Session

    s = Session("step-through", "ex-step", str(tmp_path / "step-through.toml"), started=1000.0)
    s.add_answer("n1>n2#4", False, now=1100.0)
    s.save(tmp_path)
    app = build_app(exercise_root=tmp_path)
    lab = lab_of(app)
    lab.name = "ex-step"

    async def step_and_release(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        assert isinstance(lab.clock, FakeClock)
        lab.clock.advance(0.5)
        now = lab.clock()
        # as the lab daemon notes them: each step names the message it sent, the release the
        # message whose ack completed the hold
        for label in ("n1>n2#4", "n1>n3#5"):
            lab._event(now, "n1", "step", f"n1 sent: ftp-expectation {label}", message=label)
        lab._event(now, "n1", "release", "1 held packet(s) released on ack of n1>n3#5 after 812.00 ms",
                   message="n1>n3#5")
        await advance(pilot, 0.25)

    assert snap_compare(app, terminal_size=SIZE, run_before=step_and_release)
