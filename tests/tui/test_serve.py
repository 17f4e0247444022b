"""`syncwall serve` only ever publishes viewer consoles, on localhost by default."""

from __future__ import annotations

from typing import Any

import pytest

from app import serve as serve_module


def test_the_served_command_is_always_a_viewer() -> None:
    assert serve_module.viewer_command("syncwall console") == "syncwall console --viewer"
    assert serve_module.viewer_command("syncwall console --viewer") == "syncwall console --viewer"
    assert (serve_module.viewer_command("python -m app.console --fake")
            == "python -m app.console --fake --viewer")
    with pytest.raises(ValueError, match="console command"):
        serve_module.viewer_command("  ")


def test_serve_binds_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    import textual_serve.server

    seen: dict[str, Any] = {}

    def fake_serve(self: textual_serve.server.Server, debug: bool = False) -> None:
        seen.update(command=self.command, host=self.host, port=self.port)

    monkeypatch.setattr(textual_serve.server.Server, "serve", fake_serve)
    serve_module.serve(8123, "syncwall console")
    assert seen == {"command": "syncwall console --viewer", "host": "localhost", "port": 8123}


def _fetch(server: Any, *paths: str) -> list[tuple[int, str]]:
    """GET each path from the server's aiohttp app (no socket beyond the test's own)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    async def run() -> list[tuple[int, str]]:
        app = await server._make_app()
        async with TestClient(TestServer(app)) as client:
            out = []
            for p in paths:
                r = await client.get(p)
                out.append((r.status, await r.text()))
            return out

    return asyncio.run(run())


def test_beyond_localhost_only_the_url_with_the_token_opens_a_console() -> None:
    server = serve_module.make_server(8124, "syncwall console", "0.0.0.0", "s3cret")
    (none, wrong, ws_plain, ws_wrong, good, static) = _fetch(
        server, "/", "/?token=nope", "/ws", "/ws/nope", "/?token=s3cret", "/static/js/textual.js")
    for status, text in (none, wrong, ws_plain, ws_wrong):
        assert status == 403 and "needs the viewer token" in text and "?token=" in text
    assert good[0] == 200
    # The page's websocket is on the address the browser used, with the token in its path.
    assert 'data-session-websocket-url="ws://127.0.0.1:' in good[1] and '/ws/s3cret"' in good[1]
    assert static[0] == 200  # the page's own scripts need no token
    assert server.command == "syncwall console --viewer"


def test_localhost_needs_no_token_and_a_wider_host_always_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    (page,) = _fetch(serve_module.make_server(8125, "syncwall console"), "/")
    assert page[0] == 200 and '/ws"' in page[1]
    made: dict[str, Any] = {}

    class Fake:
        def serve(self) -> None:
            pass

    def fake_make(port: int, command: str, host: str = "localhost", token: str | None = None) -> Fake:
        made.update(host=host, token=token)
        return Fake()

    monkeypatch.setattr(serve_module, "make_server", fake_make)
    serve_module.serve(8126, "syncwall console", "0.0.0.0")
    assert made["host"] == "0.0.0.0" and made["token"] and len(made["token"]) >= 16
    serve_module.serve(8126, "syncwall console", "127.0.0.1")
    assert made["token"] is None
    assert serve_module.share_url("0.0.0.0", 8000, "t") == "http://THIS-MACHINE:8000/?token=t"
    assert serve_module.share_url("::1", 8000, None) == "http://[::1]:8000/"


def test_serve_finds_the_sessions_it_must_end() -> None:
    """What serve's shutdown signals: every process below it (a session is `sh -c` + console)."""
    import os
    import subprocess

    p = subprocess.Popen(["sh", "-c", "sleep 30; true"])
    try:
        import time

        deadline = time.monotonic() + 5
        while len(found := serve_module.descendants(os.getpid())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.pid in found and len(found) >= 2  # the shell and its sleep
    finally:
        p.kill()
        p.wait()
