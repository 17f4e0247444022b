"""Pilot tests: the dialogs answer number keys (the Nth choice) and arrows (move the focus)."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, RadioSet

from app.console import requests
from app.console.app import ConsoleApp
from app.console.dialogs import ConfirmScreen, PolicyScreen, QuitScreen, TrafficScreen
from app.console.fake import FakeLab
from netns import api
from tests.tui.snap_app import settle
from tests.tui.test_console import drive, sent

pytestmark = pytest.mark.tui


def focused_id(app: ConsoleApp) -> str | None:
    return app.focused.id if app.focused is not None else None


def test_the_traffic_dialog_moves_with_the_arrows_and_starts_the_nth_choice() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        idents = [ident for ident, _, _ in requests.TRAFFIC]
        await pilot.press("a")
        assert isinstance(app.screen, TrafficScreen)
        assert focused_id(app) == f"traffic-{idents[0]}"
        await pilot.press("down", "down")
        assert focused_id(app) == f"traffic-{idents[2]}"
        await pilot.press("up")
        assert focused_id(app) == f"traffic-{idents[1]}"
        assert str(app.screen.query_one(f"#traffic-{idents[2]}", Button).label).endswith(" (3)")
        await pilot.press("3")
        await settle(pilot)
        assert not isinstance(app.screen, TrafficScreen)
        (msg,) = sent(lab, "traffic")
        req = api.parse_request(msg)
        assert isinstance(req, api.TrafficStart) and req.kind == idents[2]
        await pilot.press("a", "9")  # no ninth choice: nothing happens, the dialog stays
        assert isinstance(app.screen, TrafficScreen) and len(sent(lab, "traffic")) == 1

    drive(scenario)


def test_confirm_and_quit_take_numbers_and_arrows() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen) and focused_id(app) == "no"
        await pilot.press("left")
        assert focused_id(app) == "yes"
        await pilot.press("right")
        assert focused_id(app) == "no"
        await pilot.press("2")  # Cancel
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen) and not sent(lab, "kill")
        await pilot.press("k", "1")  # the first choice: kill
        await settle(pilot)
        assert sent(lab, "kill") == [{"cmd": "kill", "node": "n1"}]
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen) and focused_id(app) == "keep"
        await pilot.press("down")
        assert focused_id(app) == "stop"
        await pilot.press("3")  # Cancel: the console keeps running
        await pilot.pause()
        assert not isinstance(app.screen, QuitScreen) and app.is_running

    drive(scenario)


def test_the_policy_dialog_picks_a_policy_by_number_and_keeps_digits_for_the_interval() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("p")
        assert isinstance(app.screen, PolicyScreen)
        radio = app.screen.query_one(RadioSet)
        assert radio.pressed_button is not None and radio.pressed_button.id == "policy-hybrid"
        number = list(api.POLICIES).index("periodic") + 1
        await pilot.press(str(number))
        assert radio.pressed_button is not None and radio.pressed_button.id == "policy-periodic"
        interval = app.screen.query_one("#interval", Input)
        interval.value = ""
        interval.focus()
        await pilot.press(*"2500")  # digits in the text box are the interval's
        assert interval.value == "2500" and radio.pressed_button.id == "policy-periodic"
        await pilot.press("down")  # out of the text box, onto Apply
        assert focused_id(app) == "apply"
        await pilot.press("enter")
        await settle(pilot)
        assert sent(lab, "policy") == [{"cmd": "policy", "policy": "periodic", "interval_ms": 2500}]

    drive(scenario)
