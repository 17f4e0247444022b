"""FTP sessions (ftplib, active or passive) that fetch and verify a file and record the data connection.

`python -m netns.workloads.ftpclient --server IP --mode active|passive --sessions N
    --interval-ms M --file NAME --health-file F [--timeout-s T]`

Each session is one flow of kind `ftp`: the control connection is src/dst, and the data
connection's two ends are `data_client` and `data_server` (in active mode the client's
listening address and the server's source address as seen on the accepted socket), so
the daemon can tell which gateway carried the data connection. A failed session is a
`failed` flow whose detail says what went wrong, e.g. "timeout waiting for data connection".
"""

from __future__ import annotations

import argparse
import ftplib
import logging
import signal
import socket
import sys
import time
import types
from enum import Enum
from typing import Any

from netns.workloads.common import (
    EXIT_OK,
    EXIT_SETUP,
    add_common_args,
    add_name_arg,
    ip_arg,
    non_negative_int,
    parse_workload_args,
    port_arg,
    positive_float,
    setup_logging,
)
from netns.workloads.ftpfiles import FILES, file_content
from netns.workloads.health import Flow, FlowHealth, FlowKind, HealthWriter, WorkloadError, fmt_addr

# A step of a session in the lab takes milliseconds; a data connection that a node dropped
# never comes, and the session fails after this long (the lessons and tests wait for it).
STEP_TIMEOUT_S = 4.0

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 1
# With --sessions 0 (run until stopped) the health file keeps only the most recent sessions.
KEPT_SESSIONS = 500


class FtpMode(Enum):
    ACTIVE = "active"
    PASSIVE = "passive"


class Phase(Enum):
    CONNECT = "connecting the control connection"
    LOGIN = "login"
    DATA = "opening the data connection"
    TRANSFER = "transfer"
    VERIFY = "verify"


class _Stopped(BaseException):
    """Raised from the SIGTERM/SIGINT handler to leave a blocking ftplib call."""


class _SessionFailed(WorkloadError):
    """The transfer finished but its content is wrong (internal; becomes the flow's failure)."""


class RecordingFTP(ftplib.FTP):
    """ftplib.FTP that remembers the addresses and timing of its data connection."""

    phase = Phase.CONNECT
    data_listen: Any = None  # active: where we listened
    pasv_addr: Any = None  # passive: where the server told us to connect
    data_client: Any = None
    data_server: Any = None
    data_requested_mono = 0.0
    data_opened_mono = 0.0

    def makeport(self) -> socket.socket:
        sock = super().makeport()
        # ftplib listens on all addresses and advertises the control connection's address.
        assert self.sock is not None
        self.data_listen = (self.sock.getsockname()[0], sock.getsockname()[1])
        return sock

    def makepasv(self) -> tuple[str, int]:
        host, port = super().makepasv()
        self.pasv_addr = (host, port)
        return host, port

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        self.phase = Phase.DATA
        self.data_requested_mono = time.monotonic()
        conn, size = super().ntransfercmd(cmd, rest)
        self.data_opened_mono = time.monotonic()
        self.data_client = conn.getsockname()
        self.data_server = conn.getpeername()
        self.phase = Phase.TRANSFER
        return conn, size


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000.0, 2)


def run_session(
    flow: Flow, server: str, port: int, mode: FtpMode, name: str, timeout_s: float, bind_ip: str | None
) -> None:
    """One session: login, RETR `name`, verify; fills `flow` (done or failed, with detail)."""
    ftp = RecordingFTP(timeout=timeout_s, source_address=(bind_ip, 0) if bind_ip else None)
    chunks: list[bytes] = []
    timings: dict[str, float] = {}
    completed = False
    t0 = time.monotonic()
    try:
        try:
            ftp.connect(server, port)
            assert ftp.sock is not None
            flow.src = fmt_addr(ftp.sock.getsockname())
            flow.dst = fmt_addr(ftp.sock.getpeername())
            t_conn = time.monotonic()
            timings["connect_ms"] = _ms(t0, t_conn)
            ftp.phase = Phase.LOGIN
            ftp.login()
            timings["login_ms"] = _ms(t_conn, time.monotonic())
            ftp.set_pasv(mode is FtpMode.PASSIVE)
            ftp.retrbinary(f"RETR {name}", chunks.append)
            t_end = time.monotonic()
            timings["data_connect_ms"] = _ms(ftp.data_requested_mono, ftp.data_opened_mono)
            timings["transfer_ms"] = _ms(ftp.data_opened_mono, t_end)
            ftp.phase = Phase.VERIFY
            _verify(name, b"".join(chunks))
            completed = True
        finally:
            _record_data_conn(flow, ftp, mode)
            timings["total_ms"] = _ms(t0, time.monotonic())
            flow.extra.update(timings)
            flow.bytes = sum(len(c) for c in chunks)
            _close(ftp, polite=completed)
    except _SessionFailed as exc:
        flow.set_health(FlowHealth.FAILED, str(exc))
        return
    except (OSError, EOFError, ftplib.Error) as exc:
        flow.set_health(FlowHealth.FAILED, _explain(exc, ftp, mode, server, port))
        return
    flow.last_progress = time.time()
    flow.set_health(
        FlowHealth.DONE,
        f"{name}: {flow.bytes} bytes verified, {mode.value} data "
        f"{flow.extra.get('data_server')} -> {flow.extra.get('data_client')}",
    )


