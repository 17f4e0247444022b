"""Replay a lab recording in the console: a LabLink over the recording at a playback cursor, no root."""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from app.console import app as console_app
from app.console.app import ConsoleApp
from app.console.model import event_key
from app.console.tables import TimelinePane
from netns.recorder import SCOPES, Recording, State, table_channel

REFUSED = "replay: actions are disabled"
READ_ONLY = frozenset({"status", "snapshot", "table"})
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
JUMP_S = 10.0
LOST_HEALTH = frozenset({"broken", "failed"})


def fmt_clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"


def parse_clock(text: str) -> float:
    """Seconds from the start: "90", "1:30" or "01:30.5"."""
    text = text.strip()
    if not text:
        raise ValueError("give a time, e.g. 90 or 1:30")
    minutes, _, seconds = text.rpartition(":")
    return (float(minutes) * 60 if minutes else 0.0) + float(seconds)


def _matches(row: dict[str, Any], needle: str) -> bool:
    return needle in " ".join(str(v) for v in row.values()).lower()


class ReplayLink:
    """Answers the console's read requests from the recording as it was at `cursor` (unix time)."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.t_start = recording.t_start
        self.t_end = recording.t_end
        self._times = recording.event_times
        self._lock = threading.Lock()  # the console's pollers run in threads
        self.cursor = recording.segments[0].t_first  # the first moment with something to show

    @property
    def offset_s(self) -> float:
        return self.cursor - self.t_start

    def seek(self, t: float) -> float:
        with self._lock:
            self.cursor = min(max(t, self.t_start), self.t_end)
            return self.cursor

    def step_event(self, direction: int) -> float:
        """To the next (direction > 0) or previous event's time; stays put at either end."""
        if direction > 0:
            i = bisect.bisect_right(self._times, self.cursor)
            target = self._times[i] if i < len(self._times) else self.cursor
        else:
            i = bisect.bisect_left(self._times, self.cursor) - 1
            target = self._times[i] if i >= 0 else self.cursor
        return self.seek(target)

    def _state(self) -> tuple[float, State]:
        return self.state_at(self.cursor)

    def state_at(self, t: float) -> tuple[float, State]:
        with self._lock:  # the recording's cache is not for two threads at once
            return self.recording.state_at(t)

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd not in READ_ONLY:
            return {"ok": False, "error": REFUSED}
        _t, state = self._state()
        snap = dict(state.get("snapshot", {}))
        snap["ok"] = True
        if cmd == "status":
            snap.pop("flows", None)
            return snap
        if cmd == "snapshot":
            since = float(msg.get("since") or "-inf")  # 0 means from the start, as for the daemon
            hi = bisect.bisect_right(self._times, self.cursor)
            lo = bisect.bisect_right(self._times, since, 0, hi)
            evs = self.recording.events[lo:hi]
            snap["events"] = evs[-int(msg.get("max_events", 500)):]
            return snap
        node, scope = str(msg.get("node", "")), str(msg.get("scope", "own"))
        if scope not in SCOPES:
            return {"ok": False, "error": f"unknown scope {scope!r}: use own, backup or common"}
        reply = state.get(table_channel(node, scope))
        if reply is None:
            return {"ok": True, "node": node, "scope": scope, "rows": [], "total": 0,
                    "note": "not recorded at this moment"}
        rows = list(reply.get("rows", []))
        total = int(reply.get("total", len(rows)))
        needle = str(msg.get("filter", "")).lower()
        if needle:
            rows = [r for r in rows if _matches(r, needle)]
            total = len(rows)
        out = {k: v for k, v in reply.items() if k not in ("rows", "total")}
        return {**out, "ok": True, "node": node, "scope": scope,
                "rows": rows[:int(msg.get("limit", 500))], "total": total}


