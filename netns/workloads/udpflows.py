"""UDP flows of numbered datagrams, echoed by a server, reporting loss and stalls.

`python -m netns.workloads.udpflows server --bind IP --port P`
`python -m netns.workloads.udpflows client --server IP --port P --flows N --interval-ms M
    --health-file F --name PREFIX [--bind-ip IP]`

Each flow has its own socket (its own source port, so its own 5-tuple and HMARK bucket).
A datagram not echoed within LOST_AFTER_S counts as lost; if it shows up later it is
counted as late and no longer as lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
import time
from typing import Any, cast

from netns.workloads.common import (
    EXIT_OK,
    add_common_args,
    add_name_arg,
    ip_arg,
    non_negative_int,
    parse_workload_args,
    port_arg,
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
    fmt_addr,
)
from netns.workloads.tcpflows import RECORD_SIZE, encode_record

log = logging.getLogger(__name__)

LOST_AFTER_S = 1.0


# --------------------------------------------------------------------------- server


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not registered as a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("echo socket error: %s", exc)


async def serve_echo(bind: str | list[str], port: int, stop: asyncio.Event) -> int:
    """Echo every datagram back, on each address of `bind` (IPv4 and IPv6 in a dual-stack lab)."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    for addr in [bind] if isinstance(bind, str) else bind:
        try:
            transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(addr, port))
        except OSError as exc:
            for t in transports:
                t.close()
            raise WorkloadError(f"cannot bind UDP {fmt_addr((addr, port))}: {exc.strerror}") from None
        transports.append(transport)
        log.info("UDP echo server on %s", fmt_addr(transport.get_extra_info("sockname")))
    await stop.wait()
    for transport in transports:
        transport.close()
    log.info("UDP echo server stopped")
    return EXIT_OK


# --------------------------------------------------------------------------- client


