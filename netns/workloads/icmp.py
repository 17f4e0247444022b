"""A small pinger (ICMP echo over a raw socket) that reports loss and stalls like the other workloads.

`python -m netns.workloads.icmp --target IP --interval-ms M --health-file F [--name N]`

Needs CAP_NET_RAW (root, as inside the lab). The flow's src and dst are plain addresses
with the echo identifier as the "port" of src (ICMP has no ports; the identifier is what
tells one ping flow from another).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import time

from netns.workloads.common import (
    EXIT_OK,
    add_common_args,
    add_name_arg,
    ip_arg,
    parse_workload_args,
    positive_float,
    positive_int,
    run_async,
    setup_logging,
)
from netns.workloads.health import (
    STALL_AFTER_S,
    Flow,
    FlowHealth,
    FlowKind,
    HealthWriter,
    WorkloadError,
)

log = logging.getLogger(__name__)

ECHO_REQUEST = 8
ECHO_REPLY = 0
LOST_AFTER_S = 1.0
_ICMP = struct.Struct(">BBHHH")  # type, code, checksum, identifier, sequence
_PAYLOAD = b"syncwall-icmp-probe-0123456789ab"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = _ICMP.pack(ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    csum = checksum(header + _PAYLOAD)
    return _ICMP.pack(ECHO_REQUEST, 0, csum, ident, seq & 0xFFFF) + _PAYLOAD


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to `ident` in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < _ICMP.size:
        return None
    kind, _code, _csum, got_ident, seq = _ICMP.unpack_from(icmp)
    if kind != ECHO_REPLY or got_ident != ident:
        return None
    return int(seq)


class Pinger:
    def __init__(self, name: str, target: str, bind_ip: str | None, interval_s: float) -> None:
        self.target = target
        self.interval_s = interval_s
        self.ident = os.getpid() & 0xFFFF
        self.flow = Flow(
            name=name, kind=FlowKind.ICMP, src=f"{bind_ip or ''}:{self.ident}", dst=f"{target}:0"
        )
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.rtt_ms: list[float] = []
        self.longest_pause_ms = 0.0
        self._outstanding: dict[int, float] = {}
        self._progress_mono = time.monotonic()
        self._unanswered_since: float | None = None
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except PermissionError:
            raise WorkloadError("a raw ICMP socket needs root (CAP_NET_RAW); run it inside the lab") from None
        self.sock.setblocking(False)
        if bind_ip:
            self.sock.bind((bind_ip, 0))

    def send(self) -> None:
        now = time.monotonic()
        seq = self.sent & 0xFFFF
        try:
            self.sock.sendto(echo_request(self.ident, seq), (self.target, 0))
        except OSError as exc:
            # No route while a link is cut: a lost probe, not a crash.
            log.debug("ping to %s not sent: %s", self.target, exc)
        self._outstanding[seq] = now
        if self._unanswered_since is None:
            self._unanswered_since = now
        self.sent += 1

    def on_readable(self) -> None:
        while True:
            try:
                packet = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            seq = parse_reply(packet, self.ident)
            if seq is None or seq not in self._outstanding:
                continue
            if self.flow.src.startswith(":"):
                # Unbound: the reply's destination is the address the kernel chose for us.
                self.flow.src = f"{socket.inet_ntoa(packet[16:20])}:{self.ident}"
            now = time.monotonic()
            sent_at = self._outstanding.pop(seq)
            self.rtt_ms.append((now - sent_at) * 1000.0)
            del self.rtt_ms[:-100]  # recent RTTs only
            pause_ms = (now - max(self._progress_mono, sent_at)) * 1000.0
            self.longest_pause_ms = max(self.longest_pause_ms, pause_ms)
            self._progress_mono = now
            self._unanswered_since = min(self._outstanding.values(), default=None)
            self.received += 1
            self.flow.bytes += len(packet)
            self.flow.last_progress = time.time()
            if self.flow.health is FlowHealth.STALLED:
                self.flow.set_health(FlowHealth.HEALTHY, f"replies again after {pause_ms:.0f} ms")

    def settle(self, now_mono: float, lost_after_s: float = LOST_AFTER_S) -> None:
        for seq, t in list(self._outstanding.items()):
            if now_mono - t > lost_after_s:
                del self._outstanding[seq]
                self.lost += 1
        if self._unanswered_since is not None and self.flow.health is FlowHealth.HEALTHY:
            waiting_s = now_mono - max(self._progress_mono, self._unanswered_since)
            if waiting_s > STALL_AFTER_S:
                self.flow.set_health(FlowHealth.STALLED, f"no echo reply for {waiting_s:.1f} s")
        settled = self.sent - len(self._outstanding)
        self.flow.extra.update(
            pings_sent=self.sent,
            replies=self.received,
            lost=self.lost,
            loss_pct=round(100.0 * self.lost / settled, 2) if settled else 0.0,
            rtt_ms_last=round(self.rtt_ms[-1], 3) if self.rtt_ms else None,
            longest_pause_ms=round(self.longest_pause_ms, 1),
        )


async def run_pinger(args: argparse.Namespace, stop: asyncio.Event) -> int:
    writer = HealthWriter(args.health_file, interval_s=0.25, workload=args.name)
    pinger = Pinger(args.name, args.target, args.bind_ip, args.interval_ms / 1000.0)
    loop = asyncio.get_running_loop()
    loop.add_reader(pinger.sock.fileno(), pinger.on_readable)
    if args.duration_s:
        loop.call_later(args.duration_s, stop.set)
    log.info("pinging %s every %d ms", args.target, args.interval_ms)
    next_t = time.monotonic()
    try:
        while not stop.is_set():
            pinger.send()
            pinger.settle(time.monotonic())
            writer.maybe_write([pinger.flow])
            next_t = max(next_t + pinger.interval_s, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_t - time.monotonic())
        deadline = time.monotonic() + LOST_AFTER_S
        while pinger._outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        loop.remove_reader(pinger.sock.fileno())
        pinger.sock.close()
    pinger.settle(time.monotonic(), lost_after_s=0.0)
    pinger.flow.set_health(FlowHealth.DONE, f"stopped: {pinger.lost} of {pinger.sent} pings lost")
    writer.write([pinger.flow])
    log.info("%s", pinger.flow.detail)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.icmp",
        description="ICMP echo flow (raw socket, needs root) reporting loss and stalls.",
    )
    parser.add_argument("--target", type=ip_arg, required=True, help="IPv4 address to ping")
    parser.add_argument(
        "--interval-ms", type=positive_int, default=200, help="time between pings (default 200)"
    )
    parser.add_argument("--health-file", required=True, help="where to write the health JSON")
    add_name_arg(parser)
    parser.add_argument("--bind-ip", type=ip_arg, default=None, help="local source address")
    parser.add_argument(
        "--duration-s",
        type=positive_float,
        default=None,
        help="stop by itself after this long (default: run until SIGTERM)",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_workload_args(build_parser(), argv)
    setup_logging(args.verbose)
    if ":" in args.target:
        log.error("only IPv4 targets are supported, not %s", args.target)
        return 2
    return run_async(lambda stop: run_pinger(args, stop))


if __name__ == "__main__":
    sys.exit(main())
