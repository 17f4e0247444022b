"""The real console on a real lab, driven like a person would: tmux send-keys, capture-pane."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.labtools import running_lab, sw, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

LAB = "tmuxe2e"
SOCKET = "syncwall-e2e"  # our own tmux server: nothing else's sessions are touched


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True,
                          check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", "console")


def see(what: str, pred: Callable[[str], bool], timeout_s: float = 15) -> str:
    last = [""]

    def ready() -> str | None:
        last[0] = screen()
        return last[0] if pred(last[0]) else None

    try:
        shot: str = wait_for(what, ready, timeout_s, 0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; the screen was:\n{last[0]}") from None
    return shot


@contextmanager
def console_on(lab: str) -> Iterator[None]:
    """The real console on `lab` in our own tmux server, 120x40; the server goes afterwards."""
    # COLUMNS/LINES from the test runner would override the terminal's real size.
    cmd = f"cd {Path.cwd()} && env -u COLUMNS -u LINES {sys.executable} -m app.cli --lab {lab} console"
    try:
        tmux("-f", "/dev/null", "new-session", "-d", "-s", "console", "-x", "120", "-y", "40", cmd)
        yield
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[None]:
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(f'name = "{LAB}"\n')
    with running_lab(LAB, lab_file):
        try:
            yield
        finally:
            subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)


def test_console_shows_the_cluster_and_a_keyboard_kill_moves_connections_to_the_backup(lab: None) -> None:
    sw("traffic", "start", "tcp", "--flows", "24", "--lab", LAB)
    # COLUMNS/LINES from the test runner would override the terminal's real size.
    cmd = f"cd {Path.cwd()} && env -u COLUMNS -u LINES {sys.executable} -m app.cli --lab {LAB} console"
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "console", "-x", "120", "-y", "40", cmd)
    shot = see("three active node cards", lambda s: s.count("ACTIVE") == 3 and "n1" in s and "n3" in s)
    assert "buckets 4 of 12: 1 4 7 10" in shot
    see("n1's connections in its table", lambda s: "established" in s and "198.18.1.10" in s)

    tmux("send-keys", "-t", "console", "1")
    time.sleep(0.5)
    tmux("send-keys", "-t", "console", "k")
    see("the kill confirmation", lambda s: "Kill n1?" in s)
    tmux("send-keys", "-t", "console", "y")
    killed_at = time.monotonic()

    # Two seconds after the kill, with no key pressed, one look (the "done when"): n1
    # failed, the headline names n2 taking over n1's connections, the table followed the
    # takeover to n2, and every row n2 adopted wears a star.
    time.sleep(max(0.0, killed_at + 2.0 - time.monotonic()))
    shot = see("two seconds after the kill: n1 failed, n2's takeover headline, n2's table starred",
               lambda s: "n1 ✖ FAILED" in s and "n2 took over" in s and "of n1" in s
               and "n2 · own" in s and "n2 ★" in s, timeout_s=0.5)
    looked_s = time.monotonic() - killed_at
    assert looked_s <= 2.5, f"the screen was looked at {looked_s:.2f} s after the kill"
    took = re.search(r"n2 took over (\d+) connections? of n1", shot)
    assert took, shot
    assert shot.count("n2 ★") == int(took.group(1)), shot
    assert "buckets 8 of 12: 1 2 4 5 7 8 10 11" in shot

    tmux("send-keys", "-t", "console", "q")
    see("the quit dialog", lambda s: "Keep it running" in s)
    tmux("send-keys", "-t", "console", "k")
    wait_for("the console to exit", lambda: subprocess.run(
        ["tmux", "-L", SOCKET, "has-session", "-t", "console"], capture_output=True).returncode != 0, 10)
    assert sw("status", "--lab", LAB).returncode == 0, "keep: the lab still runs after the console quits"