def summarize(recording: Recording) -> dict[str, Any]:
    """What a recording holds, in numbers: `syncwall replay FILE --json`."""
    nodes: list[str] = []
    worst: dict[str, str] = {}
    last_counters: dict[tuple[str, str], int] = {}
    holds = {"held": 0, "held_dropped": 0, "released_by_ack": 0, "released_by_timeout": 0}
    p99 = 0.0
    captures = 0
    for _t, state in recording.captures():
        captures += 1
        snap = state.get("snapshot", {})
        for n in snap.get("nodes", []):
            name = str(n.get("name"))
            if name not in nodes:
                nodes.append(name)
            counters = n.get("counters") or {}
            for k in holds:
                v = int(counters.get(k, 0) or 0)
                before = last_counters.get((name, k), 0)
                holds[k] += v - before if v >= before else v  # a revived node counts from 0
                last_counters[(name, k)] = v
            p99 = max(p99, float(n.get("hold_ms_p99") or 0))
        for f in snap.get("flows", []):
            name = str(f.get("name"))
            if f.get("health") in LOST_HEALTH or name not in worst:
                worst[name] = str(f.get("health"))
    takeovers = [e for e in recording.events if e.get("kind") == "takeover"]
    # The daemon notes a takeover with its timing (detect_to_accept_ms) and the headline's text;
    # an engine's own takeover event (any change of its buckets: the first assignment, a
    # handback after a revive) carries neither, and counts as a bucket move.
    real = [e for e in takeovers if "detect_to_accept_ms" in e and "took over" in str(e.get("text", ""))]
    lost = sorted(n for n, h in worst.items() if h in LOST_HEALTH)
    return {
        "lab": recording.header.get("lab"),
        "format_version": recording.header.get("version"),
        "start": recording.t_start,
        "duration_s": round(recording.t_end - recording.t_start, 3),
        "nodes": nodes,
        "segments": len(recording.segments),
        "captures": captures,
        "events": len(recording.events),
        "takeovers": len(real),
        "bucket_moves": sum("detect_to_accept_ms" not in e for e in takeovers),
        "takeover_texts": [str(e.get("text")) for e in real],
        "flows": len(worst),
        "flows_lost": len(lost),
        "lost_flows": lost,
        "holds": {**holds, "hold_ms_p99_max": round(p99, 1)},
        "problem": recording.problem,
    }


def _conn_text(row: dict[str, Any]) -> str:
    return f"{row.get('proto', '?')} {row.get('src', '?')} → {row.get('dst', '?')}"


def compare(a: State, b: State) -> dict[str, Any]:
    """What each node's tables gained and lost from moment `a` to moment `b`, and which
    connections changed owner (e.g. at a takeover): {"nodes": {node: {scope: {...}}}, "moved": [...]}."""
    nodes: dict[str, dict[str, Any]] = {}
    owner_a: dict[str, str] = {}
    owner_b: dict[str, str] = {}
    texts: dict[str, str] = {}
    names = sorted({ch.split()[1] for ch in (*a, *b) if ch.startswith("table ")})
    for node in names:
        for scope in SCOPES:
            ch = table_channel(node, scope)
            rows_a = {r["key"]: r for r in a.get(ch, {}).get("rows", [])}
            rows_b = {r["key"]: r for r in b.get(ch, {}).get("rows", [])}
            for k, r in (*rows_a.items(), *rows_b.items()):
                texts.setdefault(k, _conn_text(r))
            if scope == "own":
                owner_a.update(dict.fromkeys(rows_a, node))
                owner_b.update(dict.fromkeys(rows_b, node))
            gained = sorted(k for k in rows_b if k not in rows_a)
            lost = sorted(k for k in rows_a if k not in rows_b)
            nodes.setdefault(node, {})[scope] = {
                "before": len(rows_a), "after": len(rows_b), "gained": gained, "lost": lost}
    moves: dict[tuple[str, str], list[str]] = {}
    for k, was in owner_a.items():
        now = owner_b.get(k)
        if now is not None and now != was:
            moves.setdefault((was, now), []).append(k)
    moved = [{"from": f, "to": t, "count": len(ks), "keys": sorted(ks)}
             for (f, t), ks in sorted(moves.items())]
    return {"nodes": nodes, "moved": moved, "texts": texts}


