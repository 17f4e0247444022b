"""Capture a lab segment to a pcap file with tcpdump, inside the fabric or a node's namespace."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netns.build import BRIDGES, ns_name
from netns.record import NETNS_DIR
from netns.spec import FABRIC, LabError, LabSpec
from syncwall_errors import NotFoundError, StateError, SystemToolError

log = logging.getLogger(__name__)

SEGMENTS = tuple(BRIDGES)  # sync, inside, outside
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

Say = Callable[[str], None]


class CaptureError(SystemToolError, LabError):
    """tcpdump is missing, would not start, or failed."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to capture: a namespace and one of its interfaces."""

    namespace: str
    interface: str


@dataclass(frozen=True, slots=True)
class CaptureResult:
    path: Path
    packets: int | None  # as tcpdump counted them; None if it did not say
    dropped: int | None
    seconds: float


def target(spec: LabSpec, segment: str, node: str | None = None) -> Target:
    """The segment's bridge in the fabric namespace, or the node's own interface on it (the
    node's interfaces are named after their segment)."""
    if segment not in SEGMENTS:
        raise NotFoundError(f"no segment {segment!r}; segments are {', '.join(SEGMENTS)}")
    if node is None:
        return Target(ns_name(spec, FABRIC), BRIDGES[segment])
    if node not in spec.node_names:
        raise NotFoundError(f"no node {node!r} in lab {spec.name!r}; nodes are {', '.join(spec.node_names)}")
    return Target(ns_name(spec, node), segment)


def tcpdump_argv(t: Target, out: Path, snaplen: int = 0, buffer_kib: int | None = None) -> list[str]:
    # -Z root: Debian's tcpdump otherwise drops to its own user before opening the output file,
    # and could not write into a root-only folder. --immediate-mode and -U: each packet reaches
    # the file as it arrives; without them up to a second of the last packets waits in the
    # kernel's ring buffer and is lost when tcpdump is stopped. snaplen: bytes kept of each
    # packet (0: all); buffer_kib: the kernel's capture buffer (-B), which a fast stream on a
    # busy host overflows at tcpdump's default of 2 MiB.
    return ["ip", "netns", "exec", t.namespace, "tcpdump", "-i", t.interface, "-n", "-s", str(snaplen),
            *(["-B", str(buffer_kib)] if buffer_kib else []),
            "--immediate-mode", "-U", "-Z", "root", "-w", str(out)]


_COUNT_RE = re.compile(r"^(\d+) packets? (captured|dropped by kernel)", re.M)


def capture(spec: LabSpec, segment: str, out: Path, seconds: float = 10.0, node: str | None = None,
            say: Say = lambda _m: None, stop: threading.Event | None = None,
            at: Target | None = None, snaplen: int = 0, buffer_kib: int | None = None) -> CaptureResult:
    """Run tcpdump on the target until `seconds` pass, `stop` is set or KeyboardInterrupt;
    tcpdump is always stopped (and reaped) before this returns or raises. `at`: another
    interface of the lab (a host's), instead of the segment's bridge or node interface."""
    if seconds <= 0:
        raise NotFoundError(f"--seconds must be positive, got {seconds}")
    t = at or target(spec, segment, node)
    if not (NETNS_DIR / t.namespace).exists():
        raise StateError(f"lab {spec.name!r} has no namespace {t.namespace}: is it running?")
    if shutil.which("tcpdump") is None:
        raise CaptureError("tcpdump is not installed (apt-get install tcpdump)")
    out = Path(out).resolve()
    if not out.parent.is_dir():
        raise NotFoundError(f"cannot write {out}: no folder {out.parent}")
    stop = stop or threading.Event()
    # A session of its own: a Ctrl-C in the terminal reaches us, and we stop tcpdump cleanly.
    p = subprocess.Popen(tcpdump_argv(t, out, snaplen, buffer_kib), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    started = threading.Event()
    reader = threading.Thread(target=_read_stderr, args=(p, lines, started), daemon=True)
    reader.start()
    t0 = t1 = time.monotonic()
    try:
        # tcpdump says "listening on ..." once the socket is bound: only then does the clock run.
        while not started.wait(0.05):
            if p.poll() is not None or time.monotonic() - t0 > START_TIMEOUT_S:
                break
        if not started.is_set():
            _stop(p)
            reader.join(1.0)
            raise CaptureError(f"tcpdump did not start in {t.namespace} on {t.interface}: "
                               f"{' '.join(lines).strip() or f'exit code {p.returncode}'}")
        where = f"node {node}'s {segment}" if node else f"the {segment} bridge {t.interface}"
        say(f"capturing {where} (namespace {t.namespace}) for {seconds:g} s into {out}; Ctrl-C stops")
        t1 = time.monotonic()
        try:
            stop.wait(seconds)
        except KeyboardInterrupt:
            say("interrupted: stopping the capture")
    finally:
        _stop(p)
        reader.join(2.0)
    elapsed = time.monotonic() - t1
    if p.returncode not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise CaptureError(f"tcpdump failed ({p.returncode}): {' '.join(lines).strip()}")
    counts = {m.group(2): int(m.group(1)) for m in _COUNT_RE.finditer("\n".join(lines))}
    res = CaptureResult(out, counts.get("captured"), counts.get("dropped by kernel"), elapsed)
    say(f"captured {res.packets if res.packets is not None else '?'} packets in {elapsed:.1f} s"
        + (f" ({res.dropped} dropped by the kernel)" if res.dropped else "") + f" into {out}")
    return res


def _read_stderr(p: subprocess.Popen[str], lines: list[str], started: threading.Event) -> None:
    assert p.stderr is not None
    for line in p.stderr:
        lines.append(line.rstrip())
        log.debug("tcpdump: %s", line.rstrip())
        if "listening on" in line:  # "tcpdump: listening on IFACE, link-type ..."
            started.set()


def _stop(p: subprocess.Popen[str]) -> None:
    """SIGINT makes tcpdump flush and print its counts; kill it if it does not exit in time."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
