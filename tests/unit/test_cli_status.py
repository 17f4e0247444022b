"""`syncwall status` text: each node's health (ok, degraded, attention), the paths it hears
each peer on, and a SPLIT BRAIN line for a bucket owned by two nodes. The status is in the
daemon's schema (netns/daemon.py node_view); its paths part is sync/paths.py's own status."""

from __future__ import annotations

from typing import Any

import pytest

from app import cli
from sync.paths import Paths

NAMES = ["n1", "n2", "n3"]
KEY = b"lab-key-0123456789abcdef"


def _paths_of(node: str, silent: dict[str, set[str]], fenced: str | None = None) -> dict[str, Any]:
    """`node`'s paths status after every peer probed every path but the ones in `silent`."""
    me = Paths("lab", KEY, node, NAMES, 7, 0.0, grace_s=0.0)
    peers = {n: Paths("lab", KEY, n, NAMES, i + 1, 0.0) for i, n in enumerate(NAMES) if n != node}
    for t in (0.98, 0.99):
        for name, p in peers.items():
            for path in ("sync", "inside", "outside"):
                if path not in silent.get(name, set()):
                    me.receive(path, p.probe(path, t), t)
    for name in peers:
        me.route(name, 1.0)
    st = me.status(1.0)
    st.update(send_errors={}, carrier={"inside": True, "outside": fenced is None},
              degraded=fenced is not None)
    if fenced:
        st["fenced"] = fenced
    return st


def _node(name: str, buckets: list[int], health: str, paths: dict[str, Any],
          state: str = "active") -> dict[str, Any]:
    return {"name": name, "state": state, "intent": "up", "buckets": buckets, "backs_up": [], "backups": [],
            "sync_address": "10.99.0.1", "own": 3, "backup": 2, "common": 0,
            "nat": {"own": 0, "backup": 0}, "blocklist": {"own": 0, "backup": 0, "common": 0},
            "users": {"own": 0, "backup": 0, "common": 0}, "held": 0, "sync_msgs_per_s": 10.0,
            "sync_rate_history": [], "pid": 100, "epoch": 4, "counters": {}, "sync": {},
            "last_takeover": None, "hold_ms_p50": None, "hold_ms_p99": None, "lossless": None,
            "paths": paths, "health": health, "loop": None}


def _status(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ok": True, "lab": "x", "daemon_pid": 1, "policy": "hybrid", "interval_ms": 1000,
            "lossless": True, "sync_port": 5999, "buckets": 12, "headline": "", "nodes": nodes,
            "bucket_spread": {"min": 4, "max": 8, "ratio": 2.0}, "faults": []}


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         st: dict[str, Any]) -> list[str]:
    monkeypatch.setattr(cli, "pick_lab", lambda lab: "x")
    monkeypatch.setattr(cli, "call", lambda lab, req, **kw: dict(st))
    assert cli.main(["status"]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_shows_health_paths_heard_and_no_split_brain_when_each_bucket_has_one_owner(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    st = _status([
        _node("n1", [], "degraded", _paths_of("n1", {"n2": {"outside"}, "n3": {"outside"}},
                                               fenced="outside link down")),
        _node("n2", [1, 2, 4, 5, 7, 8], "ok", _paths_of("n2", {"n1": {"outside", "sync"}})),
        _node("n3", [3, 6, 9, 10, 11, 12], "ok", _paths_of("n3", {"n1": {"outside"}})),
    ])
    lines = _run(monkeypatch, capsys, st)
    head = lines[1].split()
    rows = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    assert head[:3] == ["node", "state", "health"], lines[1]
    assert [rows[n][2] for n in ("n1", "n2", "n3")] == ["degraded", "ok", "ok"], lines
    paths = {ln.split()[1].rstrip(":"): ln for ln in lines if ln.startswith("  paths ")}
    assert "n2 heard on sync,inside (not outside)" in paths["n1"], paths["n1"]
    assert "fenced: outside link down" in paths["n1"]
    assert "n1 heard on inside (not sync,outside), sync via inside" in paths["n2"], paths["n2"]
    assert "n1 heard on sync,inside,outside" not in paths["n3"]
    assert "n2 heard on sync,inside,outside" in paths["n3"], paths["n3"]
    assert not [ln for ln in lines if "SPLIT BRAIN" in ln]


def test_status_names_every_bucket_owned_twice_and_the_attention_health(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    st = _status([
        _node("n1", [1, 2, 3, 4, 7, 10], "ok", _paths_of("n1", {"n2": {"sync"}, "n3": {"sync"}})),
        _node("n2", [2, 5, 8, 11], "ok", _paths_of("n2", {"n1": {"sync"}})),
        _node("n3", [3, 6, 9, 12], "attention", _paths_of("n3", {"n1": {"sync", "inside", "outside"}})),
        _node("n4", [1], "ok", None, state="failed"),  # a failed node's last buckets are no owner
    ])
    lines = _run(monkeypatch, capsys, st)
    assert [ln.strip() for ln in lines if "SPLIT BRAIN" in ln] == [
        "SPLIT BRAIN: bucket 2 owned by n1 and n2", "SPLIT BRAIN: bucket 3 owned by n1 and n3"]
    assert next(ln for ln in lines[2:] if ln.split()[0] == "n3").split()[2] == "attention"
    assert "n1 heard nowhere" in next(ln for ln in lines if ln.startswith("  paths n3:"))
