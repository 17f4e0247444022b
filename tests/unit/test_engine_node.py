"""The node process without NFQUEUE or root: it joins, answers its control requests, and stops."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from engine.node import Node, NodeConfig


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path) -> NodeConfig:
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    raw = {
        "node": "n1", "lab": "t", "lab_id": "t1", "key_file": str(key),
        "nodes": [["n1", "127.0.0.1", _free_udp_port()]], "buckets": 4, "backups": 1,
        "policy": "hybrid", "interval_ms": 500, "differential": True, "heartbeat_ms": 10,
        "miss_limit": 3, "rules": [{"name": "all", "action": "accept"}], "queue_num": 9,
        "control_socket": str(tmp_path / "n1.sock"), "hold_timeout_ms": 150,
    }
    path = tmp_path / "n1.json"
    path.write_text(json.dumps(raw))
    return NodeConfig.load(path)


async def _ask(path: str, req: dict[str, object]) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(json.dumps(req).encode() + b"\n")
    await writer.drain()
    reply: dict[str, object] = json.loads(await reader.readline())
    writer.close()
    return reply


def test_a_lone_node_joins_answers_status_and_stops(tmp_path: Path) -> None:
    cfg = _config(tmp_path)

    seen: dict[str, object] = {}

    async def check(node: Node) -> None:
        try:
            await ask_all(node)
        finally:
            node.stop_event.set()  # whatever happened, the node stops

    async def ask_all(node: Node) -> None:
        status: dict[str, object] = {}
        for _ in range(500):
            await asyncio.sleep(0.01)
            if Path(cfg.control_socket).exists():
                status = await _ask(cfg.control_socket, {"cmd": "status"})
                if status.get("state") == "active" and status.get("buckets"):
                    break
        assert (await _ask(cfg.control_socket, {"cmd": "nope"}))["ok"] is False
        # Synthetic connections are for the benches' labs (bench_fill) only.
        fill = await _ask(cfg.control_socket, {"cmd": "fill", "count": 10})
        assert fill["ok"] is False and "bench" in str(fill["error"]) and not node.engine.table.conns
        assert (await _ask(cfg.control_socket, {"cmd": "policy", "policy": "periodic"}))["ok"] is True
        seen["hold_related"] = node.engine.hold_related
        seen["status"] = status

    async def scenario() -> None:
        node = Node(cfg, use_nfqueue=False)
        assert node.engine.hold_timeout_s == 0.15, "the lab's hold timeout reaches the engine"
        checker = asyncio.create_task(check(node))
        # run() is the process's main task: on its way out it stops every other task.
        await node.run()
        checker.result()  # its failure, if any, is the test's

    asyncio.run(scenario())
    assert seen["hold_related"] is False
    status = seen["status"]
    assert isinstance(status, dict)
    assert status["ok"] is True and status["state"] == "active"
    assert status["buckets"] == [1, 2, 3, 4]
    assert (status["own"], status["backup"], status["common"], status["held"]) == (0, 0, 0, 0)
    counters = status["counters"]
    assert isinstance(counters, dict) and counters["released_by_ack"] == 0
    assert not Path(cfg.control_socket).exists(), "the control socket is removed on the way out"


def test_a_table_builds_only_the_rows_asked_for_and_carries_looks_flows_up_by_key(tmp_path: Path) -> None:
    """The daemon and the recorder ask often: neither may cost a walk of the whole table."""
    from engine.rows import conn_row
    from engine.synthetic import fill_synthetic

    node = Node(_config(tmp_path), use_nfqueue=False)
    fill_synthetic(node.engine.table, 0, 1000, [1, 2, 3, 4], 0.0)
    t = node.table("own", "", 10)
    assert len(t["rows"]) == 10 and t["total"] == 1000
    assert node.table("own", "", -1)["rows"] == []
    some = next(iter(node.engine.table.conns.values()))
    r = conn_row(some, 0.0)
    assert node.table("own", str(r["src"]), 5)["total"] >= 1  # a filter still reads them all
    pairs = [[r["src"], r["dst"]], [r["dst"], r["src"]], ["10.9.9.9:1", "10.9.9.8:2"], ["nonsense", 3], "x"]
    assert node.carries(pairs) == [0, 1]
    assert node.carries("not a list") == []


def test_the_collector_is_off_while_a_bulk_resync_arrives_and_what_it_brought_is_frozen(
        tmp_path: Path) -> None:
    import gc
    import time

    from engine.node import RESYNC_GC_OFF_S

    node = Node(_config(tmp_path), use_nfqueue=False)
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        node._collector_during_resync(False)  # a progress note: the bulk is arriving
        assert not gc.isenabled()
        node._collector_during_resync(False)
        assert not gc.isenabled()
        kept = [[i] for i in range(100)]  # what the resync brought, tracked by the collector
        node._collector_during_resync(True)  # resync complete
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
        # A stream that never completes does not keep the collector off for ever.
        node._collector_during_resync(False)
        assert not gc.isenabled()
        node._gc_paused_at = time.monotonic() - RESYNC_GC_OFF_S - 1
        node._collector_during_resync(False)
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