def _record_data_conn(flow: Flow, ftp: RecordingFTP, mode: FtpMode) -> None:
    flow.extra.update(
        data_client=fmt_addr(ftp.data_client or ftp.data_listen),
        data_server=fmt_addr(ftp.data_server or ftp.pasv_addr),
        data_connected=ftp.data_client is not None,
    )
    if mode is FtpMode.ACTIVE:
        flow.extra["data_listen"] = fmt_addr(ftp.data_listen)
    else:
        flow.extra["pasv_addr"] = fmt_addr(ftp.pasv_addr)


def _close(ftp: RecordingFTP, polite: bool) -> None:
    """QUIT after a good session; after a failure just close (the server may be gone)."""
    try:
        if polite and ftp.sock is not None:
            ftp.quit()
    except (OSError, EOFError, ftplib.Error):
        pass
    ftp.close()


def _verify(name: str, data: bytes) -> None:
    if name not in FILES:
        return  # not one of ours: only the transfer itself is checked
    expected = file_content(name)
    if len(data) != len(expected):
        raise _SessionFailed(f"size mismatch: got {len(data)} bytes, expected {len(expected)}")
    if data != expected:
        offset = next(i for i, (a, b) in enumerate(zip(data, expected, strict=True)) if a != b)
        raise _SessionFailed(f"content mismatch at byte {offset} of {name}")


def _explain(exc: BaseException, ftp: RecordingFTP, mode: FtpMode, server: str, port: int) -> str:
    """A one-line reason a person can act on."""
    phase = ftp.phase
    if isinstance(exc, TimeoutError):
        if phase is Phase.DATA and mode is FtpMode.ACTIVE:
            return (
                f"timeout waiting for data connection (server never connected to {fmt_addr(ftp.data_listen)})"
            )
        if phase is Phase.DATA:
            return f"timeout connecting the data connection to {fmt_addr(ftp.pasv_addr)}"
        return f"timeout during {phase.value}"
    if isinstance(exc, ConnectionRefusedError):
        where = f"{server}:{port}" if phase is Phase.CONNECT else fmt_addr(ftp.pasv_addr)
        return f"connection refused by {where} ({phase.value})"
    if isinstance(exc, EOFError):
        return f"server closed the control connection during {phase.value}"
    if isinstance(exc, ftplib.Error):
        return f"server replied {str(exc).strip()} during {phase.value}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} during {phase.value}"
    return f"{type(exc).__name__}: {exc} during {phase.value}"


def run_sessions(args: argparse.Namespace) -> int:
    writer = HealthWriter(args.health_file, interval_s=0.25, workload=args.name)
    mode = FtpMode(args.mode)
    flows: list[Flow] = []
    writer.write(flows)

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        raise _Stopped

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("%s FTP sessions to %s:%d fetching %s", mode.value, args.server, args.port, args.file)
    index = failed = 0
    next_t = time.monotonic()
    try:
        while args.sessions == 0 or index < args.sessions:
            flow = Flow(
                name=f"{args.name}-{index + 1:03d}",
                kind=FlowKind.FTP,
                dst=fmt_addr((args.server, args.port)),
                extra={"mode": mode.value, "file": args.file},
            )
            flows.append(flow)
            writer.write(flows)
            run_session(flow, args.server, args.port, mode, args.file, args.timeout_s, args.bind_ip)
            writer.write(flows)
            failed += flow.health is FlowHealth.FAILED
            index += 1
            next_t += args.interval_ms / 1000.0
            if args.sessions and index >= args.sessions:
                break
            # Rewrite while idle so that a fresh "updated" tells the daemon we are alive.
            while (left_s := next_t - time.monotonic()) > 0:
                time.sleep(min(left_s, writer.interval_s))
                writer.write(flows)
            del flows[:-KEPT_SESSIONS]
    except _Stopped:
        if flows and not flows[-1].health.final:
            flows[-1].set_health(FlowHealth.DONE, "interrupted by stop before it completed")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    writer.write(flows)
    log.info("%d sessions, %d failed", index, failed)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.ftpclient",
        description="FTP sessions (ftplib) that retrieve and verify a file, reporting each one.",
        epilog="Exit status: 0 all sessions succeeded, 1 some failed, 2 bad usage.",
    )
    parser.add_argument("--server", type=ip_arg, required=True, help="FTP server address")
    parser.add_argument("--port", type=port_arg, default=21, help="control port (default 21)")
    parser.add_argument(
        "--mode", choices=[m.value for m in FtpMode], required=True, help="data connection mode"
    )
    parser.add_argument(
        "--sessions",
        type=non_negative_int,
        default=1,
        help="sessions to run one after another; 0 = until SIGTERM (default 1)",
    )
    parser.add_argument(
        "--interval-ms",
        type=non_negative_int,
        default=1000,
        help="time between session starts (default 1000)",
    )
    parser.add_argument(
        "--file",
        default="small.bin",
        help=f"file to retrieve (default small.bin; verified: {', '.join(FILES)})",
    )
    parser.add_argument("--health-file", required=True, help="where to write the health JSON")
    parser.add_argument(
        "--timeout-s", type=positive_float, default=STEP_TIMEOUT_S,
        help=f"socket timeout for each step (default {STEP_TIMEOUT_S:g})",
    )
    add_name_arg(parser)
    parser.add_argument("--bind-ip", type=ip_arg, default=None, help="local source address")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_workload_args(build_parser(), argv)
    setup_logging(args.verbose)
    try:
        return run_sessions(args)
    except WorkloadError as exc:
        log.error("%s", exc)
        return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main())
