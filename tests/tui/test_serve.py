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
