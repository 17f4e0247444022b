"""Micro-benchmark of the engine core as a pure function call: `python -m engine.bench [--json]`."""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
import time
import tracemalloc
from typing import Any

from engine.core import Engine, Verdict
from engine.rules import default_rules

log = logging.getLogger(__name__)

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")

CLIENT_NET = bytes((198, 18, 1, 0))
SERVER = bytes((198, 18, 2, 10))


def ipv4_tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    """A minimal IPv4/TCP packet (checksums left zero: the engine does not check them)."""
    total = 40 + len(payload)
    ip = _IP.pack(0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = _TCP.pack(sport, dport, 1, 1, 0x50, flags, 65535, 0, 0)
    return ip + tcp + payload


def _client(i: int) -> tuple[bytes, int]:
    """Flow i's client address (spread over the inside /24) and source port."""
    return CLIENT_NET[:3] + bytes((10 + i % 200,)), 10000 + (i // 200) % 50000


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def entry_bytes(entries: int = 10_000) -> float:
    """Memory one own TCP connection costs in the engine (entry, key, table slot, expiry slot)."""
    engine = Engine("n1", default_rules())
    syns = []
    for i in range(entries):
        c, sport = _client(i)
        syns.append(ipv4_tcp(c, SERVER, sport, 5000 + i % 1000, 0x02))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for syn in syns:
            engine.process(syn, 1.0, 1)
        engine.drain_events()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return round((after - before) / entries, 1)


def run_engine_bench(flows: int = 1000, packets: int = 200_000) -> dict[str, Any]:
    """Packets/s on established flows (both directions, round robin over `flows`) and new
    connections/s (SYN, SYN-ACK, ACK through the rules), as calls of Engine.process."""
    engine = Engine("n1", default_rules())
    handshakes: list[tuple[bytes, bytes, bytes]] = []
    data_pkts: list[bytes] = []
    for i in range(flows):
        c, sport = _client(i)
        dport = 5000 + i % 1000
        handshakes.append((
            ipv4_tcp(c, SERVER, sport, dport, 0x02),
            ipv4_tcp(SERVER, c, dport, sport, 0x12),
            ipv4_tcp(c, SERVER, sport, dport, 0x10),
        ))
        data_pkts.append(ipv4_tcp(c, SERVER, sport, dport, 0x18, b"x" * 64))
        data_pkts.append(ipv4_tcp(SERVER, c, dport, sport, 0x10))

    now = 1.0
    t0 = time.perf_counter()
    for syn, synack, ack in handshakes:
        engine.process(syn, now, 1)
        engine.process(synack, now, 1)
        engine.process(ack, now, 1)
    t_new = time.perf_counter() - t0
    engine.drain_events()

    process = engine.process
    n = len(data_pkts)
    stream = [data_pkts[i % n] for i in range(packets)]
    accepted = 0
    t0 = time.perf_counter()
    for pkt in stream:
        if process(pkt, now, 1).verdict is Verdict.ACCEPT:
            accepted += 1
    t_est = time.perf_counter() - t0

    return {
        "flows": flows,
        "packets": packets,
        "established_pps": _rate(packets, t_est),
        "established_us_per_packet": round(t_est / packets * 1e6, 3) if packets else 0.0,
        "established_accepted": accepted,
        "new_connections_per_s": _rate(flows, t_new),
        "new_connection_packets_per_s": _rate(3 * flows, t_new),
        "bytes_per_entry": entry_bytes(min(flows, 10_000) or 1),
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="one JSON object (the default output too)")
    args = ap.parse_args(argv)
    result = run_engine_bench(args.flows, args.packets)
    sys.stdout.write(json.dumps(result, indent=None if args.json else 2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
