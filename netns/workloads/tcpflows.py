"""Long-lived TCP flows whose echoed payload is sequence-checked, and the echo server they use.

`python -m netns.workloads.tcpflows server --bind IP --port P`
`python -m netns.workloads.tcpflows client --server IP --port P --flows N --interval-ms M
    --health-file F --name PREFIX [--bind-ip IP]`

Each client flow sends fixed-size numbered records and checks that the echo comes back as
exactly the same byte stream: any loss, reordering or corruption is a gap or mismatch, a
reset or EOF is a lost connection. A lost connection is never re-opened, so that it stays
visible as `broken`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import deque

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

log = logging.getLogger(__name__)

RECORD_SIZE = 32
PAUSE_WINDOWS = 4  # closed pause windows each flow reports (`pause_windows`)
_HEADER = struct.Struct(">QI")  # sequence number, flow index
_READ_CHUNK = 65536
# The echo server lets go of a client that vanished (its FIN or RST never came: lost, or
# dropped by a cluster that had forgotten the connection, as after a loss run's false
# failovers, when s1 kept 24 sockets for ever): TCP keepalive probes a connection idle for
# KEEPALIVE_IDLE_S, and one that answers none of KEEPALIVE_COUNT probes, or leaves data
# unacknowledged for DEAD_AFTER_S, is closed by the kernel. A live client, however slow,
# answers the probes; a takeover lasts milliseconds.
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
DEAD_AFTER_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT


def encode_record(flow_index: int, seq: int) -> bytes:
    """Record `seq` of flow `flow_index`: a header plus a payload derived from it.

    The payload depends on both numbers so that a record of another flow or a shifted
    byte stream is caught, not only a missing sequence number.
    """
    header = _HEADER.pack(seq, flow_index)
    body = hashlib.blake2b(header, digest_size=RECORD_SIZE - _HEADER.size).digest()
    return header + body


def describe_mismatch(flow_index: int, expected_seq: int, got: bytes) -> str:
    """Why an echoed record is not the one expected, for a person reading the console."""
    got_seq, got_flow = _HEADER.unpack_from(got)
    if got_flow != flow_index:
        return f"mismatch: expected record {expected_seq}, got bytes of flow {got_flow}"
    if got_seq > expected_seq:
        return f"gap: expected record {expected_seq}, got {got_seq} ({got_seq - expected_seq} lost)"
    if got_seq < expected_seq:
        return f"out of order: expected record {expected_seq}, got {got_seq} again"
    return f"mismatch: payload of record {expected_seq} corrupted"


def _lost_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "server closed the connection (EOF)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer (RST)"
    if isinstance(exc, BrokenPipeError):
        return "connection broken (EPIPE)"
    if isinstance(exc, TimeoutError):
        return "connection timed out (ETIMEDOUT)"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"connection lost: {errno.errorcode.get(exc.errno, exc.errno)} {exc.strerror}"
    return f"connection lost: {exc}"


# --------------------------------------------------------------------------- server


def keep_alive(sock: socket.socket) -> None:
    """Probe an idle connection and give up on a dead peer (KEEPALIVE_*, DEAD_AFTER_S)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_S * 1000)


async def serve_echo(bind: str | list[str], port: int, stop: asyncio.Event) -> int:
    """Echo every byte back on every connection until `stop` is set (on each address of `bind`:
    a dual-stack lab's server listens on its IPv4 and its IPv6 address)."""
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = fmt_addr(writer.get_extra_info("peername"))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            keep_alive(sock)
        writers.add(writer)
        log.debug("connection from %s", peer)
        try:
            while data := await reader.read(_READ_CHUNK):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("connection from %s lost: %s", peer, exc)
        finally:
            writers.discard(writer)
            writer.close()

    try:
        server = await asyncio.start_server(handle, bind, port, reuse_address=True, backlog=1024)
    except OSError as exc:
        raise WorkloadError(f"cannot listen on {bind} port {port}: {exc.strerror}") from None
    addrs = ", ".join(fmt_addr(s.getsockname()) for s in server.sockets)
    log.info("echo server listening on %s", addrs)
    async with server:
        await stop.wait()
        log.info("stopping echo server (%d connections open)", len(writers))
        server.close()
        for w in list(writers):
            w.close()
    return EXIT_OK


# --------------------------------------------------------------------------- client


