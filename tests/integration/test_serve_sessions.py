"""`syncwall serve`'s sessions end with their browser and with serve: a real serve process, real
websocket sessions (as a browser opens them), real console processes behind them (on the fake
lab: no network is needed, but consoles cost CPU, so this runs with the other lab tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.serve import descendants
from netns.lab import pid_alive as running
from tests.integration.labtools import running_lab, wait_for

pytestmark = [pytest.mark.integration]

# A console that stays busy and deaf: what the bug report saw (a viewer at 50% of a core that
# ignored SIGTERM). It speaks textual-serve's prelude so that serve takes it for an app.
DEAF = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "sys.stdout.write('__GANGLION__\\n'); sys.stdout.flush(); "
        "[time.sleep(0.05) for _ in iter(int, 1)]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COMMANDS = {
    "console": [sys.executable, "-m", "app.console", "--fake", "--connections", "50"],
    "lab": [sys.executable, "-m", "app.cli", "--lab", "default", "console"],  # as cmd_serve runs it
    "deaf": [sys.executable, "-c", DEAF],
}


@pytest.fixture(params=list(COMMANDS))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`serve` as its own process, serving the fake-lab console, the console of a real lab with
    traffic, or a console that ignores the quit message and SIGTERM; it is gone afterwards, with
    everything it started."""
    with contextlib.ExitStack() as stack:
        if request.param == "lab":
            if os.geteuid() != 0:
                pytest.skip("a real lab needs root")
            stack.enter_context(running_lab(up_args=("--traffic",)))
        yield from _serve(shlex.join(COMMANDS[request.param]))


def _serve(command: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    code = f"from app.serve import serve; serve({port}, {command!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path.cwd(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("serve to listen", lambda: _listening(port), 20)
        yield proc, port
    finally:
        left = descendants(proc.pid)
        proc.kill()
        proc.wait()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _open_session(port: int, serve_pid: int) -> tuple[Any, Any, list[int]]:
    """A browser's websocket session; returns (client, websocket, the console's pids) once the
    console has started below serve."""
    import aiohttp

    client = aiohttp.ClientSession()
    ws = await client.ws_connect(f"http://127.0.0.1:{port}/ws?width=100&height=30")
    await ws.send_json(["resize", {"width": 100, "height": 30}])
    deadline = time.monotonic() + 20
    while not (pids := descendants(serve_pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pids, "no console started for the session"
    return client, ws, pids


def _gone(pids: list[int], timeout_s: float) -> None:
    wait_for(f"console processes {pids} to end", lambda: not any(running(p) for p in pids),
             timeout_s, 0.05)


def test_a_closed_browser_ends_its_console_and_serve_leaves_none(
        served: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = served

    async def close_one(abrupt: bool) -> list[int]:
        client, ws, pids = await _open_session(port, proc.pid)
        await asyncio.sleep(1.0)  # the console runs and draws
        if abrupt:
            # A browser that vanishes (a killed tab, a dropped laptop): no close frame, the
            # connection just goes while the console is still drawing.
            ws._conn.transport.abort()
        else:
            await ws.close()
        await client.close()
        return pids

    for abrupt in (False, True):
        pids = asyncio.run(close_one(abrupt))
        _gone(pids, 6)  # quit at once, SIGTERM after ~3 s, then SIGKILL

    async def open_one() -> tuple[Any, Any, list[int]]:
        return await _open_session(port, proc.pid)

    # A session still open when serve gets Ctrl+C: serve ends it, and goes.
    loop = asyncio.new_event_loop()
    try:
        client, _ws, pids = loop.run_until_complete(open_one())
        loop.run_until_complete(asyncio.sleep(1.0))
        proc.send_signal(signal.SIGINT)
        wait_for("serve to exit after Ctrl+C", lambda: proc.poll() is not None, 15, 0.05)
        _gone(pids, 1)
        loop.run_until_complete(client.close())
    finally:
        loop.close()
