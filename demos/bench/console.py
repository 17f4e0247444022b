"""`syncwall bench console`: what watching costs. The console's CPU (utime + stime of its
process, from /proc, over a measured window) on a real lab holding ~10k connections and 200
flows, in each of its views, beside the same console paused (its floor) in the same run; and
the same for a browser viewer (`syncwall serve` + headless Chromium): the viewer console that
serve starts, serve itself and the browser, each apart.

The load: 200 tracked flows (`traffic start tcp --flows 100` on c1 and on c2: the flows board
shows them) plus background connections opened by the same workload program run straight in
the clients' namespaces (SWBENCH_CONSOLE_CONNS in all, default 10000), so the tables hold
10k rows but the flows board 200.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from demos.baselines import BenchError
from demos.bench.lab import (
    Progress,
    bench_lab,
    in_host,
    lab_nodes,
    lab_server_ip,
    stop_traffic,
    traffic,
    wait_until,
)
from demos.bench.stats import summarize

TICKS = os.sysconf("SC_CLK_TCK")
TMUX_SOCKET = "syncwall-bench-console"  # our own tmux server: nobody else's sessions
TRACKED_FLOWS = 100  # per client: 200 on the flows board
GOAL_CORES = 0.05


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cores_over(pids: list[int], window_s: float) -> list[float]:
    """Each process's CPU over the next window_s, in cores."""
    c0 = [_cpu_or_0(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(window_s)
    dt = time.monotonic() - t0
    return [max(0.0, _cpu_or_0(p) - c) / dt for p, c in zip(pids, c0, strict=True)]


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", TMUX_SOCKET, "-f", "/dev/null", *args], capture_output=True,
                          text=True, check=True).stdout


@contextlib.contextmanager
def background_connections(lab: str, total: int, progress: Progress) -> Iterator[None]:
    """`total` long-lived TCP connections from c1 and c2 to the echo server, not tracked as flows."""
    server = lab_server_ip(lab)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="swbench-console-") as tmp:
        try:
            for i, client in enumerate(("c1", "c2")):
                n = total // 2
                argv = [sys.executable, "-m", "netns.workloads.tcpflows", "client", "--server", server,
                        "--port", "5001", "--flows", str(n), "--interval-ms", "10000", "--stagger-ms", "1",
                        "--connect-timeout-s", "20", "--health-interval-s", "5",
                        "--health-file", f"{tmp}/bg{i}.json"]
                procs.append(subprocess.Popen(in_host(lab, client, argv), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True))
            progress(f"opening {total} background connections from c1 and c2")
            yield
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def own_connections(lab: str) -> int:
    return sum(int(n.get("own", 0)) for n in lab_nodes(lab).values() if n.get("state") == "active")


@contextlib.contextmanager
def tmux_console(lab: str, cols: int, rows: int) -> Iterator[int]:
    """The console in a tmux pane of its own server; yields its PID."""
    cmd = (f"cd {Path.cwd()} && exec env -u COLUMNS -u LINES {sys.executable} -m app.cli --lab {lab} console")
    _tmux("new-session", "-d", "-s", "console", "-x", str(cols), "-y", str(rows), cmd)
    try:
        yield int(_tmux("display-message", "-p", "-t", "console", "#{pane_pid}").strip())
    finally:
        subprocess.run(["tmux", "-L", TMUX_SOCKET, "kill-server"], capture_output=True, check=False)


