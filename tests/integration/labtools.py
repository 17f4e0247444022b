"""Helpers for tests that drive a real lab through the `syncwall` command, as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netns.control import ControlClient
from netns.record import RUN_ROOT


def sw(*args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `syncwall ARGS` the way a user does; fail with its stderr when it fails."""
    # Name the lab every time: other labs (a bench, another test) may run beside this one.
    lab = [] if "--lab" in args else ["--lab", "default"]
    p = subprocess.run([sys.executable, "-m", "app.cli", *lab, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"syncwall {' '.join(args)} failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    return p


def sw_json(*args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(sw(*args, "--json").stdout)
    return out


def _ask(lab: str, msg: dict[str, Any]) -> dict[str, Any]:
    c = ControlClient(RUN_ROOT / lab / "control.sock")
    try:
        return c.request(msg)
    finally:
        c.close()


def status(lab: str = "default") -> dict[str, Any]:
    """What `syncwall status --json` prints, asked on the control socket: tests poll it many
    times a second, and a CLI process per poll cost seconds per test and loaded the lab's CPU
    (the CLI's own status path has its tests: test_cli_json, test_api_contract)."""
    st = _ask(lab, {"cmd": "status"})
    st.pop("ok", None)
    return st


def snapshot(lab: str = "default") -> dict[str, Any]:
    return _ask(lab, {"cmd": "snapshot", "max_events": 2000})


def wait_for(what: str, pred: Callable[[], Any], timeout_s: float = 20, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def nodes(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in st["nodes"]}


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def flows_of(snap: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    return [f for f in snap.get("flows", []) if str(f.get("workload", "")).startswith(workload)
            or str(f.get("name", "")).startswith(workload)]


@contextmanager
def running_lab(lab: str = "default", lab_file: Path | None = None,
                up_args: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """`syncwall up [up_args]` a lab for the body; afterwards it must be down with its
    namespaces gone."""
    before = netns_names()
    up = sw_json("up", *([str(lab_file)] if lab_file else []), *up_args)
    made = netns_names() - before
    try:
        yield up
    finally:
        sw("down", "--lab", lab, check=False)
        if (RUN_ROOT / lab / "record.json").exists():
            sw("clean", "--lab", lab, "--force", check=False)
        assert made and not netns_names() & made, "the lab left namespaces behind"
