"""`syncwall bench block`: how soon every node drops a scanner after one node detects it.

Each run: c2 SYN-scans 20 ports no rule accepts; the node that sees the scan threshold first
writes the blocklist record (its `detected` time); every other node's `applied` time is when the
record reached it (the nodes' monotonic clock is the host's). Latency = applied - detected. The
baseline, in the same run: a user record (`auth login`) from the writing node to the others,
the same common-state path without detection. Target (issue 18): every node within 5 ms."""

from __future__ import annotations

import sys
import time
from typing import Any

from demos.bench.lab import Progress, bench_lab, lab_request, run_in, wait_until
from demos.bench.stats import summarize

BLOCK_S = 2
C1, C2 = "198.18.1.10", "198.18.1.11"
# A SYN scan of 20 ports no rule accepts, from as many source ports (so every node sees some).
SCAN = """
import socket, time
socks = []
for port in range(6000, 6020):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("{dst}", port))
    socks.append(s)
time.sleep(0.2)
for s in socks:
    s.close()
"""


# Parallel connects from fixed source ports; prints how many connected within the wait.
CONNECTS = """
import json, selectors, socket, time
sel = selectors.DefaultSelector()
socks = []
for sport in {sports}:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setblocking(False)
    s.bind(("0.0.0.0", sport))
    s.connect_ex(("{dst}", {port}))
    sel.register(s, selectors.EVENT_WRITE)
    socks.append(s)
ok, end = 0, time.monotonic() + {wait}
while socks and time.monotonic() < end:
    for key, _ in sel.select(max(0.0, end - time.monotonic())):
        s = key.fileobj
        sel.unregister(s)
        socks.remove(s)
        ok += s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        s.close()
print(json.dumps({{"connected": ok}}))
"""


def connects_code(sports: list[int], dst: str, port: int = 5001, wait: float = 1.0) -> str:
    """A `python -c` program: connect to dst:port from each of `sports` at once; prints
    {"connected": N}, how many connected within `wait` seconds."""
    return CONNECTS.format(sports=sports, dst=dst, port=port, wait=wait)


def scan_code(dst: str = "198.18.2.10") -> str:
    """The scan as a `python -c` program from a client namespace."""
    return SCAN.format(dst=dst)


def one_entry(got: dict[str, dict[str, Any]], nodes: set[str]) -> bool:
    """Every node holds the entry, and the same one: two nodes that saw the scan at once each
    wrote one, and the sync layer's version order (then owner name) must leave one everywhere."""
    return set(got) == nodes and len({(e["owner"], e["version"]) for e in got.values()}) == 1


def _entries(lab: str, kind: str, addr: str) -> dict[str, dict[str, Any]]:
    reply = lab_request(lab, {"cmd": "guards"})
    out = {}
    for node, r in reply["nodes"].items():
        for e in r.get("entries", []):
            if e["kind"] == kind and e["addr"] == addr and e.get("live", True):
                out[node] = e
    return out


TARGET_MS = 5.0  # issue 18: every node drops the scanner within 5 ms of its detection


def within_target(ms: list[float], target_ms: float = TARGET_MS) -> tuple[bool, str]:
    """Whether every apply in `ms` (each other node's applied - detected) is within the
    target, and a line that says so: reported by the bench and the demo, never asserted by a
    test (a loaded host may be slower; benches measure speed). No samples is not within."""
    if not ms:
        return False, f"within the {target_ms:g} ms target: no (no other node applied the entry)"
    worst = max(ms)
    verdict = "yes" if worst <= target_ms else "NO"
    return worst <= target_ms, (f"within the {target_ms:g} ms target: {verdict}, the slowest of "
                                f"{len(ms)} applies on another node was {worst:.2f} ms after the detection")


def _spread_ms(got: dict[str, dict[str, Any]], t0_field: str) -> list[float]:
    """Each node but the writer: applied minus the writer's time, in ms."""
    writer = next(iter(got.values()))["owner"]
    t0 = float(got[writer][t0_field] if t0_field in got[writer] else got[writer]["applied"])
    return [(float(e["applied"]) - t0) * 1000 for n, e in got.items() if n != writer]


def bench_block(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    settings = f"scan_ports = 6\nscan_window_ms = 2000\nblock_s = {BLOCK_S}\n"
    block_ms: list[float] = []
    user_ms: list[float] = []
    with bench_lab(lab, progress, settings=settings) as name:
        nodes = set(lab_request(name, {"cmd": "guards"})["nodes"])
        for i in range(runs):
            run_in(name, "c2", [sys.executable, "-c", scan_code()])
            got = wait_until("every node holds one and the same blocklist entry for c2", lambda: (
                e := _entries(name, "blocklist", C2)) and one_entry(e, nodes) and e, 10)
            ms = _spread_ms(got, "detected")
            block_ms += ms
            until = float(next(iter(got.values()))["until"])
            lab_request(name, {"cmd": "auth_login", "user": "bench", "host": "c1"})
            got_u = wait_until("every node holds the user record", lambda: (
                e := _entries(name, "user", C1)) and set(e) == nodes and e, 10)
            um = _spread_ms(got_u, "applied")
            user_ms += um
            lab_request(name, {"cmd": "auth_logout", "host": "c1"})
            progress(f"run {i + 1}/{runs}: blocked on the other nodes after "
                     f"{', '.join(f'{x:.2f}' for x in ms)} ms (user record: "
                     f"{', '.join(f'{x:.2f}' for x in um)} ms)")
            time.sleep(max(0.0, until - time.monotonic()) + 0.3)  # the entry ends everywhere
            wait_until("c2's entry gone", lambda: not _entries(name, "blocklist", C2), 10)
    return {
        "what": "ms from the detecting node's detection to each other node's apply of the "
                "blocklist record; baseline: a user record from its writer to the other nodes",
        "block_ms": summarize(block_ms),
        "baseline_user_record_ms": summarize(user_ms),
        "target_ms": TARGET_MS,
        "within_target": within_target(block_ms)[0],
        "notes": [within_target(block_ms)[1]],
    }
