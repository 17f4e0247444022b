"""Pilot tests: the console against the fake lab, every view and action, a takeover on screen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, RadioButton, Static
from textual.widgets.data_table import RowKey

from app.console.app import ConsoleApp
from app.console.cards import NodeCard
from app.console.dialogs import ConfirmScreen, HelpScreen, PolicyScreen, QuitScreen
from app.console.fake import FakeLab
from app.console.link import LinkError
from app.console.tables import DiffTable
from netns import api
from tests.tui.snap_app import SIZE, advance, build_app, lab_of, settle

pytestmark = pytest.mark.tui

Scenario = Callable[[Pilot[Any], ConsoleApp, FakeLab], Awaitable[None]]


def drive(scenario: Scenario, *, size: tuple[int, int] = SIZE, **kw: Any) -> ConsoleApp:
    kw.setdefault("connections", 60)  # small tables keep the suite fast; one test uses thousands

    async def main() -> ConsoleApp:
        app = build_app(**kw)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(pilot, app, lab_of(app))
        return app

    return asyncio.run(main())


def sent(lab: FakeLab, cmd: str) -> list[dict[str, Any]]:
    return [r for r in lab.requests if r.get("cmd") == cmd]


def conn_table(app: ConsoleApp) -> DiffTable:
    return app.query_one("#conn-table", DiffTable)


def column(table: DiffTable, name: str) -> list[str]:
    return [str(v) for v in table.get_column(name)]


def text_of(app: ConsoleApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def test_cluster_view_shows_a_card_per_node() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        cards = list(app.query(NodeCard))
        assert [c.node_name for c in cards] == ["n1", "n2", "n3"]
        assert all("ACTIVE" in str(c.border_title) for c in cards)
        body = str(cards[0].query_one(".card-body", Static).render())
        assert "buckets 4 of 12: 1 4 7 10" in body  # its share of the lab's buckets, then which
        assert "backs up n3 · backed by n2" in body
        n1 = next(n for n in app.snapshot["nodes"] if n["name"] == "n1")
        assert f"own {n1['own']}" in body and f"backup {n1['backup']}" in body
        assert cards[0].has_class("-selected")

    drive(scenario)


def test_tables_follow_the_selected_node_and_scope() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        table = conn_table(app)
        own_n1 = sum(1 for c in lab.conns.values() if c.owner == "n1" and not c.common)
        assert table.row_count == own_n1
        assert set(column(table, "owner")) == {"n1"}
        assert f"n1 · own · {own_n1} rows" in text_of(app, "#totals")
        await pilot.press("2")
        await settle(pilot)
        assert set(column(table, "owner")) == {"n2"}
        assert app.query_one("#card-n2", NodeCard).has_class("-selected")
        await pilot.press("right_square_bracket")  # backup scope: n2 backs up n1
        await settle(pilot)
        assert set(column(table, "owner")) == {"n1"}
        assert "n2 · backup" in text_of(app, "#totals")
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert {"ruleset", "blocklist"} <= set(column(table, "proto"))

    drive(scenario)


def test_takeover_is_shown_on_screen() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        n1_keys = {k for k, c in lab.conns.items() if c.owner == "n1" and not c.common}
        await pilot.press("k")  # n1 is selected
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert sent(lab, "kill") == [{"cmd": "kill", "node": "n1"}]
        card = app.query_one("#card-n1", NodeCard)
        assert "FAILED" in str(card.border_title) and card.has_class("-failed")
        await pilot.press("2")  # watch the backup's own table
        await settle(pilot)
        await advance(pilot, 0.5)  # past the detection time
        assert "n2 took over" in text_of(app, "#headline")
        assert f"took over {len(n1_keys)} connections of n1 in 120 ms" in text_of(app, "#headline")
        table = conn_table(app)
        on_screen = {str(k.value) for k in table.rows}
        assert n1_keys <= on_screen
        key = sorted(n1_keys)[0]
        owner = table.get_cell(key, "owner")
        assert isinstance(owner, Text) and owner.plain == "n2 ★"  # lit: the owner just changed
        assert table.get_cell(key, "trigger") == "node-failed"
        assert "buckets none" in str(card.query_one(".card-body", Static).render())
        heir = str(app.query_one("#card-n2", NodeCard).query_one(".card-body", Static).render())
        assert "buckets 8 of 12: " in heir, heir  # the backup carries twice the even share
        await advance(pilot, 10.0)  # the highlight fades, the row stays
        assert table.get_cell(key, "owner") == "n2"

    drive(scenario)


def test_table_rows_are_updated_by_diff_not_rebuilt() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        table = conn_table(app)
        cleared: list[bool] = []
        original_clear = table.clear

        def spy_clear(columns: bool = False) -> DiffTable:
            cleared.append(columns)
            return original_clear(columns)

        table.clear = spy_clear  # type: ignore[method-assign]
        key = next(str(k.value) for k in table.rows)
        row_before = table.rows[RowKey(key)]
        assert table.get_cell(key, "age") == "0s"
        await advance(pilot, 2.0)
        assert table.rows[RowKey(key)] is row_before  # same row object: updated in place
        assert table.get_cell(key, "age") == "2s"
        lab.request({"cmd": "traffic", "action": "start", "kind": "burst", "count": 60})
        await advance(pilot, 0.25)
        grown = table.row_count
        assert grown == sum(1 for c in lab.conns.values() if c.owner == "n1" and not c.common)
        await advance(pilot, 6.0)  # the burst's short connections close
        assert table.row_count < grown
        assert table.rows[RowKey(key)] is row_before
        assert cleared == []

    drive(scenario)


def test_filter_and_sort() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        table = conn_table(app)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press("u", "d", "p")
        await settle(pilot)
        assert table.row_count > 0 and set(column(table, "proto")) == {"udp"}
        assert "filter 'udp'" in text_of(app, "#totals")
        assert sent(lab, "table")[-1]["filter"] == "udp"
        await pilot.press("enter", "escape")
        await settle(pilot)
        assert len(set(column(table, "proto"))) == 2
        await pilot.press("s")  # sort by protocol, ascending
        protos = column(table, "proto")
        assert protos == sorted(protos) and protos[0] == "tcp"
        await pilot.press("s")  # descending
        protos = column(table, "proto")
        assert protos[0] == "udp"

    drive(scenario)


def test_table_window_shows_totals_with_thousands_of_rows() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        table = conn_table(app)
        total = sum(1 for c in lab.conns.values() if c.owner == "n1" and not c.common)
        assert total > app.table_limit
        assert table.row_count == app.table_limit
        assert f"{app.table_limit} of {total} rows" in text_of(app, "#totals")

    drive(scenario, connections=3000)


def test_timeline_shows_provenance_of_the_selected_event() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await advance(pilot, 1.0)
        await pilot.press("t")
        events = app.query_one("#event-table", DiffTable)
        assert events.row_count == len(app.snapshot["events"])
        assert app.focused is events
        await pilot.press("down")
        await pilot.pause()
        shown = text_of(app, "#provenance")
        assert "record k" in shown and "acked after" in shown and "sent to" in shown

    drive(scenario)


def test_flows_board_follows_the_node_carrying_each_flow() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("f")
        flows = app.query_one("#flow-table", DiffTable)
        assert flows.row_count == len(lab.flows) == 4
        name, flow = next(iter(lab.flows.items()))
        carrier = lab.conns[flow.conn_key].owner
        backup = lab.backups[carrier][0]
        assert flows.get_cell(name, "node") == carrier
        lab.request({"cmd": "kill", "node": carrier})
        await advance(pilot, 0.05)  # killed, not yet detected
        health = flows.get_cell(name, "health")
        assert isinstance(health, Text) and health.plain == "stalled"
        await advance(pilot, 0.5)
        assert flows.get_cell(name, "node") == backup
        assert str(flows.get_cell(name, "health")) == "healthy"
        assert "4 flows" in text_of(app, "#flow-summary")

    drive(scenario)


def test_dangerous_actions_confirm_and_cancel_sends_nothing() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert not sent(lab, "kill") and not sent(lab, "crash") and not sent(lab, "offline")
        await pilot.press("3", "x", "y")
        await settle(pilot)
        assert sent(lab, "crash") == [{"cmd": "crash", "node": "n3"}]
        await pilot.press("2", "o", "y")
        await settle(pilot)
        assert sent(lab, "offline") == [{"cmd": "offline", "node": "n2"}]
        assert "n2 left gracefully" in text_of(app, "#headline")

    drive(scenario)


def test_revive_is_greyed_out_until_the_node_is_down() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert app.check_action("revive", ()) is False  # not in the footer (the help lists it)
        await pilot.press("r")
        await settle(pilot)
        assert not sent(lab, "revive")
        await pilot.press("k", "y")
        await settle(pilot)
        assert app.check_action("revive", ()) is True
        assert app.check_action("kill", ()) is False
        await advance(pilot, 0.5)
        await pilot.press("1")  # the table followed the takeover to n2: back to n1
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        assert sent(lab, "revive") == [{"cmd": "revive", "node": "n1"}]
        await advance(pilot, 1.0)
        assert "n1 rejoined: took back buckets 1, 4, 7, 10" in text_of(app, "#headline")
        assert "ACTIVE" in str(app.query_one("#card-n1", NodeCard).border_title)

    drive(scenario)


def test_policy_dialog_switches_the_policy() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("p")
        assert isinstance(app.screen, PolicyScreen)
        app.screen.query_one("#policy-periodic", RadioButton).value = True
        interval = app.screen.query_one("#interval", Input)
        interval.value = "250"
        await pilot.click("#apply")
        await settle(pilot)
        assert sent(lab, "policy") == [{"cmd": "policy", "policy": "periodic", "interval_ms": 250}]
        assert "policy periodic 250 ms" in str(app.sub_title)

    drive(scenario)


@pytest.mark.parametrize(("ident", "field", "want", "flows"), [
    ("tcp", "flows", 3, 3), ("udp", "flows", 1, 1), ("ftp", "mode", "passive", 1),
    ("burst", "count", 200, 1)])
def test_the_traffic_dialog_sends_what_the_daemon_reads(ident: str, field: str, want: Any,
                                                         flows: int) -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("a")
        await pilot.click(f"#traffic-{ident}")
        await settle(pilot)
        (msg,) = sent(lab, "traffic")
        req = api.parse_request(msg)  # the daemon's own parser: nothing it would refuse
        assert isinstance(req, api.TrafficStart) and req.kind == ident
        assert req.options()[field] == want
        workload = list(lab.workloads)[-1]  # the one just started
        assert len(lab.workloads[workload]) == flows
        if ident == "ftp":
            assert "passive" in lab.flows[lab.workloads[workload][0]].detail

    drive(scenario)


def test_the_flows_board_shows_client_to_server_pauses_and_finished_flows() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("f")
        table = app.query_one("#flow-table", DiffTable)
        name, flow = next(iter(lab.flows.items()))
        assert table.get_cell(name, "path") == f"{flow.src} → {flow.dst}"
        assert flow.src.startswith("198.18.1.") and flow.dst.startswith("198.18.2.")
        carrier = lab.conns[flow.conn_key].owner
        lab.request({"cmd": "kill", "node": carrier})
        await advance(pilot, 1.0)  # stalled until its backup takes over
        assert table.get_cell(name, "pause") != "0 ms" and table.get_cell(name, "pause").endswith("ms")
        lab.flows[name].health = "done"
        await advance(pilot, 0.0)
        summary = text_of(app, "#flow-summary")
        assert "1 done" in summary and "0 failed" in summary

    drive(scenario)


def test_traffic_full_sync_and_palette_commands() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("a")
        await pilot.click("#traffic-ftp")
        await settle(pilot)
        assert "ftp-001" in lab.flows
        await pilot.press("f")
        assert app.query_one("#flow-table", DiffTable).get_cell("ftp-001", "kind") == "ftp"
        await pilot.press("y")
        await settle(pilot)
        assert sent(lab, "full_sync")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Kill n1" in titles and "Full sync now" in titles
        assert "Revive n1" not in titles  # does not apply to an active node
        assert any(t.startswith("Start traffic: Burst") for t in titles)

    drive(scenario)


def test_step_through_releases_one_sync_message_at_a_time() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert app.check_action("step", ()) is False
        await pilot.press("z")
        await settle(pilot)
        assert lab.frozen and "SYNC FROZEN" in text_of(app, "#headline")
        lab.request({"cmd": "traffic", "action": "start", "kind": "tcp", "flows": 3})
        await advance(pilot, 0.0)
        queued = len(lab.queue)
        assert queued >= 3 and f"{queued} queued" in text_of(app, "#headline")
        await pilot.press("2", "right_square_bracket")  # n2's backup table: n1's copies
        await settle(pilot)
        before = conn_table(app).row_count
        await pilot.press("n")
        await settle(pilot)
        assert len(lab.queue) == queued - 1
        assert any(n.message.startswith("one sync message released: state-modified: k")
                   for n in app._notifications)
        await pilot.press("z")
        await settle(pilot)
        assert not lab.frozen and "FROZEN" not in text_of(app, "#headline")
        assert conn_table(app).row_count >= before

    drive(scenario)


class BrokenLink:
    """A lab link whose daemon has gone away."""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        raise LinkError("connection refused: /run/syncwall/default/control.sock")


def test_link_errors_become_notifications_not_crashes() -> None:
    async def main() -> None:
        app = ConsoleApp(BrokenLink(), poll_interval_s=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "lab unreachable" in text_of(app, "#headline")
            assert any(n.severity == "error" for n in app._notifications)
            app.send(api.FullSync(), "never")
            await settle(pilot)
            assert any("connection refused" in n.message and n.title == "link error"
                       for n in app._notifications)
            assert app.is_running

    asyncio.run(main())


class GarbledLink:
    """A lab link whose daemon speaks another version of the API."""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["cmd"] == "snapshot":
            return {"ok": True, "nodes": [{"bogus": 1}], "events": [], "flows": []}
        return {"ok": True, "rows": [{"no_key": 1}]}


def test_an_unreadable_reply_is_reported_not_fatal() -> None:
    async def main() -> None:
        app = ConsoleApp(GarbledLink(), poll_interval_s=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.is_running
            assert "cannot read" in text_of(app, "#headline")

    asyncio.run(main())


def test_a_refused_request_is_shown_with_the_labs_reason() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        app.send(api.Revive("n1"), "never")
        await settle(pilot)
        assert any("only a failed or offline node can be revived" in n.message
                   for n in app._notifications)

    drive(scenario)


def test_viewer_mode_has_no_actions() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        for action in ("kill", "crash", "revive", "offline", "policy", "full_sync", "traffic",
                       "freeze", "step"):
            assert app.check_action(action, ()) is False
        assert "kill" not in {b.binding.action for b in app.active_bindings.values()}
        for key in ("k", "x", "o", "p", "y", "a", "z", "n"):
            await pilot.press(key)
            assert not isinstance(app.screen, ConfirmScreen | PolicyScreen)
        await settle(pilot)
        assert {r["cmd"] for r in lab.requests} <= {"snapshot", "table"}
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert not any(t.startswith(("Kill", "Crash", "Start traffic", "Full sync")) for t in titles)
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        assert not any("Kill" in d for _, d, _ in app.screen.rows)
        await pilot.press("escape", "q")
        await pilot.pause()

    app = drive(scenario, viewer=True)
    assert app.return_value == "keep"


def test_a_viewer_pressing_an_action_key_is_told_why_nothing_happens() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        keys = {"k": "kill", "x": "crash", "o": "offline", "p": "policy", "y": "full sync",
                "a": "traffic", "z": "freeze", "n": "step", "d": "demos"}
        for key, what in keys.items():
            app.clear_notifications()
            await pilot.press(key)
            await pilot.pause()
            said = [n.message for n in app._notifications]
            assert said == [f"{what} refused: {ConsoleApp.REFUSAL}"], (key, said)
            assert "viewer" in said[0] and "syncwall console" in said[0]
            assert not isinstance(app.screen, ConfirmScreen | PolicyScreen)
        await settle(pilot)
        assert {r["cmd"] for r in lab.requests} <= {"snapshot", "table"}, "and nothing was sent"
        footer_keys = {b.binding.key for b in app.active_bindings.values() if b.binding.show}
        assert not footer_keys & set(keys), "the footer still hides them"

    drive(scenario, viewer=True)


def test_the_operator_is_not_told_of_a_refusal() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("n")  # nothing frozen: the step does not apply, silently as before
        await pilot.pause()
        assert not any("refused" in n.message for n in app._notifications)
        assert app.check_action("refused", ("kill",)) is False

    drive(scenario)


def test_help_is_generated_from_the_bindings() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        rows = {d: (k, enabled) for k, d, enabled in app.screen.rows}
        assert rows["Kill"] == ("k", True)
        assert rows["Revive"] == ("r", False)  # listed, marked as not applying now
        assert "Sync timeline" in rows and "Pause" in rows
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    drive(scenario)


def test_quit_asks_whether_to_keep_the_lab() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitScreen) and app.is_running
        await pilot.press("q", "s")
        await pilot.pause()

    app = drive(scenario)
    assert app.return_value == "stop"


def test_space_pauses_refresh() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        await pilot.press("space")
        assert app.paused and "PAUSED" in text_of(app, "#headline")
        polls = len(sent(lab, "snapshot"))
        app._tick()
        await settle(pilot)
        assert len(sent(lab, "snapshot")) == polls
        await pilot.press("space")
        await settle(pilot)
        assert not app.paused and len(sent(lab, "snapshot")) == polls + 1

    drive(scenario)


def test_presentation_mode_uses_the_high_contrast_theme_at_100x30() -> None:
    async def scenario(pilot: Pilot[Any], app: ConsoleApp, lab: FakeLab) -> None:
        assert app.theme == "syncwall-present"
        assert app.screen.has_class("-present")
        headline = app.query_one("#headline", Static)
        assert headline.size.height == 3
        assert all(c.region.width >= 30 for c in app.query(NodeCard))
        assert conn_table(app).size.height >= 5  # rows still visible under the cards

    drive(scenario, present=True, size=(100, 30))
