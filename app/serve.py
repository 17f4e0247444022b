"""`syncwall serve`: viewer consoles in a browser, through textual-serve. Localhost only by
default; `--host ADDR` listens beyond it, and then only a URL with the serve's token opens a
session (students open it from their own machines; viewers only, whatever the URL)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import shlex
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

VIEWER_FLAG = "--viewer"
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


def make_server(port: int, command: str, host: str = "localhost", token: str | None = None) -> Any:
    """A textual-serve Server for viewer consoles; with a token, every page and session must
    carry it (the page in `?token=`, its websocket in the path `/ws/TOKEN`)."""
    import aiohttp_jinja2
    from textual_serve.server import Server

    run = viewer_command(command)

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

        async def on_shutdown(self, app: web.Application) -> None:
            # Sessions end with serve: aiohttp would wait for every open browser to go away
            # (its websocket handlers), and a console whose browser is gone must not stay.
            for pid in descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

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
