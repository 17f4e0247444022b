"""The console's fixed choices: its projector theme, which keys act on the lab, how long stars stay."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_downloads_path
from textual.theme import Theme

__all__ = ["CONFIRMS", "DEMO_KEYS", "LAB_ACTIONS", "NODE_STATE_ACTIONS", "PALETTE", "PRESENT_THEME",
           "REFUSED_KEYS", "STAR_PRESENT_S", "STAR_S", "VIEWS", "poll_s", "screenshot_dir",
           "user_downloads_path"]

PRESENT_THEME = Theme(
    name="syncwall-present",
    primary="#3b82f6",
    secondary="#ffffff",
    accent="#ffd700",
    warning="#ffb000",
    error="#ff3b3b",
    success="#00e676",
    foreground="#ffffff",
    background="#000000",
    surface="#0a0a0a",
    panel="#202020",
    dark=True,
)

# Actions that change the lab: hidden in viewer mode (the daemon refuses them from viewers too).
LAB_ACTIONS = frozenset({
    "kill", "crash", "revive", "offline", "policy", "full_sync", "traffic", "traffic_kind",
    "freeze", "step",
})
# A viewer's keys for those actions (and the demos): hidden from its footer and help, they
# still reach the console, which says why nothing happens instead of ignoring the key.
REFUSED_KEYS = (("k", "kill"), ("x", "crash"), ("r", "revive"), ("o", "offline"), ("p", "policy"),
                ("y", "full_sync"), ("a", "traffic"), ("z", "freeze"), ("n", "step"), ("d", "demos"))
NODE_STATE_ACTIONS = {  # action -> node states in which it applies
    "kill": {"active"},
    "crash": {"active"},
    "offline": {"active"},
    "revive": {"failed", "offline"},
}
# The command palette: (action, title, help); a title's {node} is the selected node, and
# traffic_kind stands for one entry per traffic choice ({label}).
PALETTE = (
    ("kill", "Kill {node}", "SIGKILL the selected node"),
    ("crash", "Crash {node}", "cut the selected node's links"),
    ("offline", "Take {node} offline", "graceful leave, no loss"),
    ("revive", "Revive {node}", "restart and rejoin"),
    ("policy", "Sync policy…", "on-demand, periodic or hybrid, and the interval"),
    ("full_sync", "Full sync now", "every node sends all its state"),
    ("freeze", "Freeze / resume the sync channel", "step-through sync"),
    ("step", "Release one sync message", "while frozen"),
    ("traffic_kind", "Start traffic: {label}", "workload"),
    ("demos", "Demos…", "run a scripted demo on this lab"),
    ("demo_next", "Demo: run the next step", "enter or n"),
    ("demo_auto", "Demo: auto-play on / off", "A"),
    ("demo_close", "Demo: close", "puts the lab back"),
)
# The actions that break a node on purpose ask first: (question, yes button, done), of {node}.
CONFIRMS = {
    "kill": ("Kill {node}? Its process gets SIGKILL; its backup must take over.", "Kill {node}",
             "{node} killed"),
    "crash": ("Crash {node}? Its links are cut with no goodbye.", "Crash {node}", "{node} crashed"),
    "offline": ("Take {node} offline gracefully? It hands its buckets over first.", "Offline {node}",
                "{node} went offline"),
}
STAR_S = 10.0
STAR_PRESENT_S = 30.0
# Polls a second: an operator's console 4, a viewer's 1 (a class of browsers must not load the lab).
POLL_S = 0.25
VIEWER_POLL_S = 1.0


def poll_s(viewer: bool) -> float:
    return VIEWER_POLL_S if viewer else POLL_S
VIEWS = ("connections", "timeline", "flows")
# The demo panel's keys: they apply only while it is open, and never to viewers (viewers watch).
DEMO_KEYS = frozenset({"demo_next", "demo_auto", "demo_close"})


def screenshot_dir(run_dir: Path | None) -> Path:
    """~/Downloads when there is one to write to, else the lab's run folder, else here."""
    for place in (user_downloads_path(), run_dir, Path.cwd()):
        if place is not None and place.is_dir() and os.access(place, os.W_OK):
            return place
    return Path.cwd()
