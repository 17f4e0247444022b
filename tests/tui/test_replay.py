"""Pilot tests: the console on a recording of the fake lab, with playback keys and every action refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from app.console.cards import NodeCard
from app.console.fake import FakeClock, FakeLab
from app.console.tables import DiffTable
from app.replay import (
    REFUSED,
    CompareScreen,
    GoToScreen,
    ReplayApp,
    ReplayLink,
    compare,
    parse_clock,
    summarize,
)
from netns.recorder import RECORDING_DIR, Limits, Recorder, Recording, pack_folder
from tests.tui.snap_app import SIZE, settle

pytestmark = pytest.mark.tui

KILL_AT_S = 5.0
LENGTH_S = 20.0


def record_fake_lab(tmp: Path) -> tuple[Path, dict[float, list[str]]]:
    """Record 20 s of the fake lab (n1 killed at 5 s); returns the file and n2's own keys by time."""
    clock = FakeClock(0.0)  # the recording's times from 0: offsets and times are the same here
    lab = FakeLab(clock, connections=40)
    rec = Recorder(tmp, lab.request, Limits(segment_s=2.0), clock=clock, meta={"lab": "default"})
    n2_keys: dict[float, list[str]] = {}
    last_id = 0

    async def go() -> None:
        nonlocal last_id
        while clock() <= LENGTH_S:
            if clock() == KILL_AT_S:
                lab.request({"cmd": "kill", "node": "n1"})
            for e in lab.request({"cmd": "snapshot"})["events"]:
                if e["id"] > last_id:
                    last_id = e["id"]
                    rec.event(e)
            await rec.capture()
            table = lab.request({"cmd": "table", "node": "n2", "scope": "own", "limit": 500})
            n2_keys[clock()] = sorted(r["key"] for r in table["rows"])
            clock.advance(0.5)
        await rec.stop()

    asyncio.run(go())
    path = tmp / "lab.swrec"
    path.write_bytes(pack_folder(tmp / RECORDING_DIR))
    return path, n2_keys


Scenario = Callable[[Pilot[Any], ReplayApp], Awaitable[None]]


