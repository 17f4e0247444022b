"""Pilot tests: the sync timeline in wall-clock time, repeats collapsed, filtered by node and kind."""

from __future__ import annotations

import re
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from app.console.app import ConsoleApp
from app.console.fake import FakeLab
from app.console.model import fmt_clock
from app.console.tables import DiffTable
from tests.tui.snap_app import advance, settle
from tests.tui.test_console import drive, text_of

pytestmark = pytest.mark.tui

CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")


def events_table(app: ConsoleApp) -> DiffTable:
    return app.query_one("#event-table", DiffTable)


def rows(app: ConsoleApp) -> list[list[str]]:
    table = events_table(app)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def test_times_are_the_wall_clock_not_epoch_seconds() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await advance(pilot, 1.0)
        await pilot.press("t")
        await settle(pilot)
        newest = max(app.snapshot["events"], key=lambda e: (e["t"], e["id"]))
        assert newest["t"] > 1e9, "the fake lab's clock is the epoch, as the daemon's"
        shown = rows(app)
        assert all(CLOCK.match(r[0]) for r in shown), shown[:3]
        assert shown[0][0] == fmt_clock(newest["t"]), "newest first"

    drive(scenario)


def test_repeats_collapse_into_one_row_and_provenance_follows_it() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await advance(pilot, 1.0)
        for _ in range(3):  # at one instant: nothing else happens between them
            lab.request({"cmd": "full_sync"})
        await advance(pilot, 0.0)
        await pilot.press("t")
        await settle(pilot)
        before = rows(app)
        full = [r for r in before if r[3] == "full-sync"]
        assert len(full) == 1 and full[0][1] == "\u00d73", full
        assert len(before) == len(app.snapshot["events"]) - 2
        table = events_table(app)
        table.move_cursor(row=before.index(full[0]))
        await pilot.pause()
        assert "\u00d73 in a row" in text_of(app, "#provenance")
        assert "full sync: " in text_of(app, "#provenance")
        lab.request({"cmd": "full_sync"})  # a fourth joins the run under the cursor
        await advance(pilot, 1.0)
        after = rows(app)
        assert [r[1] for r in after if r[3] == "full-sync"] == ["\u00d74"] and len(after) == len(before)
        assert "\u00d74 in a row" in text_of(app, "#provenance")
        lab.request({"cmd": "policy", "policy": "hybrid", "interval_ms": 1000})
        lab.request({"cmd": "full_sync"})  # not consecutive: a row of its own
        await advance(pilot, 1.0)
        assert [r[1] for r in rows(app) if r[3] == "full-sync"] == ["", "\u00d74"]

    drive(scenario, churn=False)


def test_slash_on_the_timeline_filters_by_node_and_kind() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await advance(pilot, 1.0)
        lab.request({"cmd": "kill", "node": "n1"})
        await advance(pilot, 1.0)
        await pilot.press("t")
        await settle(pilot)
        every = len(rows(app))
        await pilot.press("slash", *"n2")
        box = app.query_one("#timeline-filter", Input)
        assert app.focused is box and box.value == "n2"
        await pilot.pause()
        shown = rows(app)
        assert shown and all(r[2] == "n2" for r in shown), shown
        assert len(shown) < every
        assert "filter 'n2'" in text_of(app, "#timeline-caption")
        await pilot.press("space", *"take")  # node n2 and kind takeover
        await pilot.pause()
        assert {(r[2], r[3]) for r in rows(app)} == {("n2", "takeover")}
        await pilot.press("enter")
        assert app.focused is events_table(app)
        await pilot.press("escape")
        await pilot.pause()
        assert len(rows(app)) == every and not box.has_class("-open")
        await pilot.press("c", "slash")  # on the connections, `/` is their filter as before
        assert app.focused is app.query_one("#filter", Input)

    drive(scenario, churn=False)
