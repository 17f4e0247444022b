"""The console application: polls the lab through a LabLink and lets the operator act on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from app.console import requests, settings
from app.console.banner import BucketStrip, FaultBanner
from app.console.cards import ClusterView, NodeCard
from app.console.demo import DemoCaption, DemoListScreen, DemoPanel, LockedLink, available_demos
from app.console.dialogs import TRAFFIC, ConfirmScreen, HelpScreen, PolicyScreen, QuitScreen, TrafficScreen
from app.console.link import LabLink, LinkError, RequestRefused, checked
from app.console.model import Scope, empty_hint, takeover_times, takeover_to_follow
from app.console.settings import (
    CONFIRMS,
    DEMO_KEYS,
    LAB_ACTIONS,
    NODE_STATE_ACTIONS,
    PALETTE,
    PRESENT_THEME,
    REFUSED_KEYS,
    STAR_PRESENT_S,
    STAR_S,
    screenshot_dir,
)
from app.console.tables import ConnectionsPane, DiffTable, FlowsPane, TimelinePane
from app.console.task_panel import TaskPanel
from netns import api

log = logging.getLogger(__name__)

class ConsoleApp(App[str]):
    """The syncwall console. `run()` returns "keep" or "stop": what to do with the lab."""

    CSS_PATH = "console.tcss"
    TITLE = "syncwall"
    WATCH_LABEL = "viewer"  # the header's word for a console that only watches (a replay says so)

    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit_console", "Quit"),
        Binding("space", "toggle_pause", "Pause", show=False),  # in the help and the headline
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("c", "view('connections')", "Connections", show=False),
        Binding("t", "view('timeline')", "Sync timeline", show=False),
        Binding("f", "view('flows')", "Flows board", show=False),
        Binding("left_square_bracket", "scope(-1)", "Scope ←", show=False, key_display="["),
        Binding("right_square_bracket", "scope(1)", "Scope →", show=False, key_display="]"),
        Binding("s", "sort", "Sort", show=False),
        Binding("k", "kill", "Kill"),
        Binding("x", "crash", "Crash", show=False),  # in the help and the palette: the footer fits 100
        Binding("r", "revive", "Revive"),
        Binding("o", "offline", "Offline", show=False),
        Binding("p", "policy", "Policy"),
        Binding("y", "full_sync", "Sync all", show=False),
        Binding("a", "traffic", "Traffic"),
        Binding("z", "freeze", "Freeze"),
        Binding("n", "step", "Step"),
        Binding("escape", "close_filter", "Close filter", show=False),
        # The demo's keys. While a demo is open, check_action hides the sync step (n) and the
        # filter's escape so that these win; enter must also beat the focused table's own
        # enter, so it is a priority binding that lets the key through when no demo is open.
        Binding("d", "demos", "Demos"),
        # Short words: with a demo open the footer carries these too and must fit 100 columns.
        Binding("n", "demo_next", "Next step", tooltip="run the demo's next step"),
        Binding("enter", "demo_next", "Next demo step", priority=True, show=False),
        Binding("A", "demo_auto", "Auto", tooltip="auto-play the demo on or off"),
        Binding("escape", "demo_close", "Close"),
        *(Binding(str(i), f"select_node({i})", f"Node {i}", show=False) for i in range(1, 10)),
        # last: a viewer's lab keys, once the actions themselves were hidden (check_action)
        *(Binding(key, f"refused('{action}')", "Refused", show=False) for key, action in REFUSED_KEYS),
    ]
    # Why a viewer's action key does nothing (a replay says its own reason).
    REFUSAL = ("this console is a viewer: it watches the lab and cannot act on it "
               "(the operator's `syncwall console` can)")

    def __init__(
        self,
        link: LabLink,
        *,
        viewer: bool = False,
        present: bool = False,
        poll_interval_s: float | None = 0.25,
        table_limit: int = 500,
        clock: Callable[[], float] = time.monotonic,
        demo: str | None = None,
        run_dir: Path | None = None,
        exercise_root: Path | None = None,  # where exercise sessions are kept (tests: a tmp dir)
    ) -> None:
        super().__init__()
        self.run_dir = run_dir or getattr(link, "run_dir", None)  # screenshots without ~/Downloads
        self.link = link
        # The pollers, the action workers and a demo's steps share one link from several threads.
        self._link_lock = threading.Lock()
        self.demo_link = LockedLink(link, self._link_lock)
        self.demo_at_start = demo
        self.demo_panel = DemoPanel()
        self.task_panel = TaskPanel(exercise_root)
        self.viewer = viewer
        self.present = present
        self.poll_interval_s = poll_interval_s
        self.table_limit = table_limit
        self.clock = clock
        self.paused = False
        self.snapshot: dict[str, Any] = {}
        self.link_trouble = ""
        self._poll_worker: Worker[Any] | None = None
        self._binding_state: tuple[Any, ...] = ()
        self._headline_text = ""
        self._followed: Any = None  # the takeover the table last followed (its time)
        self._listing_keys = False  # the help is asking check_action: list every key
        if present:
            self.register_theme(PRESENT_THEME)

    # ---- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Static("connecting to the lab…", id="headline")
        yield FaultBanner()
        yield BucketStrip()
        yield DemoCaption()
        yield ClusterView()
        with Horizontal(id="main"):
            with TabbedContent(id="views", initial="connections"):
                with TabPane("Connections", id="connections"):
                    yield ConnectionsPane()
                with TabPane("Sync timeline", id="timeline"):
                    yield TimelinePane()
                with TabPane("Flows", id="flows"):
                    yield FlowsPane()
            yield self.demo_panel
            yield self.task_panel
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # Stars on adopted rows: long enough to point at them; on a projector, to talk them over.
        self.query_one(ConnectionsPane).stars.hold_s = STAR_PRESENT_S if self.present else STAR_S
        if self.present:
            self.theme = PRESENT_THEME.name
            self.screen.add_class("-present")
        self.sub_title = self.WATCH_LABEL if self.viewer else ""
        self.poll()
        if self.poll_interval_s:
            self.set_interval(self.poll_interval_s, self._tick)
        self.query_one("#conn-table", DiffTable).focus()
        if self.demo_at_start and not self.viewer:
            self.open_demo(self.demo_at_start)

    @property
    def selected_node(self) -> str:
        return self.query_one(ClusterView).selected

    def node_state(self, name: str | None = None) -> str:
        name = name or self.selected_node
        for node in self.snapshot.get("nodes", []):
            if node.get("name") == name:
                return str(node.get("state", ""))
        return ""

    # ---- polling ---------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.paused:
            return
        if self._poll_worker is not None and self._poll_worker.is_running:
            return  # a slow lab: do not pile requests up behind it
        self.poll()

    def poll(self) -> None:
        shown = self.query_one(TabbedContent).active == "connections"  # 500 rows cost every poll
        self._poll_worker = self._fetch(self.query_one(ConnectionsPane).request(self.table_limit * shown))

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _fetch(self, table_request: dict[str, Any]) -> None:
        snapshot = checked(self.demo_link.request(requests.SNAPSHOT.to_dict()))
        table: dict[str, Any] | None = None
        if table_request.get("node"):
            try:
                table = checked(self.demo_link.request(table_request))
            except RequestRefused as exc:
                table = {"ok": True, "node": table_request["node"],
                         "scope": table_request["scope"], "rows": [], "total": 0,
                         "note": str(exc)}
        if get_current_worker().is_cancelled:
            return
        try:
            # textual types call_from_thread's callback as returning Never
            self.call_from_thread(self._apply, snapshot, table,  # type: ignore[arg-type]
                                  table_request)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.exception("unusable reply from the lab")
            raise LinkError(f"the lab sent a reply the console cannot read ({exc!r}); "
                            "is the console as new as the lab daemon?") from exc

    async def _apply(self, snapshot: dict[str, Any], table: dict[str, Any] | None,
                     asked: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot
        now_s = self.clock()
        if self.link_trouble:
            self.notify("The lab answers again.", title="link")
            self.link_trouble = ""
        cluster = self.query_one(ClusterView)
        first = not cluster.selected
        lab_now = snapshot.get("time")
        lab_now = float(lab_now) if isinstance(lab_now, (int, float)) else None
        nodes, buckets = list(snapshot.get("nodes", [])), int(snapshot.get("buckets") or 0)
        await cluster.update_nodes(nodes, lab_now, buckets)
        self.query_one(FaultBanner).show(list(snapshot.get("faults") or []))
        self.query_one(BucketStrip).show(nodes, buckets)
        conns = self.query_one(ConnectionsPane)
        if first and cluster.selected:
            conns.show(node=cluster.selected)
        conns.down = frozenset(str(n.get("name")) for n in snapshot.get("nodes", [])
                               if n.get("state") in ("failed", "offline"))
        conns.takeovers = takeover_times(snapshot.get("nodes", []))
        conns.lab_now = lab_now or 0.0
        if table is not None:
            conns.apply(table, now_s, asked)
        conns.hint(empty_hint(self.snapshot, viewer=self.viewer))
        self.task_panel.show(snapshot, now_s)
        self._follow_takeover()
        self._apply_hidden_views()
        self._update_headline()
        title = f"syncwall · lab {snapshot.get('lab', '?')}"
        sub_title = (f"{self.WATCH_LABEL + ' · ' if self.viewer else ''}policy {snapshot.get('policy', '?')} "
                     f"{snapshot.get('interval_ms', '?')} ms")
        if (title, sub_title) != (self.title, self.sub_title):  # the header re-lays out on change
            self.title, self.sub_title = title, sub_title
        state = (tuple(n.get("state") for n in snapshot.get("nodes", [])), snapshot.get("frozen"),
                 snapshot.get("queued", 0) > 0, self.selected_node)
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    def _follow_takeover(self) -> None:
        """After the node on screen fails or leaves, move the table to its adopter."""
        head = self.snapshot.get("headline_event") or {}
        follow = takeover_to_follow(head, self.selected_node, self.node_state, self._followed)
        if follow is None:
            return
        self._followed = head.get("t")
        if follow:
            self._select(follow[0])
            others = f" (and {', '.join(follow[1:])}: press its number)" if follow[1:] else ""
            self.notify(f"following the takeover: {head['nodes'][-1]}'s connections are on "
                        f"{follow[0]} now{others}", title="takeover", timeout=6)

    def _apply_hidden_views(self, shown: bool = False) -> None:
        """Timeline and flows are refreshed only while on screen (and when switched to); the
        flows board once a second (it cost a quarter of a core at 4 redraws a second)."""
        active = self.query_one(TabbedContent).active
        if active == "timeline":
            events = list(self.snapshot.get("events", []))
            lab_now = self.snapshot.get("time")
            self.query_one(TimelinePane).apply(events, None if shown else self.clock(),
                                               float(lab_now) if isinstance(lab_now, (int, float)) else None)
        elif active == "flows":
            self.query_one(FlowsPane).apply(list(self.snapshot.get("flows", [])),
                                            None if shown else self.clock())

    @on(TabbedContent.TabActivated, "#views")
    def _view_shown(self) -> None:
        self._apply_hidden_views(shown=True)

    def _update_headline(self) -> None:
        parts: list[str] = []
        if self.link_trouble:
            parts.append(f"⚠ {self.link_trouble}")
        if self.paused:
            parts.append("⏸ PAUSED (space resumes)")
        if self.snapshot.get("frozen"):
            parts.append(f"❄ SYNC FROZEN: {self.snapshot.get('queued', 0)} queued (n steps, z resumes)")
        # Built by the lab (netns/headline.py) from its events, its age included.
        headline = str(self.snapshot.get("headline") or "")
        kind = (self.snapshot.get("headline_event") or {}).get("kind", "takeover" if headline else "quiet")
        if headline and kind != "quiet":  # "all nodes in step" only when nothing else is said
            parts.append(headline)
        box = self.query_one("#headline", Static)
        text = "  ·  ".join(parts) or "all nodes in step"
        if text != self._headline_text:  # fixed height: no layout pass needed
            self._headline_text = text
            box.update(text, layout=False)
        box.set_class(kind != "quiet", "-takeover")
        box.set_class(kind == "fault", "-fault")
        box.set_class(bool(self.link_trouble), "-trouble")

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        if event.worker.group == "poll":
            message = f"lab unreachable: {error}" if isinstance(error, LinkError) else str(error)
            if message != self.link_trouble:
                self.notify(message, title="polling the lab", severity="error")
            self.link_trouble = message
            self._update_headline()
            return
        title = "the lab refused" if isinstance(error, RequestRefused) else "link error"
        self.notify(str(error), title=title, severity="error", timeout=8)

    # ---- acting on the lab -----------------------------------------------------------------

    @work(thread=True, group="action", exit_on_error=False)
    def send(self, req: api.Request, done: str) -> dict[str, Any]:
        reply = checked(self.demo_link.request(req.to_dict()))
        self.call_from_thread(self._acted, done, reply)
        return reply

    def _acted(self, done: str, reply: dict[str, Any]) -> None:
        released = reply.get("released")
        if isinstance(released, dict) and released.get("text"):
            done = f"{done}: {released['text']}"  # step-through: say which message went
        self.notify(done, title="done", timeout=3)
        self.poll()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "refused":  # a viewer's key: told why, never listed
            return self.viewer and not self._listing_keys
        if action in LAB_ACTIONS and self.viewer:
            return False
        if action == "demos":  # not while one is open: its footer needs the room
            return not self.viewer and (self._listing_keys or not self.demo_panel.is_open)
        if action in DEMO_KEYS:
            # False, not None: the key then falls through to the table, the filter, a dialog
            return self._demo_keys_apply()
        if action in ("step", "close_filter") and self._demo_keys_apply():
            return False  # n and escape belong to the open demo
        # A key that does not apply now leaves the footer (which must fit 100 columns); the
        # help still lists it, marked as not applying.
        idle = None if self._listing_keys else False
        if action in NODE_STATE_ACTIONS:
            return True if self.node_state() in NODE_STATE_ACTIONS[action] else idle
        if action == "step":
            return True if self.snapshot.get("frozen") else idle
        if action == "select_node":
            return (bool(parameters) and int(str(parameters[0])) <= len(
                self.snapshot.get("nodes", []))) or None
        return True

    def _allowed(self, action: str) -> bool:
        if self.check_action(action, ()) is True:
            return True
        if self.viewer:
            self.notify(f"{action.replace('_', ' ')} refused: {self.REFUSAL}", title="viewer",
                        severity="warning")
        else:
            self.notify(f"{action.replace('_', ' ')} does not apply now", severity="warning")
        return False

    def action_refused(self, action: str) -> None:
        self._allowed(action)  # not allowed (a viewer's): says why

    def _confirmed(self, question: str, yes: str, msg: api.Request, done: str) -> None:
        def answer(ok: bool | None) -> None:
            if ok:
                self.send(msg, done)

        self.push_screen(ConfirmScreen(question, yes), answer)

    def _confirm_node_action(self, action: str) -> None:
        node = self.selected_node
        if self._allowed(action):
            question, yes, done = (text.format(node=node) for text in CONFIRMS[action])
            self._confirmed(question, yes, requests.node_action(action, node), done)

    def action_kill(self) -> None:
        self._confirm_node_action("kill")

    def action_crash(self) -> None:
        self._confirm_node_action("crash")

    def action_offline(self) -> None:
        self._confirm_node_action("offline")

    def action_revive(self) -> None:
        node = self.selected_node
        if self._allowed("revive"):
            self.send(requests.node_action("revive", node), f"{node} is rejoining")

    def action_full_sync(self) -> None:
        if self._allowed("full_sync"):
            self.send(requests.FULL_SYNC, "full sync sent")

    def action_policy(self) -> None:
        if not self._allowed("policy"):
            return

        def chosen(req: api.SetPolicy | None) -> None:
            if req:
                self.send(req, f"policy {req.policy}, {req.interval_ms} ms")

        self.push_screen(PolicyScreen(str(self.snapshot.get("policy", "hybrid")),
                                      int(self.snapshot.get("interval_ms", 1000))), chosen)

    def action_traffic(self) -> None:
        if not self._allowed("traffic"):
            return

        def chosen(req: api.TrafficStart | None) -> None:
            if req:
                self.send(req, f"{req.kind} traffic started")

        self.push_screen(TrafficScreen(), chosen)

    def action_traffic_kind(self, kind: str) -> None:
        if not self._allowed("traffic_kind"):
            return
        for ident, _, req in TRAFFIC:
            if ident == kind:
                self.send(req, f"{kind} traffic started")

    def action_freeze(self) -> None:
        if not self._allowed("freeze"):
            return
        if self.snapshot.get("frozen"):
            self.send(requests.RESUME, "sync channel resumed")
        else:
            self.send(requests.FREEZE, "sync channel frozen: n releases one message")

    def action_step(self) -> None:
        if self._allowed("step"):
            self.send(requests.STEP, "one sync message released")

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        # Textual saves to ~/Downloads, which a lab VM often lacks: the save then fails.
        where = Path(path) if path else screenshot_dir(self.run_dir)
        if not path and where != settings.user_downloads_path():
            self.notify(f"no ~/Downloads here: the screenshot goes to {where}", title="Screenshot")
        return super().deliver_screenshot(filename, str(where), time_format)

    # ---- demos -----------------------------------------------------------------------------

    def _demo_keys_apply(self) -> bool:
        return (not self.viewer and self.demo_panel.is_open
                and not isinstance(self.screen, ModalScreen)
                and not isinstance(self.focused, Input))

    def open_demo(self, name: str) -> None:
        """Open the demo panel on `name`, run against the lab this console is attached to."""
        self.demo_panel.open(name, self.demo_link, str(self.snapshot.get("lab", "")))

    def action_demos(self) -> None:
        if self.viewer:
            return

        def chosen(name: str | None) -> None:
            if name:
                self.open_demo(name)

        self.push_screen(DemoListScreen(available_demos()), chosen)

    def action_demo_next(self) -> None:
        self.demo_panel.next_step()

    def action_demo_auto(self) -> None:
        self.demo_panel.toggle_auto()

    def action_demo_close(self) -> None:
        self.demo_panel.close()
        self.set_class(False, "-demo-wide")

    # ---- navigation ------------------------------------------------------------------------

    def action_select_node(self, number: int) -> None:
        nodes = [str(n.get("name")) for n in self.snapshot.get("nodes", [])]
        if 1 <= number <= len(nodes):
            self._select(nodes[number - 1])

    def _select(self, name: str) -> None:
        self.query_one(ClusterView).select(name)
        self.query_one(ConnectionsPane).show(node=name)
        self.refresh_bindings()

    @on(NodeCard.Selected)
    def _card_clicked(self, event: NodeCard.Selected) -> None:
        self._select(event.name)

    @on(ConnectionsPane.ViewChanged)
    def _view_changed(self) -> None:
        if not self.paused:
            self.poll()

    def action_view(self, view: str) -> None:
        self.query_one(TabbedContent).active = view
        table = {"connections": "#conn-table", "timeline": "#event-table",
                 "flows": "#flow-table"}[view]
        self.query_one(table, DiffTable).focus()

    def action_scope(self, step: int) -> None:
        pane = self.query_one(ConnectionsPane)
        scopes = list(Scope)
        pane.show(scope=scopes[(scopes.index(pane.scope) + step) % len(scopes)])
        self.action_view("connections")

    def action_sort(self) -> None:
        focused = self.focused
        table = focused if isinstance(focused, DiffTable) else self.query_one("#conn-table",
                                                                               DiffTable)
        self.notify(table.cycle_sort(), timeout=2)

    def action_filter(self) -> None:
        """`/` filters the view on screen: the timeline by node and kind, else the connections."""
        if self.query_one(TabbedContent).active == "timeline":
            self.query_one(TimelinePane).open_filter()
            return
        self.action_view("connections")
        self.query_one(ConnectionsPane).open_filter()

    def action_close_filter(self) -> None:
        if self.query_one(TabbedContent).active == "timeline":
            self.query_one(TimelinePane).close_filter()
        else:
            self.query_one(ConnectionsPane).close_filter()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._update_headline()
        if not self.paused:
            self.poll()

    def action_help(self) -> None:
        rows: list[tuple[str, str, bool]] = []
        seen: set[str] = set()
        self._listing_keys = True  # check_action: every key, marked when it does not apply now
        try:
            # the console's own keys first, then those of the focused widget (cursor keys...)
            bindings = sorted(self.screen.active_bindings.values(),
                              key=lambda a: (a.node is not self, a.binding.action == "quit"))
            for active in bindings:
                binding = active.binding
                if binding.action.startswith("select_node") or binding.description in seen:
                    continue
                if self.check_action(binding.action.split("(")[0], ()) is False:
                    continue  # hidden here (viewer mode): not listed either
                seen.add(binding.description)
                rows.append((self.get_key_display(binding), binding.description, active.enabled))
        finally:
            self._listing_keys = False
        extra = ["1..9 select a node's card and its tables; click a card or a column header too",
                 "\\[ and ] switch own / backup / common; ctrl+p opens the command palette"]
        self.push_screen(HelpScreen(rows, extra))

    async def action_quit(self) -> None:
        """ctrl+q too asks what to do with the lab."""
        self.action_quit_console()

    def action_quit_console(self) -> None:
        if self.viewer:
            self.exit("keep")
            return

        def chosen(choice: str | None) -> None:
            if choice:
                self.exit(choice)

        self.push_screen(QuitScreen(), chosen)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for action, title, help_text in PALETTE:
            if self.check_action(action, ()) is not True:
                continue
            if action == "traffic_kind":
                for ident, label, _ in TRAFFIC:
                    yield SystemCommand(title.format(label=label), help_text,
                                        partial(self.action_traffic_kind, ident))
            else:
                yield SystemCommand(title.format(node=self.selected_node), help_text,
                                    getattr(self, f"action_{action}"))


def run_console(link: LabLink, viewer: bool = False, present: bool = False,
                demo: str | None = None) -> str:
    """Run the console until the operator quits; returns "keep" or "stop" (the lab's fate).

    With `demo`, the console opens with that demo's panel (not for viewers: viewers watch).
    A demo still open at the end is put back (its traffic stopped, the sync policy restored).
    """
    app = ConsoleApp(link, viewer=viewer, present=present, demo=demo, poll_interval_s=settings.poll_s(viewer))
    result = app.run()
    app.demo_panel.finish()
    return "stop" if result == "stop" and not viewer else "keep"