class UdpFlow(asyncio.DatagramProtocol):
    """One flow: numbered datagrams on a schedule, echoes matched back by sequence number."""

    def __init__(self, index: int, name: str, server: str, port: int, interval_s: float) -> None:
        self.index = index
        self.interval_s = interval_s
        self.flow = Flow(name=name, kind=FlowKind.UDP, dst=fmt_addr((server, port)))
        self.transport: asyncio.DatagramTransport | None = None
        self.sent = 0
        self.received = 0
        self.late = 0
        self.duplicates = 0
        self.corrupt = 0
        self.errors = 0
        self.last_error = ""
        self.longest_pause_ms = 0.0
        self._outstanding: dict[int, float] = {}  # seq -> monotonic send time
        self._lost: dict[int, float] = {}  # seq -> send time, kept to measure late arrivals
        self._progress_mono = time.monotonic()
        self._unanswered_since: float | None = None  # first send since the last echo

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not registered as a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.flow.src = fmt_addr(transport.get_extra_info("sockname"))

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) != RECORD_SIZE:
            self.corrupt += 1
            return
        seq = int.from_bytes(data[:8], "big")
        if data != encode_record(self.index, seq):
            self.corrupt += 1
            return
        now = time.monotonic()
        if seq in self._outstanding:
            sent_at = self._outstanding.pop(seq)
        elif seq in self._lost:
            sent_at = self._lost.pop(seq)
            self.late += 1
        else:
            self.duplicates += 1
            return
        pause_ms = (now - max(self._progress_mono, sent_at)) * 1000.0
        self.longest_pause_ms = max(self.longest_pause_ms, pause_ms)
        self._progress_mono = now
        # Still waiting for anything sent earlier that has not come back (nor been given up).
        self._unanswered_since = min(self._outstanding.values(), default=None)
        self.received += 1
        self.flow.bytes += len(data)
        self.flow.last_progress = time.time()
        if self.flow.health is FlowHealth.STALLED:
            self.flow.set_health(FlowHealth.HEALTHY, f"resumed after {pause_ms:.0f} ms")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable while the server is down) are reported, not fatal.
        self.errors += 1
        self.last_error = str(exc)

    @property
    def loss_pct(self) -> float:
        settled = self.sent - len(self._outstanding)
        return 100.0 * len(self._lost) / settled if settled else 0.0

    def send_next(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        now = time.monotonic()
        self._outstanding[self.sent] = now
        if self._unanswered_since is None:
            self._unanswered_since = now
        self.transport.sendto(encode_record(self.index, self.sent))
        self.sent += 1

    def settle(self, now_mono: float, lost_after_s: float = LOST_AFTER_S) -> None:
        """Count overdue datagrams as lost and update stall state and report fields."""
        for seq, t in list(self._outstanding.items()):
            if now_mono - t > lost_after_s:
                self._lost[seq] = self._outstanding.pop(seq)
        if self._unanswered_since is not None and self.flow.health is FlowHealth.HEALTHY:
            waiting_s = now_mono - max(self._progress_mono, self._unanswered_since)
            if waiting_s > STALL_AFTER_S:
                detail = f"nothing echoed for {waiting_s:.1f} s"
                if self.last_error:
                    detail += f" (last error: {self.last_error})"
                self.flow.set_health(FlowHealth.STALLED, detail)
        self.flow.extra.update(
            datagrams_sent=self.sent,
            datagrams_received=self.received,
            lost=len(self._lost),
            loss_pct=round(self.loss_pct, 2),
            late=self.late,
            duplicates=self.duplicates,
            corrupt=self.corrupt,
            errors=self.errors,
            longest_pause_ms=round(self.longest_pause_ms, 1),
        )

    async def run(self, stop: asyncio.Event) -> None:
        next_t = time.monotonic()
        while not stop.is_set():
            self.send_next()
            next_t = max(next_t + self.interval_s, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_t - time.monotonic())

    def finish(self) -> None:
        self.settle(time.monotonic(), lost_after_s=0.0)
        self.flow.set_health(
            FlowHealth.DONE,
            f"stopped: {len(self._lost)} of {self.sent} datagrams lost ({self.loss_pct:.2f}%)",
        )
        if self.transport is not None:
            self.transport.close()


def _same(flow: UdpFlow) -> UdpFlow:
    return flow


async def run_clients(args: argparse.Namespace, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    writer = HealthWriter(args.health_file, interval_s=args.health_interval_s, workload=args.name)
    flows: list[UdpFlow] = []
    local = (args.bind_ip, 0) if args.bind_ip else None
    for i in range(args.flows):
        flow = UdpFlow(i, f"{args.name}-{i + 1:03d}", args.server, args.port, args.interval_ms / 1000.0)
        try:
            await loop.create_datagram_endpoint(
                functools.partial(_same, flow), local_addr=local, remote_addr=(args.server, args.port)
            )
        except OSError as exc:
            for f in flows:
                f.finish()
            raise WorkloadError(
                f"cannot open UDP socket to {args.server}:{args.port}: {exc.strerror}"
            ) from None
        flows.append(flow)
        if args.stagger_ms:
            await asyncio.sleep(args.stagger_ms / 1000.0)
    log.info("%d UDP flows to %s:%d", len(flows), args.server, args.port)
    if args.duration_s:
        loop.call_later(args.duration_s, stop.set)
    senders = asyncio.gather(*(f.run(stop) for f in flows))
    while not senders.done():
        now = time.monotonic()
        for f in flows:
            f.settle(now)
        writer.maybe_write(f.flow for f in flows)
        await asyncio.wait([senders], timeout=0.1)
    senders.result()
    # Let the datagrams in flight come back before the final count.
    deadline = time.monotonic() + LOST_AFTER_S
    while time.monotonic() < deadline and any(f._outstanding for f in flows):
        await asyncio.sleep(0.02)
    for f in flows:
        f.finish()
    writer.write(f.flow for f in flows)
    total_sent = sum(f.sent for f in flows)
    total_lost = sum(len(f._lost) for f in flows)
    log.info("stopped: %d of %d datagrams lost", total_lost, total_sent)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.udpflows",
        description="Numbered UDP datagram flows and their echo server.",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server", help="echo every datagram back")
    srv.add_argument("--bind", type=ip_arg, required=True, action="append",
                     help="address to listen on (repeat for more: IPv4 and IPv6)")
    srv.add_argument("--port", type=port_arg, required=True, help="UDP port")
    add_common_args(srv)
    cli = sub.add_parser("client", help="send N numbered datagram flows and report loss")
    cli.add_argument("--server", type=ip_arg, required=True, help="echo server address")
    cli.add_argument("--port", type=port_arg, required=True, help="echo server port")
    cli.add_argument("--flows", type=positive_int, default=10, help="flows (default 10)")
    cli.add_argument(
        "--interval-ms",
        type=positive_int,
        default=100,
        help="time between datagrams on each flow (default 100)",
    )
    cli.add_argument("--health-file", required=True, help="where to write the health JSON")
    add_name_arg(cli)
    cli.add_argument("--bind-ip", type=ip_arg, default=None, help="local source address")
    cli.add_argument(
        "--stagger-ms",
        type=non_negative_int,
        default=5,
        help="delay between opening successive flows (default 5)",
    )
    cli.add_argument(
        "--duration-s",
        type=positive_float,
        default=None,
        help="stop by itself after this long (default: run until SIGTERM)",
    )
    cli.add_argument(
        "--health-interval-s",
        type=positive_float,
        default=0.25,
        help="how often to rewrite the health file (default 0.25)",
    )
    add_common_args(cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_workload_args(build_parser(), argv)
    setup_logging(args.verbose)
    if args.role == "server":
        return run_async(lambda stop: serve_echo(args.bind, args.port, stop))
    return run_async(lambda stop: run_clients(args, stop))


if __name__ == "__main__":
    sys.exit(main())
