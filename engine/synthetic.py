"""Synthetic own connections for the benches: N established TCP entries put straight into a
node's table, as its packet path would leave them, without the packets.

`syncwall bench resync` needs a node holding 1M own connections; real SYNs through NFQUEUE
reach a few thousand per second (and each is synced as it is made), so 1M would take minutes.
The entries are what a node holds and resyncs (engine/store.py reads them like any other);
their addresses are in the benchmarking range 198.18.0.0/15, which no lab host uses, so no
packet ever matches one. Pure: the caller gives the clock."""

from __future__ import annotations

from collections.abc import Sequence

from engine.conntrack import Conn, ConnState, ConnTable
from engine.packet import TCP

# Clients 198.18.0.0/16 (index i: address i // 60000, port 1024 + i % 60000), server 198.19.0.1:5001.
_CLIENT = bytes((198, 18))
_SERVER = bytes((198, 19, 0, 1)) + (5001).to_bytes(2, "big")
_PORTS = 60_000
MAX_SYNTHETIC = 65_536 * _PORTS


def synthetic_key(i: int) -> bytes:
    """The key of synthetic connection `i`: the client is always the lower endpoint."""
    client = _CLIENT + (i // _PORTS).to_bytes(2, "big") + (1024 + i % _PORTS).to_bytes(2, "big")
    return bytes((TCP,)) + client + _SERVER


def fill_synthetic(table: ConnTable, start: int, count: int, buckets: Sequence[int], now: float) -> int:
    """Add synthetic connections start .. start+count-1 as own established entries spread over
    `buckets`, without events (peers learn of them by resync or a full sync, as of any entry
    made while they were away). Keys already in the table are left alone. Returns how many
    were added."""
    if not buckets:
        raise ValueError("no buckets to fill: the node owns none")
    if start < 0 or count < 0 or start + count > MAX_SYNTHETIC:
        raise ValueError(f"synthetic connections are numbered 0 .. {MAX_SYNTHETIC - 1}")
    conns = table.conns
    node = table.node
    nb = len(buckets)
    version = max(int(now * 1000), 1)
    added = 0
    for i in range(start, start + count):
        key = synthetic_key(i)
        if key in conns:
            continue
        e = Conn(key, True, ConnState.ESTABLISHED, node, version, buckets[i % nb], now, trigger="synthetic")
        conns[key] = e
        table.refresh(e)
        table.schedule(e)
        added += 1
    return added
