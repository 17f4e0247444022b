"""Tiny traffic tools the lab tests run inside lab namespaces (`ip netns exec NS python labprobe.py ...`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(dst: str, count: int, timeout_s: float) -> int:
    """ICMP echo with a raw socket (the machine has no ping binary); exit 0 if all replied."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(timeout_s)
    ident = os.getpid() & 0xFFFF
    replies = 0
    for seq in range(1, count + 1):
        payload = b"syncwall-probe"
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        hdr = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), ident, seq)
        sock.sendto(hdr + payload, (dst, 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            ihl = (data[0] & 0x0F) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if addr[0] == dst and typ == 0 and rid == ident and rseq == seq:
                replies += 1
                break
    print(json.dumps({"sent": count, "received": replies}))
    return 0 if replies == count else 1


def echo_server(port: int) -> int:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(256)
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def tcp_clients(dst: str, port: int, sports: list[int], timeout_s: float) -> int:
    """One connection per source port; each sends a payload and checks the echo."""
    results = {}
    for sport in sports:
        payload = f"flow {sport} ".encode() * 100
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(timeout_s)
            s.bind(("0.0.0.0", sport))
            s.connect((dst, port))
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            s.close()
            results[sport] = "ok" if got == payload else f"bad echo ({len(got)} bytes)"
        except OSError as e:
            results[sport] = f"error: {e}"
    print(json.dumps(results))
    return 0 if all(v == "ok" for v in results.values()) else 1


def nfq_accept(queue: int) -> int:
    """Accept every queued packet: the smallest engine there is."""
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue, lambda pkt: pkt.accept())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        nfq.run()
    finally:
        nfq.unbind()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=1.0)
    p = sub.add_parser("echo-server")
    p.add_argument("port", type=int)
    p = sub.add_parser("tcp-clients")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("sports", help="comma-separated source ports")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p = sub.add_parser("nfq-accept")
    p.add_argument("queue", type=int)
    a = ap.parse_args()
    if a.cmd == "ping":
        return ping(a.dst, a.count, a.timeout_s)
    if a.cmd == "echo-server":
        return echo_server(a.port)
    if a.cmd == "tcp-clients":
        return tcp_clients(a.dst, a.port, [int(x) for x in a.sports.split(",")], a.timeout_s)
    return nfq_accept(a.queue)


if __name__ == "__main__":
    sys.exit(main())