def _key(key: str) -> None:
    _tmux("send-keys", "-t", "console", key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_tmux(lab: str, runs: int, window_s: float, progress: Progress) -> dict[str, Any]:
    views = {"connections": "c", "flows": "f", "timeline": "t"}
    samples: dict[str, list[float]] = {v: [] for v in [*views, "paused"]}
    with tmux_console(lab, 120, 40) as pid:
        time.sleep(5)  # the first screen and its first polls
        for r in range(runs):
            for view, key in views.items():
                _key(key)
                time.sleep(2)
                (c,) = cores_over([pid], window_s)
                samples[view].append(c)
                progress(f"run {r + 1}/{runs}: console on {view}: {c * 100:.1f}% of a core")
            _key("space")  # paused: the floor of the same process
            time.sleep(1)
            (c,) = cores_over([pid], window_s)
            samples["paused"].append(c)
            _key("space")
            _key("c")
            progress(f"run {r + 1}/{runs}: console paused: {c * 100:.1f}% of a core")
    return {v: summarize(s, 4) for v, s in samples.items()}


def chromium() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((p for n in names if (p := shutil.which(n))), None)


def measure_browser(lab: str, runs: int, window_s: float, progress: Progress) -> dict[str, Any]:
    browser = chromium()
    if browser is None:
        return {"skipped": "no chromium on this machine (apt-get install chromium)"}
    port = _free_port()
    serve = subprocess.Popen([sys.executable, "-m", "app.cli", "--lab", lab, "serve", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    samples: dict[str, list[float]] = {"viewer": [], "serve": [], "browser": []}
    with tempfile.TemporaryDirectory(prefix="swbench-chromium-") as profile:
        web: subprocess.Popen[bytes] | None = None
        try:
            wait_until("serve listening", lambda: _listening(port), 20)
            web = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                                    "--window-size=1280,800", f"--user-data-dir={profile}",
                                    f"http://localhost:{port}/"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
            viewer = wait_until("the viewer console serve starts for the browser",
                                lambda: next((p for p in descendants(serve.pid) if _is_console(p)), None),
                                30, 0.2)
            time.sleep(5)
            for r in range(runs):
                tabs = [web.pid, *descendants(web.pid)]
                v, sv, *bw = cores_over([viewer, serve.pid, *tabs], window_s)
                samples["viewer"].append(v)
                samples["serve"].append(sv)
                samples["browser"].append(sum(bw))
                progress(f"run {r + 1}/{runs}: browser viewer console {v * 100:.1f}%, serve {sv * 100:.1f}%, "
                         f"chromium {sum(bw) * 100:.1f}% of a core")
        finally:
            for p in (web, serve):
                if p is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGTERM)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
    return {k: summarize(v, 4) for k, v in samples.items()}


def _cpu_or_0(pid: int) -> float:
    try:
        return cpu_s(pid)
    except OSError:
        return 0.0


def _is_console(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"console" in argv and b"--viewer" in argv


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def bench_console(runs: int, lab: str | None, progress: Progress) -> dict[str, Any]:
    if shutil.which("tmux") is None:
        raise BenchError("bench console drives the console in tmux: apt-get install tmux")
    total = int(os.environ.get("SWBENCH_CONSOLE_CONNS", "10000"))
    window_s = float(os.environ.get("SWBENCH_CONSOLE_WINDOW_S", "10"))
    with bench_lab(lab, progress) as name:
        try:
            for client in ("c1", "c2"):
                traffic(name, "tcp", client, flows=TRACKED_FLOWS, interval_ms=1000)
            with background_connections(name, total - 2 * TRACKED_FLOWS, progress):
                held = wait_until(f"{total} connections in the nodes' tables",
                                  lambda: (n := own_connections(name)) >= total * 0.95 and n, 120, 1.0)
                progress(f"the nodes hold {held} own connections")
                tui = measure_tmux(name, runs, window_s, progress)
                web = measure_browser(name, runs, window_s, progress)
                held_after = own_connections(name)
        finally:
            stop_traffic(name)
    worst = max(tui[v]["median"] for v in ("connections", "flows", "timeline"))
    return {
        "what": "CPU of the console process (utime + stime from /proc/PID/stat) over "
                f"{window_s:g} s windows, in cores, at 120x40 in tmux, per view, and paused (its floor); "
                "a browser viewer: the console `syncwall serve` starts for headless Chromium, and serve",
        "connections": {"before": held, "after": held_after},
        "flows": 2 * TRACKED_FLOWS,
        "tmux_console": tui,
        "browser_viewer": web,
        "worst_view_cores": round(worst, 4),
        "goal_met": worst <= GOAL_CORES and (web.get("viewer", {}).get("median", 0.0) <= GOAL_CORES),
        "targets": {"console and browser viewer": f"<= {GOAL_CORES} cores (5% of a core)"},
    }
