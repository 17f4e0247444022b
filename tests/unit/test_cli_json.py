"""Every command offers --json; `policy` and `lossless` printed nothing on stdout with it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app import cli
from netns import api


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> list[api.Request]:
    """The daemon's replies to the two requests, and what the command asked (no lab)."""
    asked: list[api.Request] = []

    def call(lab: str, req: api.Request, timeout_s: float = 10.0) -> dict[str, Any]:
        asked.append(req)
        if isinstance(req, api.SetPolicy):
            return {"ok": True, "policy": req.policy, "interval_ms": req.interval_ms or 200}
        return {"ok": True, "lossless": True}

    monkeypatch.setattr(cli, "call", call)
    monkeypatch.setattr(cli, "pick_lab", lambda lab: "x")
    return asked


@pytest.mark.parametrize("argv, key, value", [
    (["policy", "periodic", "--interval-ms", "50", "--json"], "interval_ms", 50),
    (["lossless", "on", "--json"], "lossless", True),
])
def test_json_goes_to_stdout(daemon: list[api.Request], capsys: pytest.CaptureFixture[str],
                             argv: list[str], key: str, value: object) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[key] == value
    assert out.err == ""
    assert len(daemon) == 1


def test_without_json_a_sentence_on_stderr(daemon: list[api.Request],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "hybrid"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "policy hybrid" in out.err