def drive(path: Path, scenario: Scenario) -> ReplayApp:
    async def main() -> ReplayApp:
        app = ReplayApp(ReplayLink(Recording.open(path)), play_tick_s=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await scenario(pilot, app)
        return app

    return asyncio.run(main())


def bar(app: ReplayApp) -> str:
    return str(app.query_one("#replay-bar", Static).render())


def own_keys(app: ReplayApp) -> list[str]:
    return sorted(str(k.value) for k in app.query_one("#conn-table", DiffTable).rows)


def test_go_to_a_time_shows_the_tables_recorded_then(tmp_path: Path) -> None:
    path, n2_keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        assert "REPLAY 00:00.0 / 00:20.0" in bar(app)
        assert "actions are disabled in a replay" in bar(app)
        assert "ACTIVE" in str(app.query_one("#card-n1", NodeCard).border_title)
        await pilot.press("2")  # n2's tables
        await settle(pilot)
        assert own_keys(app) == n2_keys[0.0]
        await pilot.press("g")
        assert isinstance(app.screen, GoToScreen)
        await pilot.press(*"0:12.2", "enter")
        await settle(pilot)
        assert app.replay.cursor == pytest.approx(12.2)
        assert own_keys(app) == n2_keys[12.0]  # the capture at or before the cursor
        assert n2_keys[12.0] != n2_keys[0.0]  # n2 took some of n1's connections over
        assert "FAILED" in str(app.query_one("#card-n1", NodeCard).border_title)
        assert "took over" in str(app.query_one("#headline", Static).render())
        await pilot.press("shift+left")
        await settle(pilot)
        assert app.replay.cursor == pytest.approx(2.2)
        assert own_keys(app) == n2_keys[2.0]
        assert "ACTIVE" in str(app.query_one("#card-n1", NodeCard).border_title)

    drive(path, scenario)


def test_right_and_left_step_through_the_events(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)
    times = sorted({float(e["t"]) for e in Recording.open(path).events})

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        app.seek_offset(KILL_AT_S - 0.01)
        await settle(pilot)
        await pilot.press("right")
        await settle(pilot)
        after = next(t for t in times if t > KILL_AT_S - 0.01)
        assert app.replay.cursor == after
        await pilot.press("right")
        await settle(pilot)
        assert app.replay.cursor == next(t for t in times if t > after)
        await pilot.press("left")
        await settle(pilot)
        assert app.replay.cursor == after
        await pilot.press("t")  # the timeline shows what had happened by then, and no more
        await settle(pilot)
        shown = app.query_one("#event-table", DiffTable)
        events = app.snapshot["events"]
        assert shown.row_count == len(events) == sum(1 for t in Recording.open(path).event_times
                                                     if t <= after)
        assert max(float(e["t"]) for e in events) == after

    drive(path, scenario)


def test_space_plays_and_pauses_and_brackets_change_the_speed(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        await pilot.press("space")
        assert app.playing and "▶ 1x" in bar(app)
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert app.speed == 4.0 and "▶ 4x" in bar(app)
        await pilot.press("left_square_bracket")
        assert app.speed == 2.0
        await pilot.press("space")
        assert not app.playing and "⏸ 2x" in bar(app)

    drive(path, scenario)


def test_actions_are_refused_and_hidden(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        for action in ("kill", "crash", "revive", "policy", "freeze", "demos"):
            assert app.check_action(action, ()) is False
        await pilot.press("k")
        await settle(pilot)
        assert not app.screen.query("ConfirmScreen")
        assert [n.message for n in app._notifications if "refused" in n.message] == [
            f"kill refused: {ReplayApp.REFUSAL}"], "told why, in a replay's words"
        for cmd in ("kill", "revive", "policy", "down", "traffic"):
            assert app.replay.request({"cmd": cmd, "node": "n1"}) == {"ok": False, "error": REFUSED}

    drive(path, scenario)


def test_the_filter_keeps_its_cursor_keys(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        await pilot.press("slash", "t", "c", "p")
        await settle(pilot)
        before = app.replay.cursor
        await pilot.press("left", "left")
        box = app.query_one("#filter", Input)
        assert box.cursor_position == 1 and app.replay.cursor == before
        rows = app.query_one("#conn-table", DiffTable)
        assert rows.row_count > 0
        assert all("tcp" in str(rows.get_cell(k.value, "proto")).lower() for k in rows.rows)

    drive(path, scenario)


def test_selecting_a_timeline_row_jumps_there(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        app.seek_offset(LENGTH_S)
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        table = app.query_one("#event-table", DiffTable)
        table.move_cursor(row=table.row_count - 1)  # newest first: the last row is the oldest
        await pilot.press("enter")
        await settle(pilot)
        oldest = min(float(e["t"]) for e in app.query_one("TimelinePane").events)  # type: ignore[attr-defined]
        assert app.replay.cursor == oldest < LENGTH_S

    drive(path, scenario)


def test_summary_counts_the_takeover_and_no_lost_flows(tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)
    doc = summarize(Recording.open(path))
    assert doc["duration_s"] == LENGTH_S
    assert doc["nodes"] == ["n1", "n2", "n3"]
    assert doc["takeovers"] == 1 and doc["flows_lost"] == 0 and doc["flows"] == 4
    out = subprocess.run([sys.executable, "-m", "app.cli", "replay", str(path), "--json"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout)["takeovers"] == 1


def test_parse_clock() -> None:
    assert parse_clock("90") == 90.0
    assert parse_clock("1:30.5") == 90.5
    with pytest.raises(ValueError):
        parse_clock("soon")


def test_mark_two_moments_and_see_what_moved_at_the_takeover(tmp_path: Path) -> None:
    path, n2_keys = record_fake_lab(tmp_path)

    async def scenario(pilot: Pilot[Any], app: ReplayApp) -> None:
        app.seek_offset(2.0)
        await settle(pilot)
        await pilot.press("m")
        assert "mark A at 00:02.0" in bar(app)
        await pilot.press("g", *"12", "enter")
        await settle(pilot)
        await pilot.press("m")
        assert isinstance(app.screen, CompareScreen)
        body = str(app.screen.query_one("#compare-body", Static).render())
        assert "17 connections moved n1 → n2" in body
        assert "own 17→0 (+0 -17)" in body  # n1, failed, lost all it owned
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen) and "mark A" not in bar(app)

    drive(path, scenario)
    rec = Recording.open(path)
    result = compare(rec.state_at(2.0)[1], rec.state_at(12.0)[1])
    n2_own = result["nodes"]["n2"]["own"]
    assert sorted(set(n2_keys[2.0]) - set(n2_keys[12.0])) == n2_own["lost"]
    assert sorted(set(n2_keys[12.0]) - set(n2_keys[2.0])) == n2_own["gained"]
    assert [(m["from"], m["to"], m["count"]) for m in result["moved"]] == [("n1", "n2", 17)]
    assert result["nodes"]["n1"]["own"]["after"] == 0
    out = subprocess.run([sys.executable, "-m", "app.cli", "replay", str(path), "--compare", "2", "12",
                          "--json"], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout)["moved"][0]["count"] == 17


def test_replay_screen_snapshot(snap_compare: Any, tmp_path: Path) -> None:
    path, _keys = record_fake_lab(tmp_path)
    app = ReplayApp(ReplayLink(Recording.open(path)), play_tick_s=None)

    async def after_the_takeover(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        app.seek_offset(12.0)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=after_the_takeover)
