"""Pilot tests of the demo panel: pick a demo, step, auto-play, failures, escape, viewer, presentation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, OptionList, Static

from app.console.app import ConsoleApp
from app.console.demo import DemoListScreen, DemoPanel, figure_tables
from app.console.fake import FakeLab
from tests.tui.demo_fakes import FAKE_SCENARIOS, GATE
from tests.tui.snap_app import PRESENT_SIZE, SIZE, build_app, lab_of, settle

pytestmark = pytest.mark.tui

Scenario = Callable[[Pilot[Any], ConsoleApp, FakeLab], Awaitable[None]]


@pytest.fixture(autouse=True)
def fake_demos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("demos.runner.SCENARIOS", FAKE_SCENARIOS)


def drive(scenario: Scenario, *, size: tuple[int, int] = SIZE, **kw: Any) -> ConsoleApp:
    kw.setdefault("connections", 40)

    async def main() -> ConsoleApp:
        app = build_app(**kw)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(pilot, app, lab_of(app))
        return app

    return asyncio.run(main())


def text(app: ConsoleApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def sent(lab: FakeLab, cmd: str) -> list[dict[str, Any]]:
    return [r for r in lab.requests if r.get("cmd") == cmd]


async def open_story(pilot: Pilot[Any], name: str = "story") -> DemoPanel:
    await pilot.press("d")
    app = pilot.app
    assert isinstance(app.screen, DemoListScreen)
    options = app.screen.query_one(OptionList)
    options.highlighted = [str(options.get_option_at_index(i).id)
                           for i in range(options.option_count)].index(name)
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(app, ConsoleApp)
    return app.demo_panel


def test_the_list_offers_every_demo_and_picking_one_opens_its_panel() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert not app.demo_panel.is_open
        await pilot.press("d")
        assert isinstance(app.screen, DemoListScreen)
        options = app.screen.query_one(OptionList)
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert ids == ["story", "groups", "gated"]
        await pilot.press("escape")
        assert not isinstance(app.screen, DemoListScreen) and not app.demo_panel.is_open
        panel = await open_story(pilot)
        assert panel.is_open and panel.run is not None
        assert "A story told on the fake lab" in text(app, "#demo-title")
        assert "1/3  Two long-lived TCP flows start." in text(app, "#demo-caption")
        assert sent(lab, "status")  # DemoRun asked the console's own lab
        assert panel.run.ctx.lab == "default"  # the lab named in the console's snapshot

    drive(scenario)


def test_stepping_changes_the_caption_and_ticks_the_steps() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await open_story(pilot)
        await pilot.press("enter")  # enter runs the step even with the table focused
        await settle(pilot)
        assert "2/3  Kill n1" in text(app, "#demo-caption")
        steps = text(app, "#demo-steps").splitlines()
        assert steps[0].startswith("✔ 1.") and steps[1].startswith("> 2.")
        assert "2 flows started" in text(app, "#demo-result")
        assert len(sent(lab, "traffic")) == 1
        await pilot.press("n")
        await settle(pilot)
        assert sent(lab, "kill") == [{"cmd": "kill", "node": "n1"}]
        assert not sent(lab, "step")  # n ran the demo's step, not a sync-channel step
        assert "3/3  Switch to periodic sync." in text(app, "#demo-caption")
        steps = text(app, "#demo-steps").splitlines()
        assert [s[0] for s in steps] == ["✔", "✔", ">"]
        assert "ok   n1 is failed: n1 is failed" in text(app, "#demo-result")
        assert "FAILED" in str(app.query_one("#card-n1").border_title)  # the cards kept up
        figures = app.query_one("#demo-figures", DataTable)
        assert [figures.get_row_at(i) for i in range(figures.row_count)] == [
            ["flows", "2"], ["killed", "n1"]]

    drive(scenario)


def test_auto_play_runs_to_the_end_and_a_failed_expectation_shows() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        panel = await open_story(pilot)
        panel.auto_pause_s = 0.0
        await pilot.press("A")
        for _ in range(100):
            await settle(pilot)
            if panel.run is not None and panel.run.done:
                break
            await pilot.pause(0.01)
        await settle(pilot)
        assert panel.run is not None and panel.run.done and not panel.auto
        assert [r.ok for r in panel.run.results] == [True, True, False]
        assert text(app, "#demo-steps").splitlines()[2].startswith("✘ 3.")
        assert "FAIL the phone rings: nobody answered the phone" in text(app, "#demo-result")
        assert "some expectations failed" in text(app, "#demo-caption")
        assert app.query_one("#demo-caption").has_class("-failed")
        assert "n2 took over n1's buckets" in text(app, "#demo-headline")
        await pilot.press("n")  # over: nothing more is sent
        await settle(pilot)
        assert len(sent(lab, "policy")) == 1

    drive(scenario)


def test_escape_closes_the_demo_and_puts_the_lab_back() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        panel = await open_story(pilot)
        await pilot.press("n")
        await settle(pilot)
        workloads = list(panel.run.ctx.mem["workloads"]) if panel.run else []
        assert len(workloads) == 1  # one workload of two flows, as the daemon starts it
        assert sum(f.workload == workloads[0] for f in lab.flows.values()) == 2
        await pilot.press("escape")
        await settle(pilot)
        assert not panel.is_open and not app.query_one("#demo-caption").display
        assert panel.restored == ["story"]
        stops = [r for r in sent(lab, "traffic") if r.get("action") == "stop"]
        assert [r["name"] for r in stops] == workloads
        assert not any(f.workload == workloads[0] for f in lab.flows.values())
        assert sent(lab, "policy")[-1] == {"cmd": "policy", "policy": "hybrid", "interval_ms": 1000}
        await pilot.press("n")  # closed: n is the sync channel's step again (greyed: not frozen)
        await settle(pilot)
        assert not sent(lab, "kill")

    drive(scenario)


def test_closing_during_a_step_puts_the_lab_back_once_the_step_ends() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        GATE.clear()
        panel = await open_story(pilot, "gated")
        await pilot.press("n")
        await pilot.pause()
        assert panel.busy and "▶ 1/2" in text(app, "#demo-caption")
        await pilot.press("escape")
        assert not panel.is_open and panel.restored == []  # the step still runs
        await pilot.press("n")  # closed: no demo step starts
        GATE.set()
        await settle(pilot)
        assert panel.restored == ["gated"] and not panel.busy
        stops = [r for r in sent(lab, "traffic") if r.get("action") == "stop"]
        assert [r["name"] for r in stops] == ["gated-001"]

    drive(scenario)


def test_the_console_can_open_on_a_demo() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert app.demo_panel.is_open and app.demo_panel.run is not None
        assert app.demo_panel.run.name == "story"
        assert "1/3  Two long-lived TCP flows start." in text(app, "#demo-caption")

    drive(scenario, demo="story")


def test_a_demo_without_a_lab_shows_its_figures_as_a_table() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        panel = await open_story(pilot, "groups")
        assert panel.has_class("-wide")
        await pilot.press("n")
        await settle(pilot)
        grid = panel.query_one(".demo-grid", DataTable)
        assert [str(c.label) for c in grid.columns.values()] == [
            "groups", "3 nodes", "4 nodes", "6 nodes"]
        rows = {r[0]: r[1:] for r in (grid.get_row_at(i) for i in range(grid.row_count))}
        assert rows["mesh entries per node"] == ["300", "400", "600"]
        assert rows["memory ratio"] == ["0.667", "0.5", "0.333"]
        assert "every expectation held" in text(app, "#demo-caption")

    drive(scenario)


def test_viewers_have_no_demo_keys() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        for action in ("demos", "demo_next", "demo_auto", "demo_close"):
            assert app.check_action(action, ()) is False
        keys = {b.binding.action for b in app.active_bindings.values()}
        assert not keys & {"demos", "demo_next", "demo_auto"}
        await pilot.press("d")
        assert not isinstance(app.screen, DemoListScreen)
        assert not any(c.title.startswith("Demo") for c in app.get_system_commands(app.screen))

    drive(scenario, viewer=True)


def test_the_palette_opens_the_demos() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Demos…" in titles and "Demo: close" not in titles
        await open_story(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Demo: run the next step" in titles and "Demo: close" in titles

    drive(scenario)


def test_presentation_mode_shows_the_caption_large() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await open_story(pilot)
        caption = app.query_one("#demo-caption", Static)
        assert caption.region.height >= 3 and caption.styles.text_style.bold
        assert app.query_one("#views").size.height >= 5  # the tables stay on screen

    drive(scenario, present=True, size=PRESENT_SIZE)


def test_figure_tables_split_values_and_grids() -> None:
    scalars, grids = figure_tables({"headline": "x", "takeover_ms": 12.5, "lost": None,
                                    "rows": [{"n": 3, "a": {"b": 1}}, {"n": 4, "a": {"b": 2}}]})
    assert scalars == [("takeover ms", "12.5"), ("lost", "-")]
    assert grids == [("rows", ["3 n", "4 n"], [["a b", "1", "2"]])]


def test_snapshot_of_the_demo_panel_after_two_steps(snap_compare: Any) -> None:
    async def two_steps(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)

    assert snap_compare(build_app(demo="story", connections=40), terminal_size=SIZE,
                        run_before=two_steps)


def test_syncwall_demo_on_a_terminal_opens_the_console_on_the_demos_own_lab(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import sys
    from collections.abc import Iterator

    import app.console.app
    import demos.runner

    seen: list[str] = []

    @contextlib.contextmanager
    def own_lab(name: str, settings: str = "") -> Iterator[str]:
        seen.append(f"up {name}")
        try:
            yield name
        finally:
            seen.append(f"down {name}")

    def run_console(link: Any, viewer: bool = False, present: bool = False,
                    demo: str | None = None) -> str:
        seen.append(f"console {demo} on {link._client.path}")
        return "keep"

    monkeypatch.setattr(demos.runner, "own_lab", own_lab)
    monkeypatch.setattr(app.console.app, "run_console", run_console)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    import argparse

    import app.cli

    # app.cli hands demos.runner the console opener (demos never import app).
    assert app.cli.cmd_demo(argparse.Namespace(name="story", headless=False, json=False, lab=None)) == 0
    assert seen == ["up dm-story", "console story on /run/syncwall/dm-story/control.sock",
                    "down dm-story"]
