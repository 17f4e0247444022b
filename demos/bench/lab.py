"""The benches' link to the lab: start one of their own (or use --lab) with netns.lab, drive it
through its control API as an operator would, run programs in its hosts, read flows and node
status, and report progress."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from demos import baselines
from demos.baselines import BenchError
from netns import lab as lab_life
from netns.control import ControlClient, ControlError
from netns.lab import check_host, load_lab_of
from netns.record import RUN_ROOT
from netns.spec import ns_name
from syncwall_errors import SyncwallError

BENCH_LAB = "swbench"


class Progress:
    """Progress lines on stderr with the time since the bench started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        sys.stderr.write(f"[{self.name} {time.monotonic() - self.t0:6.1f}s] {msg}\n")
        sys.stderr.flush()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def lab_request(lab: str, msg: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One control request to the lab's daemon; a refusal or no answer is a BenchError."""
    c = ControlClient(RUN_ROOT / lab / "control.sock", timeout_s)
    try:
        reply = c.request(msg)
    except ControlError as e:
        raise BenchError(f"lab {lab!r} does not answer: {e}") from e
    finally:
        c.close()
    if not reply.get("ok", True):
        raise BenchError(f"lab {lab!r} refused {msg.get('cmd')}: {reply.get('error')}")
    return reply


def set_policy(lab: str, policy: str, interval_ms: int, batch_ms: int | None = None) -> None:
    """As `syncwall policy POLICY --interval-ms N [--batch-ms B]` does."""
    req: dict[str, Any] = {"cmd": "policy", "policy": policy, "interval_ms": interval_ms}
    if batch_ms is not None:
        req["batch_ms"] = batch_ms
    lab_request(lab, req)


def traffic(lab: str, kind: str, client: str = "c1", **fields: Any) -> dict[str, Any]:
    """Start a workload, as `syncwall traffic start KIND --client C ...` does; the daemon's reply."""
    return lab_request(lab, {"cmd": "traffic", "action": "start", "kind": kind, "client": client, **fields})


def host_ns(lab: str, host: str) -> str:
    """The namespace of a lab host or node."""
    spec = load_lab_of(lab)
    try:
        check_host(spec, host)
    except SyncwallError as e:
        raise BenchError(str(e)) from e
    return ns_name(spec.name, host)


def in_host(lab: str, host: str, argv: list[str]) -> list[str]:
    """argv run inside a lab host's namespace (as `syncwall exec HOST -- ARGV` does)."""
    return ["ip", "netns", "exec", host_ns(lab, host), *argv]


def run_in(lab: str, host: str, argv: list[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """Run a program inside a lab host; its failure is a BenchError with its stderr."""
    try:
        p = subprocess.run(in_host(lab, host, argv), capture_output=True, text=True, timeout=timeout_s,
                           check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(argv)} in {host} did not finish within {timeout_s:g} s") from e
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {host} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p


def lab_nodes(lab: str) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in lab_request(lab, {"cmd": "status"})["nodes"]}


def wait_until(what: str, pred: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise BenchError(f"timed out after {timeout_s} s waiting for {what}")


def up_options(overrides: Mapping[str, Any] | None, env: Mapping[str, str]) -> dict[str, Any]:
    """What our own bench lab is started with: the bench's overrides, and SWBENCH_NODES as the
    node count unless the bench sets its own."""
    opts = dict(overrides or {})
    want = env.get("SWBENCH_NODES", "").strip()
    if want and "nodes" not in opts:
        try:
            opts["nodes"] = int(want)
        except ValueError as e:
            raise BenchError(f"SWBENCH_NODES must be a node count, not {want!r}") from e
    return opts


@contextlib.contextmanager
def bench_lab(lab: str | None, progress: Progress, policy: str | None = None,
              settings: str = "", overrides: dict[str, Any] | None = None) -> Iterator[str]:
    """A running lab: the one named by --lab (left running), else our own default-topology lab
    (`settings`: TOML lines for its file; `overrides`: what `syncwall up` options set, e.g. nodes).
    SWBENCH_NODES=N: our own lab has N nodes (the default lab's 3 otherwise), unless the bench
    sets its own count (resync's 2 nodes)."""
    if lab:
        if not (RUN_ROOT / lab / "control.sock").exists():
            raise BenchError(f"lab {lab!r} is not running; start it with `syncwall up` or drop --lab")
        yield lab
        return
    if (RUN_ROOT / BENCH_LAB / "control.sock").exists():
        raise BenchError(f"a bench lab {BENCH_LAB!r} is already running (another bench?); "
                         f"stop it with `syncwall --lab {BENCH_LAB} down`")
    with tempfile.TemporaryDirectory(prefix="swbench-") as tmp:
        lab_file = Path(tmp) / "lab.toml"
        # The default topology under our own name, so a lab someone else runs is never touched.
        lab_file.write_text(f'name = "{BENCH_LAB}"\n' + (f'policy = "{policy}"\n' if policy else "")
                            + settings)
        up_opts = up_options(overrides, os.environ)
        nodes_said = f", {up_opts['nodes']} nodes" if "nodes" in up_opts else ""
        progress(f"starting lab {BENCH_LAB!r} (default topology{nodes_said}): syncwall up")
        try:
            lab_life.up(BENCH_LAB, lab_file, up_opts)
        except SyncwallError as e:
            with contextlib.suppress(SyncwallError):
                lab_life.clean(BENCH_LAB)
            raise BenchError(f"lab {BENCH_LAB!r} did not come up: {e}") from e
        try:
            wait_until("every node active with buckets", lambda: all(
                n["state"] == "active" and n["buckets"] for n in lab_nodes(BENCH_LAB).values()), 60)
            yield BENCH_LAB
        finally:
            progress(f"stopping lab {BENCH_LAB!r}: syncwall down")
            try:
                lab_life.down(BENCH_LAB, say=progress)
            except SyncwallError as e:
                progress(f"down failed ({e}); cleaning by record")
                with contextlib.suppress(SyncwallError):
                    lab_life.clean(BENCH_LAB)


def flows(lab: str, prefix: str) -> list[dict[str, Any]]:
    snap = lab_request(lab, {"cmd": "snapshot", "max_events": 0})
    return [f for f in snap.get("flows", [])
            if str(f.get("workload", "")).startswith(prefix) or str(f.get("name", "")).startswith(prefix)]


def stop_traffic(lab: str) -> None:
    with contextlib.suppress(BenchError):
        lab_request(lab, {"cmd": "traffic", "action": "stop"})
    time.sleep(0.5)
    with contextlib.suppress(BenchError):
        lab_request(lab, {"cmd": "traffic", "action": "clear"})


def lab_server_ip(lab: str) -> str:
    spec = load_lab_of(lab)
    return str(next(h.ip for h in spec.hosts if h.role == "server"))


def node_status(lab: str, node: str) -> dict[str, Any]:
    """A node's own status, straight from its control socket (the daemon's copy may be 250 ms old)."""
    path = RUN_ROOT / lab / "nodes" / f"{node}.sock"
    return baselines.node_request(path, {"cmd": "status"})


IPERF_PORT = 5201  # inside the default rules' tcp/udp 5000-5999


@contextlib.contextmanager
def iperf3_server(lab: str, host: str = "s1", port: int = IPERF_PORT) -> Iterator[str]:
    """An iperf3 server in a lab host for the block's duration; yields the address it listens on."""
    ip = lab_server_ip(lab)
    server = subprocess.Popen(in_host(lab, host, ["iperf3", "-s", "-B", ip, "-p", str(port)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        baselines.wait_port(host_ns(lab, host), port)
        yield ip
    finally:
        baselines.stop_process(server)


def iperf3_argv(ip: str, args: list[str], duration_s: float, port: int = IPERF_PORT) -> list[str]:
    return ["iperf3", "-c", ip, "-p", str(port), "-t", str(max(1, round(duration_s))), "-J", *args]


def iperf3(lab: str, ip: str, args: list[str], duration_s: float, client: str = "c1",
           port: int = IPERF_PORT) -> dict[str, Any]:
    """One iperf3 client run from a lab host (JSON output); a failure is a BenchError."""
    out = run_in(lab, client, iperf3_argv(ip, args, duration_s, port), timeout_s=duration_s + 30)
    try:
        doc: dict[str, Any] = json.loads(out.stdout)
    except ValueError as e:
        raise BenchError(f"iperf3 in {client} printed no JSON: {out.stdout[-200:]!r}") from e
    if "error" in doc:
        raise BenchError(f"iperf3 in {client}: {doc['error']}")
    return doc
