"""The fake lab keeps the control API's contract (docs/interfaces.md) and behaves like a cluster."""

from __future__ import annotations

from app.console.fake import FakeClock, FakeLab


def lab_and_clock(**kw: object) -> tuple[FakeLab, FakeClock]:
    clock = FakeClock()
    return FakeLab(clock, **kw), clock  # type: ignore[arg-type]


def nodes(lab: FakeLab) -> dict[str, dict[str, object]]:
    return {n["name"]: n for n in lab.request({"cmd": "snapshot"})["nodes"]}


def test_snapshot_and_table_have_the_documented_fields() -> None:
    lab, _ = lab_and_clock()
    snap = lab.request({"cmd": "snapshot"})
    assert snap["ok"] and {"lab", "daemon_pid", "policy", "interval_ms", "sync_port", "buckets",
                           "time", "headline", "nodes", "flows", "events"} <= set(snap)
    node = snap["nodes"][0]
    assert {"name", "state", "buckets", "backs_up", "backups", "sync_address", "own", "backup",
            "common", "held", "sync_msgs_per_s", "pid", "counters"} <= set(node)
    assert {"name", "kind", "workload", "src", "dst", "health", "bytes", "node",
            "age_s", "detail", "longest_pause_ms"} <= set(snap["flows"][0])
    assert {"t", "node", "kind", "text", "key", "peers", "latency_ms"} <= set(snap["events"][0])
    table = lab.request({"cmd": "table", "node": "n1", "scope": "own", "filter": "",
                         "limit": 10})
    assert len(table["rows"]) == 10 and table["total"] > 10
    assert {"key", "proto", "src", "dst", "state", "owner", "synced_to", "age_s", "trigger",
            "version", "bucket"} <= set(table["rows"][0])


def test_default_lab_has_cyclic_backups_and_twelve_buckets() -> None:
    lab, _ = lab_and_clock()
    n = nodes(lab)
    assert n["n1"]["backups"] == ["n2"] and n["n1"]["backs_up"] == ["n3"]
    assert n["n2"]["backs_up"] == ["n1"] and n["n3"]["backs_up"] == ["n2"]
    owned = sorted(b for node in n.values() for b in node["buckets"])  # type: ignore[attr-defined]
    assert owned == list(range(1, 13))


def test_kill_fails_at_once_and_the_backup_takes_over_after_detection() -> None:
    lab, clock = lab_and_clock()
    own_n1 = nodes(lab)["n1"]["own"]
    assert lab.request({"cmd": "kill", "node": "n1"}) == {"ok": True}
    assert nodes(lab)["n1"]["state"] == "failed"
    assert nodes(lab)["n1"]["buckets"] == [1, 4, 7, 10]  # not detected yet
    clock.advance(0.2)
    n = nodes(lab)
    assert n["n1"]["buckets"] == [] and n["n2"]["buckets"] == [1, 2, 4, 5, 7, 8, 10, 11]
    snap = lab.request({"cmd": "snapshot"})
    assert snap["headline"] == f"n2 took over {own_n1} connections of n1 in 120 ms · 0 s ago"
    assert any(e["kind"] == "takeover" for e in snap["events"])
    rows = lab.request({"cmd": "table", "node": "n2", "scope": "own", "limit": 5000})["rows"]
    assert sum(r["trigger"] == "node-failed" for r in rows) == own_n1


def test_inapplicable_commands_are_refused_with_a_reason() -> None:
    lab, _ = lab_and_clock()
    reply = lab.request({"cmd": "revive", "node": "n1"})
    assert not reply["ok"] and "only a failed or offline node" in reply["error"]
    assert "no node 'n9'" in lab.request({"cmd": "kill", "node": "n9"})["error"]
    assert not lab.request({"cmd": "policy", "policy": "sometimes"})["ok"]
    assert not lab.request({"cmd": "step"})["ok"]
    assert not lab.request({"cmd": "nonsense"})["ok"]


def test_revive_rejoins_and_takes_its_buckets_back() -> None:
    lab, clock = lab_and_clock()
    lab.request({"cmd": "crash", "node": "n3"})
    clock.advance(0.5)
    lab.request({"cmd": "revive", "node": "n3"})
    assert nodes(lab)["n3"]["state"] == "joining"
    clock.advance(0.5)
    n = nodes(lab)
    assert n["n3"]["state"] == "active" and n["n3"]["buckets"] == [3, 6, 9, 12]
    assert n["n3"]["backs_up"] == ["n2"]
    assert "n3 rejoined" in lab.request({"cmd": "snapshot"})["headline"]


def test_offline_hands_over_with_no_loss() -> None:
    lab, _ = lab_and_clock()
    total = len(lab.conns)
    lab.request({"cmd": "offline", "node": "n2"})
    n = nodes(lab)
    assert n["n2"]["state"] == "offline" and n["n3"]["buckets"] == [2, 3, 5, 6, 8, 9, 11, 12]
    assert len(lab.conns) == total
    assert "left gracefully" in lab.request({"cmd": "snapshot"})["headline"]


def test_frozen_channel_releases_one_message_per_step() -> None:
    lab, _ = lab_and_clock()
    lab.request({"cmd": "freeze"})
    lab.request({"cmd": "traffic", "action": "start", "kind": "ftp"})
    snap = lab.request({"cmd": "snapshot"})
    assert snap["frozen"] and snap["queued"] == 2  # the control connection and the expectation
    assert sum(n["held"] for n in snap["nodes"]) == 1  # the packet waiting on the expectation
    step = lab.request({"cmd": "step"})
    assert step["queued"] == 1
    assert lab.request({"cmd": "resume"})["released"] == 1
    snap = lab.request({"cmd": "snapshot"})
    assert not snap["frozen"] and sum(n["held"] for n in snap["nodes"]) == 0


def test_bursts_come_and_go_and_the_table_window_holds() -> None:
    lab, clock = lab_and_clock(connections=3000)
    before = len(lab.conns)
    lab.request({"cmd": "traffic", "action": "start", "kind": "burst", "count": 500})
    assert len(lab.conns) == before + 500
    clock.advance(6.0)
    lab.request({"cmd": "snapshot"})
    assert len(lab.conns) == before
    table = lab.request({"cmd": "table", "node": "n1", "scope": "backup", "limit": 500})
    assert len(table["rows"]) == 500 and table["total"] > 900


def test_every_console_module_is_under_600_lines() -> None:
    """The house rule (files under 600 lines), for the console's own package."""
    from pathlib import Path

    import app.console

    package = Path(app.console.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in package.glob("*.py")}
    assert sizes and all(n < 600 for n in sizes.values()), sizes
