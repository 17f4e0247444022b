"""The lab's lifecycle seen from outside the daemon: start it, find it, stop it, clean it up.

The CLI, demos, benches and tests call these; none of them knows how a daemon is started or
where its records live."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netns import api
from netns.control import ControlClient, ControlError
from netns.record import RUN_ROOT, LabRecord, RecordError, alive, owner_alive, teardown
from netns.spec import LabError, LabSpec, load_lab
from syncwall_errors import NotFoundError, StateError

UP_TIMEOUT_S = 60.0
DOWN_TIMEOUT_S = 30.0

Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class LabNotRunning(StateError, LabError):
    """No lab runs, or the named one has no live daemon."""


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running_labs() -> list[str]:
    """Labs with a record under the run root (alive or crashed)."""
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.name for p in RUN_ROOT.iterdir() if (p / "record.json").exists())


def daemon_pid(lab: str) -> int | None:
    """The pid of the lab's daemon if it is alive (same start time as recorded, not a zombie)."""
    try:
        rec = LabRecord.load(RUN_ROOT / lab)
    except (OSError, ValueError, RecordError):
        return None
    for p in rec.processes:
        if p.role == "daemon" and alive(p):
            return p.pid
    return None


def owner_pid(lab: str) -> int | None:
    """Who keeps the lab alive: its daemon, or the process that built a daemon-less topology (a
    bench's own namespaces, the peer cluster), while it runs. `clean` leaves such labs alone."""
    pid = daemon_pid(lab)
    if pid:
        return pid
    try:
        return owner_alive(LabRecord.load(RUN_ROOT / lab))
    except (OSError, ValueError, RecordError):
        return None


def live_labs() -> list[str]:
    return [lab for lab in running_labs() if daemon_pid(lab)]


def pick_lab(name: str | None) -> str:
    """The named lab, or the only one running."""
    if name:
        return name
    labs = live_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabNotRunning("no lab is running; start one with `syncwall up`")
    raise StateError(f"several labs run ({', '.join(labs)}); choose one with --lab")


def control_socket(lab: str) -> Path:
    return RUN_ROOT / lab / "control.sock"


def client(lab: str, timeout_s: float = 10.0) -> ControlClient:
    sock = control_socket(lab)
    if not sock.exists():
        raise LabNotRunning(f"lab {lab!r} is not running (no {sock})")
    return ControlClient(sock, timeout_s)


def load_lab_of(lab: str) -> LabSpec:
    """The spec of a running lab, as its daemon loaded it."""
    saved = RUN_ROOT / lab / "spec.json"
    if saved.exists():
        d = json.loads(saved.read_text())
        return load_lab(Path(d["lab_file"]) if d.get("lab_file") else None, d.get("overrides"))
    return load_lab(None)


def host_names(spec: LabSpec) -> set[str]:
    return {n.name for n in spec.nodes} | {h.name for h in spec.hosts}


def check_host(spec: LabSpec, host: str) -> None:
    names = host_names(spec)
    if host not in names:
        raise NotFoundError(f"no host {host!r} in lab {spec.name!r}; hosts are {', '.join(sorted(names))}")


def up(lab: str, lab_file: Path | None, overrides: dict[str, Any], say: Say = _quiet) -> tuple[int, float]:
    """Start the lab's daemon and wait until it is ready. Returns (daemon pid, seconds)."""
    run_dir = RUN_ROOT / lab
    pid = daemon_pid(lab)
    if pid:
        raise StateError(f"lab {lab!r} is already running (daemon pid {pid}); nothing changed. "
                         "Stop it with `syncwall down` first.")
    if (run_dir / "record.json").exists():
        say(f"lab {lab!r} crashed earlier; removing what it left behind first")
        clean(lab)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(RUN_ROOT, 0o700)
    for stale in ("ready", "failed"):
        (run_dir / stale).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "netns.daemon", "--run-dir", str(run_dir),
            "--overrides", json.dumps(overrides)]
    if lab_file:
        argv += ["--lab-file", str(lab_file)]
    t0 = time.monotonic()
    with open(run_dir / "daemon.stderr", "ab") as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errf, start_new_session=True)
    say(f"starting lab {lab!r} (daemon pid {proc.pid})")
    last = ""
    while time.monotonic() - t0 < UP_TIMEOUT_S:
        if (run_dir / "ready").exists():
            break
        if proc.poll() is not None or (run_dir / "failed").exists():
            why = (run_dir / "failed").read_text().strip() if (run_dir / "failed").exists() else ""
            proc.wait(timeout=10)
            raise LabError(f"the lab did not come up: {why or 'daemon exited'} "
                           f"(see {run_dir}/daemon.log; `syncwall clean` removes leftovers)")
        if (run_dir / "trace.jsonl").exists():
            # The daemon may be writing the last line right now: only complete lines count.
            lines = (run_dir / "trace.jsonl").read_text().split("\n")[:-1]
            if lines and lines[-1] != last:
                last = lines[-1]
                with contextlib.suppress(ValueError):
                    say(f"  {json.loads(last).get('text', '')}")
        time.sleep(0.1)
    else:
        raise LabError(f"the lab did not come up within {UP_TIMEOUT_S:.0f} s")
    return proc.pid, time.monotonic() - t0


def down(lab: str, say: Say = _quiet) -> float:
    """Ask the daemon to take the lab down; clean by record if it does not. Returns seconds."""
    pid = daemon_pid(lab)
    t0 = time.monotonic()
    if pid is None:
        raise LabNotRunning(f"lab {lab!r} has no live daemon; use `syncwall clean`")
    try:
        reply = client(lab).request(api.Down())
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "the lab refused")))
    except (ControlError, LabNotRunning) as e:
        say(f"lab {lab!r} does not answer ({e}); cleaning by record instead")
        clean(lab)
        return time.monotonic() - t0
    while pid_alive(pid) and time.monotonic() - t0 < DOWN_TIMEOUT_S:
        time.sleep(0.05)
    if pid_alive(pid) or (RUN_ROOT / lab / "record.json").exists():
        say("the daemon did not finish; cleaning by record")
        clean(lab)
    return time.monotonic() - t0


def clean(lab: str) -> None:
    """Remove what a lab made, by its record. Nothing happens if it left no record."""
    run_dir = RUN_ROOT / lab
    if not (run_dir / "record.json").exists():
        return
    try:
        rec = LabRecord.load(run_dir)
    except (OSError, ValueError) as e:
        raise RecordError(f"the record of lab {lab!r} in {run_dir} is unreadable ({e}); "
                          "remove what it made by hand") from e
    teardown(rec)
