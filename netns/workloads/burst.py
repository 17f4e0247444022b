"""Bursts of short TCP connections (connect, send, read the echo, close) against the tcpflows server.

`python -m netns.workloads.burst --server IP --port P --count K --rate R --health-file F`

Reports one flow of kind `burst`: successes, failures by reason, and the connections/s
achieved. Each connection has a new source port, so a burst spreads over every bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time

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

STOP_GRACE_S = 1.0


class Burst:
    """Counts of one burst; `one()` makes and checks a single short connection."""

    def __init__(self, name: str, server: str, port: int, bind_ip: str | None, timeout_s: float) -> None:
        self.server = server
        self.port = port
        self.bind_ip = bind_ip
        self.timeout_s = timeout_s
        self.flow = Flow(name=name, kind=FlowKind.BURST, src=bind_ip or "", dst=fmt_addr((server, port)))
        self.attempted = 0
        self.successes = 0
        self.failures = 0
        self.reasons: dict[str, int] = {}
        self.in_flight = 0
        self._durations_ms: list[float] = []
        self._start_mono = time.monotonic()
        self._progress_mono = self._start_mono

    async def one(self, index: int) -> None:
        self.attempted += 1
        self.in_flight += 1
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self._exchange(index), self.timeout_s)
        except TimeoutError:
            self._fail(f"timeout after {self.timeout_s:g} s")
        except ConnectionRefusedError:
            self._fail("connection refused")
        except ConnectionResetError:
            self._fail("connection reset")
        except asyncio.IncompleteReadError:
            self._fail("closed before the echo")
        except _EchoMismatch:
            self._fail("echo mismatch")
        except OSError as exc:
            self._fail(os.strerror(exc.errno) if exc.errno else type(exc).__name__)
        else:
            self.successes += 1
            self._durations_ms.append((time.monotonic() - t0) * 1000.0)
            self.flow.bytes += RECORD_SIZE
            self.flow.last_progress = time.time()
            if self.flow.health is FlowHealth.STALLED:
                self.flow.set_health(FlowHealth.HEALTHY, "connections succeed again")
        finally:
            self.in_flight -= 1
            self._progress_mono = time.monotonic()

    async def _exchange(self, index: int) -> None:
        local = (self.bind_ip, 0) if self.bind_ip else None
        reader, writer = await asyncio.open_connection(self.server, self.port, local_addr=local)
        try:
            record = encode_record(index, 0)
            writer.write(record)
            await writer.drain()
            if await reader.readexactly(RECORD_SIZE) != record:
                raise _EchoMismatch
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _fail(self, reason: str) -> None:
        self.failures += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        log.debug("connection failed: %s", reason)

    def update(self, now_mono: float) -> None:
        elapsed_s = max(now_mono - self._start_mono, 1e-6)
        self.flow.extra.update(
            attempted=self.attempted,
            successes=self.successes,
            failures=self.failures,
            failure_reasons=dict(self.reasons),
            in_flight=self.in_flight,
            conn_per_s=round(self.successes / elapsed_s, 1),
            duration_ms_p50=round(statistics.median(self._durations_ms), 2) if self._durations_ms else None,
            duration_ms_max=round(max(self._durations_ms), 2) if self._durations_ms else None,
        )
        if (
            self.in_flight
            and self.flow.health is FlowHealth.HEALTHY
            and now_mono - self._progress_mono > STALL_AFTER_S
        ):
            self.flow.set_health(
                FlowHealth.STALLED, f"no connection completed for {now_mono - self._progress_mono:.1f} s"
            )

    def finish(self) -> None:
        self.update(time.monotonic())
        summary = f"{self.successes} of {self.attempted} connections succeeded"
        abandoned = self.attempted - self.successes - self.failures
        if abandoned:
            summary += f" ({abandoned} abandoned at stop)"
        if self.failures:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
            self.flow.set_health(FlowHealth.FAILED, f"{summary}; failed: {reasons}")
        else:
            self.flow.set_health(FlowHealth.DONE, summary)


class _EchoMismatch(WorkloadError):
    """The echo differs from what was sent (internal; counted as a failure)."""


async def run_burst(args: argparse.Namespace, stop: asyncio.Event) -> int:
    writer = HealthWriter(args.health_file, interval_s=args.health_interval_s, workload=args.name)
    burst = Burst(args.name, args.server, args.port, args.bind_ip, args.timeout_s)
    limit = asyncio.Semaphore(args.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def limited(index: int) -> None:
        async with limit:
            await burst.one(index)

    log.info(
        "burst of %s connections at %g/s to %s:%d",
        args.count or "unlimited",
        args.rate,
        args.server,
        args.port,
    )
    period_s = 1.0 / args.rate
    next_t = time.monotonic()
    index = 0
    while not stop.is_set() and (args.count == 0 or index < args.count):
        task = asyncio.create_task(limited(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
        next_t += period_s
        burst.update(time.monotonic())
        writer.maybe_write([burst.flow])
        delay_s = next_t - time.monotonic()
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
    # On a stop, connections still open get a short grace, then are abandoned (not failed),
    # so that the daemon's shutdown is not held up by per-connection timeouts.
    grace_end = time.monotonic() + STOP_GRACE_S
    while tasks:
        burst.update(time.monotonic())
        writer.maybe_write([burst.flow])
        if stop.is_set() and time.monotonic() > grace_end:
            for task in tasks:
                task.cancel()
        await asyncio.wait(set(tasks), timeout=0.1)
    burst.finish()
    writer.write([burst.flow])
    log.info("%s", burst.flow.detail)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m netns.workloads.burst",
        description="Short TCP connections at a given rate against the tcpflows echo server.",
    )
    parser.add_argument("--server", type=ip_arg, required=True, help="echo server address")
    parser.add_argument("--port", type=port_arg, required=True, help="echo server port")
    parser.add_argument(
        "--count",
        type=non_negative_int,
        default=100,
        help="connections to make; 0 = until SIGTERM (default 100)",
    )
    parser.add_argument(
        "--rate", type=positive_float, default=50.0, help="new connections per second (default 50)"
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=64, help="most connections open at once (default 64)"
    )
    parser.add_argument(
        "--timeout-s",
        type=positive_float,
        default=5.0,
        help="per-connection limit for connect+echo (default 5)",
    )
    parser.add_argument("--health-file", required=True, help="where to write the health JSON")
    add_name_arg(parser)
    parser.add_argument("--bind-ip", type=ip_arg, default=None, help="local source address")
    parser.add_argument(
        "--health-interval-s",
        type=positive_float,
        default=0.25,
        help="how often to rewrite the health file (default 0.25)",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_workload_args(build_parser(), argv)
    setup_logging(args.verbose)
    return run_async(lambda stop: run_burst(args, stop))


if __name__ == "__main__":
    sys.exit(main())
