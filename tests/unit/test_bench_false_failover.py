"""The false-failover bench's count and the failover bench's UDP reading, on events and iperf3
output in their real shapes (no lab)."""

from __future__ import annotations

import struct
from typing import Any

from demos.bench.failover import _udp_end, udp_seqs, wire_count
from demos.bench.false_failover import false_declarations


def ev(t: float, node: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"t": t, "node": node, "kind": kind, "text": kind, **extra}


def test_a_peer_down_nobody_caused_is_false_and_one_after_a_kill_is_not() -> None:
    events = [ev(1, "n2", "peer-down", peer="n1", closed=False),
              ev(1.1, "n2", "takeover", promoted=4, detect_to_accept_ms=110.0, buckets=[1]),
              ev(1.2, "n2", "takeover", promoted=4, buckets=[1]),  # the engine's own: counted once
              ev(5, "n3", "action", action="kill"),
              ev(5.01, "n1", "peer-down", peer="n3", closed=True),
              ev(5.02, "n1", "takeover", promoted=3, detect_to_accept_ms=9.0, buckets=[3]),
              ev(9, "n3", "action", action="revive"),
              ev(12, "n1", "peer-down", peer="n3", closed=True)]
    down, take = false_declarations(events)
    assert [(e["node"], e["peer"], e["t"]) for e in down] == [("n2", "n1", 1), ("n1", "n3", 12)]
    assert [e["t"] for e in take] == [1.1]


def test_udp_loss_is_the_receivers_count_and_out_of_order_sums_the_streams() -> None:
    doc = {"end": {"sum": {"packets": 6900, "lost_packets": 12, "lost_percent": 0.17},
                   "streams": [{"udp": {"out_of_order": 2}}, {"udp": {"out_of_order": 1}}]}}
    assert _udp_end(doc) == {"packets": 6900, "lost": 12, "out_of_order": 3}
    newer = {"end": {"sum_sent": {"packets": 7000}, "sum_received": {"packets": 6990, "lost_packets": 10},
                     "streams": []}}
    assert _udp_end(newer) == {"packets": 7000, "lost": 10, "out_of_order": 0}


def _frame(sport: int, num: int, dport: int = 5201, payload: int = 1448) -> bytes:
    """An Ethernet + IPv4 + UDP frame carrying iperf3's datagram header (sec, usec, number)."""
    body = struct.pack("!III", 1, 2, num) + bytes(payload - 12)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([198, 18, 1, 10]), bytes([198, 18, 2, 10])) + udp
    return bytes(6) + bytes(6) + b"\x08\x00" + ip


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1000 + i, 0, len(f), len(f)) + f
    return out


def test_the_wire_count_tells_a_missing_datagram_from_a_replayed_one() -> None:
    # Stream 40000: 3 never came and 2 came twice (a replay).
    # iperf3 would say 0 lost here: the late duplicate 2 takes back the loss of 3.
    frames = [_frame(40000, n) for n in (1, 2, 4, 5, 2)] + [_frame(40001, n) for n in (7, 8, 9)]
    frames.append(_frame(40002, 1, dport=22))  # not iperf3's port: not counted
    seqs = udp_seqs(_pcap(frames))
    assert seqs == {40000: [1, 2, 4, 5, 2], 40001: [7, 8, 9]}
    assert wire_count(seqs) == {"received": 8, "lost": 1, "duplicates": 1}