class TcpFlow:
    """One long-lived connection: a sender on a fixed schedule and a checker of the echo."""

    def __init__(
        self,
        index: int,
        name: str,
        server: str,
        port: int,
        bind_ip: str | None,
        interval_s: float,
        connect_timeout_s: float,
    ) -> None:
        self.index = index
        self.server = server
        self.port = port
        self.bind_ip = bind_ip
        self.interval_s = interval_s
        self.connect_timeout_s = connect_timeout_s
        self.flow = Flow(name=name, kind=FlowKind.TCP, dst=fmt_addr((server, port)))
        self.visible = False  # listed once the connect attempt has an outcome
        self.sent = 0
        self.echoed = 0
        self.longest_pause_ms = 0.0
        # Pause windows (SIGUSR1 marks them, see run_clients): the longest pause that ended in the
        # open window and when it ended; the closed ones as [mark t, longest ms, its end t] (wall).
        self._window_t = time.time()
        self._window_ms = 0.0
        self._window_end = 0.0
        self.pause_windows: deque[list[float]] = deque(maxlen=PAUSE_WINDOWS)
        self.stalls = 0
        self._sent_at: deque[float] = deque()  # monotonic send times of unechoed records
        self._progress_mono = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._lost = asyncio.Event()

    def _update_extra(self) -> None:
        self.flow.extra.update(
            records_sent=self.sent,
            records_echoed=self.echoed,
            longest_pause_ms=round(self.longest_pause_ms, 1),
            pause_windows=list(self.pause_windows),
            stalls=self.stalls,
        )

    def mark(self, now: float) -> None:
        """Close the open pause window and open the next one at `now` (wall clock)."""
        self.pause_windows.append([round(self._window_t, 4), round(self._window_ms, 1),
                                   round(self._window_end, 4)])
        self._window_t, self._window_ms, self._window_end = now, 0.0, 0.0
        self._update_extra()

    def _lose(self, detail: str) -> None:
        self.flow.set_health(FlowHealth.BROKEN, f"{detail} after {self.echoed} records")
        self._update_extra()
        self._lost.set()

    def check_stall(self, now_mono: float) -> None:
        """Mark the flow stalled when echoes are due and none came for STALL_AFTER_S."""
        if self.flow.health is not FlowHealth.HEALTHY or not self._sent_at:
            return
        waiting_s = now_mono - max(self._progress_mono, self._sent_at[0])
        if waiting_s > STALL_AFTER_S:
            self.stalls += 1
            self._update_extra()
            self.flow.set_health(FlowHealth.STALLED, f"no echo for {waiting_s:.1f} s")

    async def run(self, stop: asyncio.Event, start_delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), start_delay_s)
        if stop.is_set():
            return
        local = (self.bind_ip, 0) if self.bind_ip else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.server, self.port, local_addr=local),
                self.connect_timeout_s,
            )
        except TimeoutError:
            self._fail_connect(f"no answer within {self.connect_timeout_s:g} s")
            return
        except OSError as exc:
            # asyncio's message repeats the address; the errno's text says what happened.
            self._fail_connect(os.strerror(exc.errno) if exc.errno else str(exc))
            return
        self._writer = writer
        self.flow.src = fmt_addr(writer.get_extra_info("sockname"))
        self.flow.started = self.flow.last_progress = time.time()
        self._progress_mono = time.monotonic()
        self._update_extra()
        self.visible = True
        log.debug("%s connected %s -> %s", self.flow.name, self.flow.src, self.flow.dst)
        checker = asyncio.create_task(self._check_echo(reader))
        sender = asyncio.create_task(self._send(stop))
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._lost.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        sender.cancel()
        if not self._lost.is_set():
            await self._drain_echoes(checker)
        checker.cancel()
        await asyncio.gather(sender, checker, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _fail_connect(self, reason: str) -> None:
        self.visible = True
        self.flow.set_health(FlowHealth.BROKEN, f"connect to {self.flow.dst} failed: {reason}")
        self._update_extra()

    async def _drain_echoes(self, checker: asyncio.Task[None]) -> None:
        """On stop, give the records in flight a moment to come back before judging."""
        deadline = time.monotonic() + 1.0
        while self._sent_at and time.monotonic() < deadline and not self._lost.is_set():
            await asyncio.sleep(0.02)
        if self._lost.is_set():
            return
        missing = len(self._sent_at)
        detail = f"stopped after {self.echoed} records"
        if missing:
            detail += f", {missing} not echoed within 1 s of the stop"
        self._update_extra()
        self.flow.set_health(FlowHealth.DONE, detail)

    async def _send(self, stop: asyncio.Event) -> None:
        assert self._writer is not None
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                self._sent_at.append(time.monotonic())
                self._writer.write(encode_record(self.index, self.sent))
                self.sent += 1
                await self._writer.drain()
                # Fixed schedule; after a blocked drain, resume from now instead of bursting.
                next_t = max(next_t + self.interval_s, time.monotonic())
                await asyncio.sleep(next_t - time.monotonic())
        except (ConnectionError, OSError) as exc:
            self._lose(_lost_reason(exc))

    async def _check_echo(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                got = await reader.readexactly(RECORD_SIZE)
                if got != encode_record(self.index, self.echoed):
                    self._lose(describe_mismatch(self.index, self.echoed, got))
                    return
                now = time.monotonic()
                sent_at = self._sent_at.popleft() if self._sent_at else now
                pause_ms = (now - max(self._progress_mono, sent_at)) * 1000.0
                self.longest_pause_ms = max(self.longest_pause_ms, pause_ms)
                if pause_ms > self._window_ms:
                    self._window_ms = pause_ms
                    self._window_end = time.time()
                self._progress_mono = now
                self.echoed += 1
                self.flow.bytes += RECORD_SIZE
                self.flow.last_progress = time.time()
                if self.flow.health is FlowHealth.STALLED:
                    self.flow.set_health(FlowHealth.HEALTHY, f"resumed after {pause_ms:.0f} ms")
                self._update_extra()
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._lose(_lost_reason(exc))


async def run_clients(args: argparse.Namespace, stop: asyncio.Event) -> int:
    writer = HealthWriter(args.health_file, interval_s=args.health_interval_s, workload=args.name)
    flows = [
        TcpFlow(
            i,
            f"{args.name}-{i + 1:03d}",
            args.server,
            args.port,
            args.bind_ip,
            args.interval_ms / 1000.0,
            args.connect_timeout_s,
        )
        for i in range(args.flows)
    ]

    def visible() -> list[Flow]:
        return [f.flow for f in flows if f.visible]

    def mark() -> None:
        # SIGUSR1: every flow closes its pause window and opens the next (a bench marks the
        # moments around a kill, to tell the pause the kill caused from the background's).
        now = time.time()
        for f in flows:
            f.mark(now)
        writer.write(visible())

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, mark)
    writer.write(visible())
    log.info("starting %d flows to %s:%d", len(flows), args.server, args.port)
    tasks = [asyncio.create_task(f.run(stop, i * args.stagger_ms / 1000.0)) for i, f in enumerate(flows)]
    if args.duration_s:
        asyncio.get_running_loop().call_later(args.duration_s, stop.set)
    all_done = asyncio.gather(*tasks)
    stopped = asyncio.create_task(stop.wait())
    # Run until told to stop even when every flow is broken: the process's lifetime is the
    # daemon's to decide, and its health file keeps showing what was lost.
    while not (all_done.done() and stop.is_set()):
        now = time.monotonic()
        for f in flows:
            f.check_stall(now)
        writer.maybe_write(visible())
        await asyncio.wait([t for t in (all_done, stopped) if not t.done()], timeout=0.1)
    all_done.result()
    writer.write(visible())
    counts: dict[str, int] = {}
    for f in flows:
        counts[f.flow.health.value] = counts.get(f.flow.health.value, 0) + 1
    log.info("stopped: %s", ", ".join(f"{n} {h}" for h, n in sorted(counts.items())))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.tcpflows",
        description="Sequence-checked long-lived TCP flows and their echo server.",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server", help="echo every byte back")
    srv.add_argument("--bind", type=ip_arg, required=True, action="append",
                     help="address to listen on (repeat for more: IPv4 and IPv6)")
    srv.add_argument("--port", type=port_arg, required=True, help="TCP port to listen on")
    add_common_args(srv)
    cli = sub.add_parser("client", help="open N sequence-checked flows and report their health")
    cli.add_argument("--server", type=ip_arg, required=True, help="echo server address")
    cli.add_argument("--port", type=port_arg, required=True, help="echo server port")
    cli.add_argument("--flows", type=positive_int, default=10, help="connections (default 10)")
    cli.add_argument(
        "--interval-ms",
        type=positive_int,
        default=100,
        help="time between records on each flow (default 100)",
    )
    cli.add_argument("--health-file", required=True, help="where to write the health JSON")
    add_name_arg(cli)
    cli.add_argument("--bind-ip", type=ip_arg, default=None, help="local source address")
    cli.add_argument(
        "--stagger-ms",
        type=non_negative_int,
        default=20,
        help="delay between opening successive flows (default 20)",
    )
    cli.add_argument(
        "--connect-timeout-s",
        type=positive_float,
        default=5.0,
        help="give up connecting after this long (default 5)",
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
