"""Command-line plumbing shared by the workload programs: argument types, logging, clean stop."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from netns.workloads.health import WorkloadError

log = logging.getLogger(__name__)

# Exit codes: 0 clean stop, 2 bad usage or setup (argparse uses 2 as well).
EXIT_OK = 0
EXIT_SETUP = 2


def ip_arg(text: str) -> str:
    """argparse type: an IPv4 or IPv6 address, normalised."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def port_arg(text: str) -> int:
    """argparse type: a TCP/UDP port number (0 lets the kernel choose, for servers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def add_name_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default=None,
        help="workload name, also the prefix of its flow names (default: the health file's "
        "name without .json, which the daemon makes unique)",
    )


def parse_workload_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, then default --name to the health file's stem so that flows are traceable."""
    args = parser.parse_args(argv)
    if getattr(args, "name", "") is None:
        args.name = Path(args.health_file).stem
    return args


def setup_logging(verbose: bool) -> None:
    """Log to stderr; the daemon captures it into the lab's run folder."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def run_async(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `main(stop)` where `stop` is set on SIGTERM or SIGINT; expected errors exit 2 quietly."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    try:
        return asyncio.run(runner())
    except WorkloadError as exc:
        log.error("%s", exc)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return EXIT_OK
