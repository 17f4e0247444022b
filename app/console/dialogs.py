"""Modal dialogs: confirm a dangerous action, quit (keep or stop the lab), policy, traffic, help."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from app.console import requests
from netns import api

POLICIES = api.POLICIES


class ConfirmScreen(ModalScreen[bool]):
    """Ask before doing something that breaks things on purpose."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__(classes="dialog-screen")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe choice is the default

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class QuitScreen(ModalScreen[str | None]):
    """On quit: leave the lab running for later, stop it, or stay."""

    BINDINGS = [
        Binding("k", "choose('keep')", "Keep running"),
        Binding("s", "choose('stop')", "Stop the lab"),
        Binding("escape,c", "choose('')", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Leaving the console. What about the lab?", classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Keep it running (k)", variant="primary", id="keep")
                yield Button("Stop it (s)", variant="error", id="stop")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id if event.button.id in ("keep", "stop") else "")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)


class PolicyScreen(ModalScreen[api.SetPolicy | None]):
    """Pick the sync policy and its interval."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, policy: str, interval_ms: int) -> None:
        super().__init__(classes="dialog-screen")
        self.policy = policy
        self.interval_ms = interval_ms

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Sync policy", classes="dialog-question")
            with RadioSet(id="policy"):
                for name in POLICIES:
                    yield RadioButton(name, value=name == self.policy, id=f"policy-{name}")
            yield Label("Interval (ms), for periodic and hybrid")
            yield Input(str(self.interval_ms), id="interval", type="integer")
            yield Label("", id="policy-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel (esc)", id="cancel")

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#apply")
    @on(Input.Submitted, "#interval")
    def _apply(self) -> None:
        pressed = self.query_one(RadioSet).pressed_button
        policy = str(pressed.label) if pressed is not None else self.policy
        text = self.query_one("#interval", Input).value
        lo, hi = api.INTERVAL_MS
        if not text.isdigit() or not lo <= int(text) <= hi:
            self.query_one("#policy-error", Label).update(f"interval: a whole number, {lo}..{hi} ms")
            return
        self.dismiss(requests.policy(policy, int(text)))


TRAFFIC = requests.TRAFFIC


class TrafficScreen(ModalScreen[api.TrafficStart | None]):
    """Start a workload."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Start traffic", classes="dialog-question")
            for ident, label, _ in TRAFFIC:
                yield Button(label, id=f"traffic-{ident}", classes="traffic-choice")
            yield Button("Cancel (esc)", id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        for ident, _, req in TRAFFIC:
            if event.button.id == f"traffic-{ident}":
                self.dismiss(req)
                return
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys, generated from the bindings of the screen underneath."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, rows: list[tuple[str, str, bool]], extra: list[str]) -> None:
        super().__init__(classes="dialog-screen")
        self.rows = rows
        self.extra = extra

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Label("Keys", classes="dialog-question")
            with VerticalScroll(), Grid(id="help-grid"):
                for key, description, enabled in self.rows:
                    yield Static(key, classes="help-key")
                    yield Static(
                        description if enabled else f"[dim]{description} (not now)[/dim]",
                        classes="help-desc",
                    )
            for line in self.extra:
                yield Static(line, classes="help-extra")

    def action_close(self) -> None:
        self.dismiss(None)
