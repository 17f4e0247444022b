"""Modal dialogs: confirm a dangerous action, quit (keep or stop the lab), policy, traffic, help."""

from __future__ import annotations

from typing import TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from app.console import requests
from netns import api

POLICIES = api.POLICIES
ResultT = TypeVar("ResultT")


class ChoiceScreen(ModalScreen[ResultT]):
    """A dialog of choices: 1..9 pick the Nth (as its label says), the arrows move the focus
    between them. A focused list or text box keeps its own arrows (and an input its digits)."""

    BINDINGS = [
        *(Binding(str(i), f"pick({i})", f"Choice {i}", show=False) for i in range(1, 10)),
        Binding("up,left", "move(-1)", "Previous", show=False),
        Binding("down,right", "move(1)", "Next", show=False),
    ]

    def choices(self) -> list[Widget]:
        """The options the number keys choose, in order."""
        return list(self.query(Button))

    def action_pick(self, number: int) -> None:
        choices = self.choices()
        if not 1 <= number <= len(choices):
            return
        chosen = choices[number - 1]
        if isinstance(chosen, Button):
            chosen.press()
        elif isinstance(chosen, RadioButton):
            chosen.value = True  # its RadioSet releases the others

    def action_move(self, step: int) -> None:
        if step > 0:
            self.focus_next()
        else:
            self.focus_previous()


class ConfirmScreen(ChoiceScreen[bool]):
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
                yield Button(f"{self.yes} (y, 1)", variant="error", id="yes")
                yield Button("Cancel (n, 2)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe choice is the default

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class QuitScreen(ChoiceScreen[str | None]):
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
                yield Button("Keep it running (k, 1)", variant="primary", id="keep")
                yield Button("Stop it (s, 2)", variant="error", id="stop")
                yield Button("Cancel (esc, 3)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id if event.button.id in ("keep", "stop") else "")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)


class PolicyScreen(ChoiceScreen[api.SetPolicy | None]):
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
                for i, name in enumerate(POLICIES, 1):
                    yield RadioButton(f"{name} ({i})", value=name == self.policy, id=f"policy-{name}")
            yield Label("Interval (ms), for periodic and hybrid")
            yield Input(str(self.interval_ms), id="interval", type="integer")
            yield Label("", id="policy-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel (esc)", id="cancel")

    def choices(self) -> list[Widget]:
        return list(self.query(RadioButton))  # 1..3 pick a policy; Apply applies it

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#apply")
    @on(Input.Submitted, "#interval")
    def _apply(self) -> None:
        pressed = self.query_one(RadioSet).pressed_button
        policy = str(pressed.id).removeprefix("policy-") if pressed is not None else self.policy
        text = self.query_one("#interval", Input).value
        lo, hi = api.INTERVAL_MS
        if not text.isdigit() or not lo <= int(text) <= hi:
            self.query_one("#policy-error", Label).update(f"interval: a whole number, {lo}..{hi} ms")
            return
        self.dismiss(requests.policy(policy, int(text)))


TRAFFIC = requests.TRAFFIC


class TrafficScreen(ChoiceScreen[api.TrafficStart | None]):
    """Start a workload: click one, or press its number."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Start traffic", classes="dialog-question")
            for i, (ident, label, _) in enumerate(TRAFFIC, 1):
                yield Button(f"{label} ({i})", id=f"traffic-{ident}", classes="traffic-choice")
            yield Button("Cancel (esc)", id="cancel")

    def choices(self) -> list[Widget]:
        return list(self.query(".traffic-choice"))

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
