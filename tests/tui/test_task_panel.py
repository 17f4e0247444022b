"""The task panel against the fake lab: shown only while an exercise runs on the console's lab,
its live criteria tick when the lab changes, the others follow the student's `exercise check`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from app.console.app import ConsoleApp
from demos.exercises.session import Session
from tests.tui.snap_app import advance, build_app, lab_of, settle

pytestmark = pytest.mark.tui

SETTING = "the lab runs periodic sync with one of the choices"
BOUND = "the failure on your setting loses at most 0 connections"


def period_session(root: Path, lab: str = "ex-period") -> Session:
    s = Session("periodic-interval", lab, str(root / "periodic-interval.toml"), started=1000.0)
    s.save(root)
    return s


def body(app: ConsoleApp) -> str:
    return app.task_panel.plain


def line_of(app: ConsoleApp, criterion: str) -> str:
    return next(ln for ln in body(app).splitlines() if criterion in ln)


def drive(root: Path, scenario: Callable[[Pilot[Any], ConsoleApp], Awaitable[None]],
          lab: str = "ex-period") -> None:
    async def main() -> None:
        app = build_app(exercise_root=root, connections=60)
        lab_of(app).name = lab
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            await scenario(pilot, app)

    asyncio.run(main())


def test_no_session_on_this_lab_no_panel(tmp_path: Path) -> None:
    period_session(tmp_path, lab="ex-other")

    async def scenario(pilot: Pilot[Any], app: ConsoleApp) -> None:
        assert not app.task_panel.is_open and not app.task_panel.display

    drive(tmp_path, scenario)


def test_a_live_criterion_ticks_when_the_lab_changes(tmp_path: Path) -> None:
    period_session(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ConsoleApp) -> None:
        assert app.task_panel.is_open and app.task_panel.display
        assert "Periodic interval" in body(app) and "0 of 3" in body(app)
        assert line_of(app, SETTING).startswith("✗") and "(live)" in line_of(app, SETTING)
        assert "policy hybrid, interval 1000 ms" in body(app)
        assert line_of(app, BOUND).startswith("·")  # never checked: not graded by the panel

        lab_of(app).request({"cmd": "policy", "policy": "periodic", "interval_ms": 2000})
        await advance(pilot, 0.25)
        assert line_of(app, SETTING).startswith("✓"), body(app)
        assert "1 of 3" in body(app) and "policy periodic, interval 2000 ms" in body(app)

        lab_of(app).request({"cmd": "policy", "policy": "periodic", "interval_ms": 3000})
        await advance(pilot, 0.25)
        assert line_of(app, SETTING).startswith("✗"), "3000 ms is not one of the choices"

    drive(tmp_path, scenario)


def test_the_other_criteria_follow_the_students_last_check(tmp_path: Path) -> None:
    s = period_session(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ConsoleApp) -> None:
        assert line_of(app, BOUND).startswith("·")
        s.add_check([{"text": SETTING, "ok": True, "details": "policy periodic, interval 2000 ms"},
                     {"text": BOUND, "ok": False, "details": "at 2000 ms: 3 lost"},
                     {"text": "no longer choice keeps the bound (it is the longest)", "ok": False,
                      "details": "could not grade: needs a setting that keeps the bound first"}],
                    False, now=time.time())
        s.save(tmp_path)
        await advance(pilot, 0.25)
        assert line_of(app, BOUND).startswith("·"), "the session file is read once a second"
        await advance(pilot, 1.0)
        assert line_of(app, BOUND).startswith("✗") and "(check 1)" in line_of(app, BOUND)
        assert "at 2000 ms: 3 lost" in body(app) and "0 of 3 · checks 1 · hints 0" in body(app)
        # the live reading wins over the check's for a criterion that has one: the lab now
        assert "(live)" in line_of(app, SETTING) and line_of(app, SETTING).startswith("✗")

        s.stopped = time.time()  # `exercise stop`: the panel goes
        s.save(tmp_path)
        await advance(pilot, 1.0)
        assert not app.task_panel.is_open

    drive(tmp_path, scenario)