def compare_lines(result: dict[str, Any], shown: int = 5) -> list[str]:
    """`compare` in words, for the compare screen."""
    lines: list[str] = []
    texts = result["texts"]
    for move in result["moved"]:
        lines.append(f"[b]{move['count']} connections moved {move['from']} → {move['to']}[/b]")
    if not result["moved"]:
        lines.append("no connection changed owner")
    for node, scopes in result["nodes"].items():
        parts = [f"{scope} {d['before']}→{d['after']} (+{len(d['gained'])} -{len(d['lost'])})"
                 for scope, d in scopes.items()]
        lines.append(f"\n[b]{node}[/b]  " + "  ".join(parts))
        for scope, d in scopes.items():
            for sign, keys in (("+", d["gained"]), ("-", d["lost"])):
                for k in keys[:shown]:
                    lines.append(f"  {sign} {scope:6} {escape(texts.get(k, k))}")
                if len(keys) > shown:
                    lines.append(f"  {sign} {scope:6} … and {len(keys) - shown} more")
    return lines


class CompareScreen(ModalScreen[None]):
    """Two marked moments side by side: what each node's tables gained and lost between them."""

    DEFAULT_CSS = """
    CompareScreen { align: center middle; }
    CompareScreen > VerticalScroll { width: 90%; height: 80%; border: thick $accent;
                                     padding: 0 1; background: $surface; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("m", "close", "Close", show=False)]

    def __init__(self, title: str, lines: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(f"[b]{self.title_text}[/b]  (esc closes)", id="compare-title")
            yield Static("\n".join(self.lines), id="compare-body")

    def action_close(self) -> None:
        self.dismiss(None)


class GoToScreen(ModalScreen[float | None]):
    """`g`: ask for a time from the start of the recording."""

    DEFAULT_CSS = """
    GoToScreen { align: center middle; }
    GoToScreen > Vertical { width: 50; height: auto; border: thick $accent; padding: 1 2;
                            background: $surface; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, duration_s: float) -> None:
        super().__init__()
        self.duration_s = duration_s

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Go to a time from the start (0 .. {fmt_clock(self.duration_s)}), "
                         "e.g. 90 or 1:30")
            yield Input(placeholder="mm:ss", id="goto")
            yield Static("", id="goto-error")

    @on(Input.Submitted, "#goto")
    def _submitted(self, event: Input.Submitted) -> None:
        try:
            self.dismiss(parse_clock(event.value))
        except ValueError:
            self.query_one("#goto-error", Static).update(f"not a time: {event.value!r}")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ReplayApp(ConsoleApp):
    """The console on a recording: every view as live, playback keys, every action refused."""

    # a CSS path is relative to the module of the class that sets it: point at the console's own
    CSS_PATH = str(Path(console_app.__file__).with_name("console.tcss"))
    DEFAULT_CSS = """
    #replay-bar { height: 1; background: $warning 30%; padding: 0 1; }
    """
    BINDINGS = [
        Binding("space", "play", "Play/pause"),
        Binding("left", "event(-1)", "Event ←", priority=True, show=False),
        Binding("right", "event(1)", "Event →", priority=True, show=False),
        Binding("shift+left", "jump(-1)", "-10 s", priority=True),
        Binding("shift+right", "jump(1)", "+10 s", priority=True),
        Binding("g", "goto", "Go to"),
        Binding("left_square_bracket", "speed(-1)", "Slower", key_display="["),
        Binding("right_square_bracket", "speed(1)", "Faster", key_display="]"),
        Binding("m", "mark", "Mark/compare"),
    ]

    def __init__(self, link: ReplayLink, *, play_tick_s: float | None = 0.1,
                 present: bool = False) -> None:
        super().__init__(link, viewer=True, present=present, poll_interval_s=None,
                         clock=lambda: link.cursor)
        self.replay = link
        self.playing = False
        self.speed = 1.0
        self.play_tick_s = play_tick_s
        self._last_tick = time.monotonic()
        self.mark: float | None = None  # the first of two moments to compare

    WATCH_LABEL = "replay"
    REFUSAL = "this is a replay of a recording: nothing in it can be changed"

    def on_mount(self) -> None:
        # just above the footer (a second widget docked at the bottom would cover it)
        self.mount(Static("", id="replay-bar"), before=self.query_one(Footer))
        if self.play_tick_s:
            self.set_interval(self.play_tick_s, self._play_tick)
        self._show_bar()
        if self.replay.recording.problem:
            self.notify(self.replay.recording.problem, title="recording", severity="warning",
                        timeout=10)

    def _show_bar(self) -> None:
        link = self.replay
        state = f"▶ {self.speed:g}x" if self.playing else f"⏸ {self.speed:g}x"
        self.query_one("#replay-bar", Static).update(
            f"REPLAY {fmt_clock(link.offset_s)} / {fmt_clock(link.t_end - link.t_start)}  {state}  ·  "
            "actions are disabled in a replay  ·  space play  ←/→ event  shift+←/→ 10 s  g go to  "
            "[ ] speed  m compare"
            + (f"  ·  mark A at {fmt_clock(self.mark - link.t_start)}" if self.mark is not None
               else ""), layout=False)

    def _moved(self) -> None:
        self._show_bar()
        self.poll()

    def _play_tick(self) -> None:
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        if not self.playing:
            return
        if self.replay.seek(self.replay.cursor + dt * self.speed) >= self.replay.t_end:
            self.playing = False
        if self._poll_worker is not None and self._poll_worker.is_running:
            self._show_bar()  # a slow poll: do not pile requests up behind it
            return
        self._moved()

    def _follow_takeover(self) -> None:
        """Live, the table follows a takeover to the adopter; in a replay the user scrubs back and
        forth over the same takeover, so the table stays on the node the user chose."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("event", "jump") and isinstance(self.focused, Input):
            return False  # the filter box keeps its cursor keys
        return super().check_action(action, parameters)

    def action_play(self) -> None:
        if not self.playing and self.replay.cursor >= self.replay.t_end:
            self.replay.seek(self.replay.t_start)  # play again from the start
        self.playing = not self.playing
        self._last_tick = time.monotonic()
        self._show_bar()

    def action_event(self, direction: int) -> None:
        self.playing = False
        self.replay.step_event(direction)
        self._moved()

    def action_jump(self, direction: int) -> None:
        self.replay.seek(self.replay.cursor + direction * JUMP_S)
        self._moved()

    def action_speed(self, step: int) -> None:
        i = min(range(len(SPEEDS)), key=lambda k: abs(SPEEDS[k] - self.speed))
        self.speed = SPEEDS[min(max(i + step, 0), len(SPEEDS) - 1)]
        self._show_bar()

    def action_mark(self) -> None:
        """First press: mark this moment. Second press: compare it with this one."""
        link = self.replay
        if self.mark is None:
            self.mark = link.cursor
            self._show_bar()
            return
        first, self.mark = self.mark, None
        a_t, b_t = sorted((first, link.cursor))
        _t, a = link.state_at(a_t)
        _t, b = link.state_at(b_t)
        self._show_bar()
        title = f"from {fmt_clock(a_t - link.t_start)} to {fmt_clock(b_t - link.t_start)}"
        self.push_screen(CompareScreen(title, compare_lines(compare(a, b))))

    def action_goto(self) -> None:
        def chosen(offset: float | None) -> None:
            if offset is not None:
                self.seek_offset(offset)

        self.push_screen(GoToScreen(self.replay.t_end - self.replay.t_start), chosen)

    def seek_offset(self, offset_s: float) -> None:
        """Move the cursor to `offset_s` seconds from the start and show that moment."""
        self.replay.seek(self.replay.t_start + offset_s)
        self._moved()

    @on(DataTable.RowSelected, "#event-table")
    def _event_selected(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        for e in self.query_one(TimelinePane).events:
            if event_key(e) == key:
                self.playing = False
                self.replay.seek(float(e["t"]))
                self._moved()
                return


def run_replay(path: str, present: bool = False) -> None:
    ReplayApp(ReplayLink(Recording.open(path)), present=present).run()
