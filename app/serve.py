"""`syncwall serve`: viewer consoles in a browser, through textual-serve. Localhost only by
default; `--host ADDR` listens beyond it, and then only a URL with the serve's token opens a
session (students open it from their own machines; viewers only, whatever the URL)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import shlex
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netns.lab import pid_alive

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

VIEWER_FLAG = "--viewer"
QUIT_GRACE_S = 3.0  # a session's console gets this long to quit when asked, then SIGTERM
TERM_GRACE_S = 1.0  # and this long after SIGTERM, then SIGKILL
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
REFUSED = ("syncwall serve: this address needs the viewer token of its URL "
           "(http://HOST:PORT/?token=...). Ask whoever runs `syncwall serve` for the full address "
           "it printed.")


def viewer_command(command: str) -> str:
    """The console command each browser session runs, forced into viewer mode.

    A browser tab must never be able to kill nodes, whatever command it was given.
    """
    words = shlex.split(command)
    if not words:
        raise ValueError("serve needs the console command to run, e.g. 'syncwall console'")
    if VIEWER_FLAG not in words:
        words.append(VIEWER_FLAG)
    return shlex.join(words)


def is_local(host: str) -> bool:
    """Whether `host` only listens on this machine (no token needed there)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_ok(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def share_url(host: str, port: int, token: str | None) -> str:
    """The address to hand out (an unspecified host is this machine's own address)."""
    shown = "THIS-MACHINE" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def session_class() -> type[Any]:
    """textual-serve's AppService, with a console that must end when its session does.

    textual-serve asks the console to quit and then waits for it for ever: a console that is
    busy or deaf (one was seen at 50% of a core, ignoring SIGTERM, 3 minutes after its browser
    closed) outlived its session. Here each console runs in its own process group (the shell
    and what it starts), and `stop` escalates: quit, then SIGTERM after QUIT_GRACE_S, then
    SIGKILL after TERM_GRACE_S more.
    """
    from textual_serve.app_service import AppService

    class Session(AppService):
        async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
            self._process = process = await asyncio.create_subprocess_shell(
                self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._build_environment(width, height),
                start_new_session=True)
            self._stdin = process.stdin
            return process

        @property
        def pgid(self) -> int | None:
            return self._process.pid if self._process is not None else None

        async def stop(self) -> None:
            task, process = self._task, self._process
            if task is None or process is None:
                return
            self._task = None
            await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
            await self.send_meta({"type": "quit"})
            for sig, grace in ((signal.SIGTERM, QUIT_GRACE_S), (signal.SIGKILL, TERM_GRACE_S)):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(process.wait()), grace)
                if process.returncode is not None and not group_alive(process.pid):
                    break
                log.info("session console (group %d) still running: %s", process.pid, sig.name)
                signal_group(process.pid, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), TERM_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return Session


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (signal 0 finds zombies too, so
    the group's members are read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def make_server(port: int, command: str, host: str = "localhost", token: str | None = None) -> Any:
    """A textual-serve Server for viewer consoles; with a token, every page and session must
    carry it (the page in `?token=`, its websocket in the path `/ws/TOKEN`)."""
    import aiohttp_jinja2
    from aiohttp import web
    from textual_serve.server import Server, to_int

    run = viewer_command(command)
    session = session_class()
    live: dict[Any, web.WebSocketResponse] = {}  # the sessions open now, and their browsers

    class ViewerServer(Server):
        async def _make_app(self) -> web.Application:
            app: web.Application = await super()._make_app()
            if token is not None:
                app.router.add_get("/ws/{token}", self.handle_websocket, name="websocket-token")
                app.middlewares.append(_guard(token))
            return app

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: web.Request) -> dict[str, Any]:
            # The page's own address, not `host`: a browser elsewhere cannot reach 0.0.0.0, and
            # the websocket carries the token in its path (textual.js appends its own query).
            base = f"{request.scheme}://{request.host}"
            ws = ("wss" if request.scheme == "https" else "ws") + f"://{request.host}/ws"
            try:
                font = int(request.query.get("fontsize", "16"))
            except ValueError:
                font = 16
            return {
                "font_size": font,
                "app_websocket_url": ws + (f"/{token}" if token is not None else ""),
                "config": {"static": {"url": f"{base}/static/"}},
                "application": {"name": self.title},
            }

        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            # textual-serve's own, with a session that ends its console for certain.
            ws = web.WebSocketResponse(heartbeat=15)
            width = to_int(request.query.get("width", "80"), 80)
            height = to_int(request.query.get("height", "24"), 24)
            await ws.prepare(request)
            service = session(self.command, write_bytes=ws.send_bytes, write_str=ws.send_str,
                              close=ws.close, download_manager=self.download_manager,
                              debug=self.debug)
            live[service] = ws
            try:
                await service.start(width, height)
                await self._process_messages(ws, service)
            except asyncio.CancelledError:
                await ws.close()
            except Exception as error:  # one session's failure must not end serve
                log.exception(error)
            finally:
                try:
                    await asyncio.shield(service.stop())
                finally:
                    live.pop(service, None)
            return ws

        async def on_shutdown(self, app: web.Application) -> None:
            # Sessions end with serve: aiohttp would wait for every open browser to go away
            # (its websocket handlers), and a console whose browser is gone must not stay.
            # Each console is asked to quit and then signalled (Session.stop), each browser is
            # let go (its handler then returns), and whatever is left below serve is killed.
            await asyncio.gather(*(s.stop() for s in list(live)), return_exceptions=True)
            await asyncio.gather(*(ws.close() for ws in list(live.values())), return_exceptions=True)
            end_all(descendants(os.getpid()))

        async def on_startup(self, app: web.Application) -> None:
            self.console.print(f"Serving viewer consoles ({run!r}) on {share_url(host, port, token)}")
            if token is not None:
                self.console.print("Only that address, with its token, opens a console.")
            self.console.print("\n[cyan]Press Ctrl+C to quit")

    return ViewerServer(run, host=host, port=port, title="syncwall (viewer)")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc's children lists), children first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(x) for x in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def end_all(pids: list[int], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM `pids`, and SIGKILL those still there after `grace_s` (serve's last sweep)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _guard(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    from aiohttp import web

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        path = request.path
        if path == "/":
            ok = token_ok(request.query.get("token"), token)
        elif path == "/ws" or path.startswith("/ws/"):
            ok = token_ok(request.match_info.get("token"), token)
        else:
            ok = True  # static files: the page's scripts and fonts, nothing of the lab
        if not ok:
            log.info("refused %s from %s: no or wrong token", path, request.remote)
            raise web.HTTPForbidden(text=REFUSED + "\n")
        return await handler(request)

    return guard


def serve(port: int, command: str, host: str = "localhost", token: str | None = None) -> None:
    """Serve viewer consoles at http://host:port until interrupted (Ctrl+C). A host beyond
    this machine gets a token (a fresh random one unless given)."""
    if not is_local(host) and token is None:
        token = secrets.token_urlsafe(16)
    log.info("serving %r on %s", command, share_url(host, port, token))
    make_server(port, command, host, token).serve()
