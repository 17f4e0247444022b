"""Anonymous, read-only FTP server (pyftpdlib) serving files of known content, for FTP through the cluster.

`python -m netns.workloads.ftpserver --bind IP --port 21 [--root DIR] [--passive-ports 30000-30099]`

The files are generated deterministically (`file_content`), so a client can verify every
byte it received. Active-mode data connections leave from port 20 (RFC 959's L-1) when
the process may bind it (root, as in the lab); otherwise from a kernel-chosen port, which
pyftpdlib does by default.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP
from pyftpdlib.servers import FTPServer

from netns.workloads.common import (
    EXIT_OK,
    EXIT_SETUP,
    add_common_args,
    ip_arg,
    port_arg,
    setup_logging,
)
from netns.workloads.ftpfiles import FILES, file_content
from netns.workloads.health import WorkloadError

log = logging.getLogger(__name__)

ACTIVE_SOURCE_PORT = 20
# "elr": change directory, list, retrieve; nothing that writes.
READ_ONLY_PERMS = "elr"


def fill_root(root: Path) -> None:
    """Write the served files into `root` unless they are already there with the right content."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            path = root / name
            data = file_content(name)
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                continue
            path.write_bytes(data)
    except OSError as exc:
        raise WorkloadError(f"cannot prepare FTP root {root}: {exc}") from None


def parse_port_range(text: str) -> range:
    """argparse type: "LOW-HIGH" (inclusive)."""
    try:
        low_s, high_s = text.split("-", 1)
        low, high = int(low_s), int(high_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port range like 30000-30099") from None
    if not 1024 <= low <= high <= 65535:
        raise argparse.ArgumentTypeError(f"passive ports {text} must be within 1024-65535, low-high")
    return range(low, high + 1)


class Port20ActiveDTP(ActiveDTP):  # type: ignore[misc]
    """pyftpdlib's active data connector, binding source port 20 when it can.

    pyftpdlib binds (control address, 0); we try port 20 with SO_REUSEADDR first (several
    data connections may leave from port 20 at once: their 4-tuples differ) and fall back
    to the kernel's choice when port 20 is not allowed.
    """

    source_port = ACTIVE_SOURCE_PORT

    def bind(self, addr: tuple[Any, ...]) -> None:
        if self.source_port and addr[1] == 0:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                super().bind((addr[0], self.source_port, *addr[2:]))
                return
            except OSError as exc:
                log.debug("cannot bind port %d for active data: %s", self.source_port, exc)
        super().bind(addr)


class ReadOnlyFTPHandler(FTPHandler):  # type: ignore[misc]
    active_dtp = Port20ActiveDTP
    permit_foreign_addresses = False
    banner = "syncwall lab FTP (anonymous, read-only)"


def make_server(
    bind: str,
    port: int,
    root: Path,
    passive_ports: range | None,
    active_source_port: int = ACTIVE_SOURCE_PORT,
    ioloop: Any = None,
) -> FTPServer:
    """An FTPServer ready to serve (not yet serving); raises WorkloadError if it cannot listen.

    `ioloop`: another server's, so that one process serves several addresses (IPv4 and IPv6:
    pyftpdlib answers EPRT and EPSV on an IPv6 control connection)."""
    fill_root(root)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root), perm=READ_ONLY_PERMS)
    dtp = type("ActiveDTP", (Port20ActiveDTP,), {"source_port": active_source_port})
    handler = type(
        "Handler",
        (ReadOnlyFTPHandler,),
        {
            "authorizer": authorizer,
            "passive_ports": passive_ports,
            "active_dtp": dtp,
        },
    )
    try:
        return FTPServer((bind, port), handler, ioloop=ioloop)
    except OSError as exc:
        raise WorkloadError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.ftpserver",
        description="Anonymous read-only FTP server with files of known content "
        f"({', '.join(f'{n} {s} B' for n, s in FILES.items())}).",
    )
    parser.add_argument("--bind", type=ip_arg, required=True, action="append",
                        help="address to listen on (repeat for more: IPv4 and IPv6)")
    parser.add_argument("--port", type=port_arg, default=21, help="control port (default 21)")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="directory to serve, filled with the test files "
        "(default: a temporary directory removed on exit)",
    )
    parser.add_argument(
        "--passive-ports",
        type=parse_port_range,
        default=range(30000, 30100),
        help="passive data port range LOW-HIGH (default 30000-30099)",
    )
    parser.add_argument(
        "--active-source-port",
        type=port_arg,
        default=ACTIVE_SOURCE_PORT,
        help="source port for active data connections, 0 = kernel's choice "
        "(default 20; falls back to the kernel's choice without privilege)",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    with contextlib.ExitStack() as cleanup:
        if args.root is None:
            tmp = tempfile.TemporaryDirectory(prefix="syncwall-ftp-")
            args.root = Path(cleanup.enter_context(tmp))
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    servers: list[FTPServer] = []
    try:
        for bind in args.bind:
            servers.append(make_server(bind, args.port, args.root, args.passive_ports,
                                       args.active_source_port,
                                       ioloop=servers[0].ioloop if servers else None))
    except WorkloadError as exc:
        log.error("%s", exc)
        for s in servers:
            s.close()
        return EXIT_SETUP
    server = servers[0]
    # pyftpdlib's loop ends cleanly on KeyboardInterrupt; route SIGTERM the same way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    log.info(
        "FTP on %s port %d serving %s (passive %d-%d)",
        ", ".join(args.bind),
        args.port,
        args.root,
        args.passive_ports.start,
        args.passive_ports.stop - 1,
    )
    try:
        server.serve_forever(handle_exit=True)
    finally:
        server.close_all()
    log.info("FTP server stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
