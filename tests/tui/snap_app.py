"""The console wired to a fake lab with a frozen clock, at a fixed size, for snapshot tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.worker import WorkerState

from app.console.app import ConsoleApp
from app.console.fake import FakeClock, FakeLab

SIZE = (120, 40)
PRESENT_SIZE = (100, 30)


def build_app(*, viewer: bool = False, present: bool = False, demo: str | None = None,
              exercise_root: Path | None = None, **lab_args: Any) -> ConsoleApp:
    """The console on a fresh fake lab; it polls once at start and then only when told.
    With `demo`, it opens on that demo's panel (as `syncwall demo NAME` does). Exercise sessions
    are looked for in `exercise_root` (by default an empty folder: no task panel)."""
    clock = FakeClock()
    lab = FakeLab(clock, **lab_args)
    return ConsoleApp(lab, viewer=viewer, present=present, poll_interval_s=None, clock=clock,
                      demo=demo, exercise_root=exercise_root or NO_SESSIONS)


NO_SESSIONS = Path("/nonexistent/syncwall-exercises")  # never the machine's own sessions


def lab_of(app: ConsoleApp) -> FakeLab:
    assert isinstance(app.link, FakeLab)
    return app.link


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until every request to the lab has been answered and shown."""
    # not workers.wait_for_complete(): it raises when an exclusive poll replaced an older one
    for _ in range(500):
        await pilot.pause()
        if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in pilot.app.workers):
            await pilot.pause()
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the console's requests to the fake lab did not finish")


async def advance(pilot: Pilot[Any], dt_s: float) -> None:
    """Move the fake lab's clock on, then show what the lab looks like now."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    lab = lab_of(app)
    assert isinstance(lab.clock, FakeClock)
    lab.clock.advance(dt_s)
    await settle(pilot)
    app.poll()
    await settle(pilot)


app = build_app()

if __name__ == "__main__":
    app.run()
