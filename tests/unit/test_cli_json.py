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


def test_status_text_counts_state_beyond_connections(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    node = {"name": "n1", "state": "active", "own": 5, "backup": 4, "common": 2, "held": 0,
            "backups": ["n2"], "backs_up": ["n3"], "buckets": [0, 3],
            "nat": {"own": 3, "backup": 1, "common": 0}, "blocklist": {"own": 1, "backup": 0, "common": 1},
            "users": {"own": 0, "backup": 0, "common": 2}}
    st = {"ok": True, "lab": "x", "daemon_pid": 1, "policy": "hybrid", "interval_ms": 1000,
          "sync_port": 5999, "buckets": 12, "headline": "", "nodes": [node],
          "bucket_spread": {"min": 2, "max": 2, "ratio": 1.0}}
    monkeypatch.setattr(cli, "pick_lab", lambda lab: "x")
    monkeypatch.setattr(cli, "call", lambda lab, req, **kw: dict(st))
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "buckets 12 (2-2 per active node)" in lines[0]
    head, row = lines[1:3]
    cols = dict(zip(head.split()[:10], row.split()[:10], strict=True))
    assert cols["nat"] == "3/1/0" and cols["blocked"] == "1" and cols["users"] == "2", (head, row)


def test_the_bucket_spread_counts_active_nodes_only() -> None:
    from netns.daemon import bucket_spread

    views = [{"state": "active", "buckets": [1, 2, 3, 4, 5]}, {"state": "active", "buckets": [6, 7, 8, 9]},
             {"state": "failed", "buckets": []}, {"state": "active", "buckets": [10, 11, 12]}]
    assert bucket_spread(views) == {"min": 3, "max": 5, "ratio": 1.667}
    assert bucket_spread([{"state": "joining", "buckets": []}])["ratio"] is None
