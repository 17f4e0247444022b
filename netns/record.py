"""What a lab made, saved after every step, and the teardown that removes exactly that."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netns.spec import LabError

log = logging.getLogger(__name__)

RUN_ROOT = Path("/run/syncwall")
NETNS_DIR = Path("/run/netns")
RECORD_FILE = "record.json"
TERM_WAIT_S = 1.0


class RecordError(LabError):
    """A lab record is missing or unreadable."""


@dataclass(slots=True)
class NsEntry:
    """A namespace the lab created, identified by the inode of its /run/netns bind mount."""

    name: str
    inode: int

    def __post_init__(self) -> None:
        _typed(self, name=str, inode=int)
        if "/" in self.name:  # it becomes a path under /run/netns at teardown
            raise TypeError(f"NsEntry.name {self.name!r} is not a plain name")


@dataclass(slots=True)
class ProcEntry:
    """A process the lab started; the start time guards against a reused pid."""

    pid: int
    start_time: int
    role: str
    name: str

    def __post_init__(self) -> None:
        _typed(self, pid=int, start_time=int, role=str, name=str)


def _typed(entry: object, **types: type) -> None:
    """A record read back from disk may be damaged: a wrong type is refused before teardown
    uses it (a namespace name that is a number must not become a path)."""
    for name, want in types.items():
        value = getattr(entry, name)
        if not isinstance(value, want) or isinstance(value, bool):
            raise TypeError(f"{type(entry).__name__}.{name} is {value!r}, not a {want.__name__}")
        if isinstance(value, str) and not value:
            raise TypeError(f"{type(entry).__name__}.{name} is empty")


@dataclass(slots=True)
class LabRecord:
    """Everything a lab made. Saved to `run_dir/record.json` after every change."""

    lab: str
    run_dir: Path
    namespaces: list[NsEntry] = field(default_factory=list)
    processes: list[ProcEntry] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run_dir / RECORD_FILE

    def save(self) -> None:
        # Write then rename: a crash mid-write must never leave a record we cannot read.
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        tmp = self.run_dir / (RECORD_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, run_dir: Path | str) -> LabRecord:
        path = Path(run_dir) / RECORD_FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                lab=data["lab"],
                # Where the record was found, not what it says: teardown deletes this folder.
                run_dir=path.parent,
                namespaces=[NsEntry(**n) for n in data["namespaces"]],
                processes=[ProcEntry(**p) for p in data["processes"]],
                created=data["created"],
                meta=data.get("meta", {}),
            )
        except FileNotFoundError as e:
            raise RecordError(f"no lab record at {path}") from e
        except (ValueError, KeyError, TypeError) as e:
            raise RecordError(f"lab record {path} is damaged ({e}); remove it by hand") from e

    def add_namespace(self, name: str) -> None:
        self.namespaces.append(NsEntry(name, ns_inode(name)))
        self.save()

    def add_process(self, pid: int, role: str, name: str) -> ProcEntry:
        start = proc_start_time(pid)
        if start is None:
            raise RecordError(f"process {pid} ({role} {name}) is not running; nothing to record")
        entry = ProcEntry(pid, start, role, name)
        self.processes.append(entry)
        self.save()
        return entry

    def remove_process(self, pid: int) -> None:
        self.processes = [p for p in self.processes if p.pid != pid]
        self.save()

    def namespace_names(self) -> list[str]:
        return [n.name for n in self.namespaces]


def run_dir_for(lab: str) -> Path:
    return RUN_ROOT / lab


def make_run_dir(run_dir: Path) -> None:
    # 0700: the control socket and the record are for root only.
    run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)


def labs_running(root: Path = RUN_ROOT) -> list[str]:
    """Names of labs that have a record under the run root (running, or crashed and not cleaned)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / RECORD_FILE).is_file())


def ns_inode(name: str) -> int:
    return os.stat(NETNS_DIR / name).st_ino


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[22 - 3])


def owner_meta(pid: int | None = None) -> dict[str, int]:
    """Record meta naming the process that owns a lab without a daemon (a bench's own topology):
    pid and start time, so `owner_alive` is not fooled by a reused pid."""
    pid = os.getpid() if pid is None else pid
    return {"owner_pid": pid, "owner_start": proc_start_time(pid) or 0}


def owner_alive(record: LabRecord) -> int | None:
    """The pid of the process named by `owner_meta` in the record, while it still runs."""
    pid, start = record.meta.get("owner_pid"), record.meta.get("owner_start")
    if not isinstance(pid, int) or not isinstance(start, int):
        return None
    return pid if alive(ProcEntry(pid, start, "owner", "lab owner")) else None


def alive(entry: ProcEntry) -> bool:
    """True while the recorded process runs: same pid, same start time, not a zombie."""
    start = proc_start_time(entry.pid)
    if start is None:
        return False
    if start != entry.start_time:
        return False
    # A zombie is dead for our purposes (its parent will reap it).
    try:
        state = Path(f"/proc/{entry.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _signal(entries: list[ProcEntry], sig: signal.Signals) -> None:
    for e in entries:
        if alive(e):
            with contextlib.suppress(ProcessLookupError):
                os.kill(e.pid, sig)


def stop_processes(entries: list[ProcEntry], wait_s: float = TERM_WAIT_S) -> None:
    """SIGTERM, a short wait, then SIGKILL; only processes whose start time still matches."""
    live = [e for e in entries if alive(e)]
    if not live:
        return
    _signal(live, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        live = [e for e in live if alive(e)]
        if not live:
            return
        time.sleep(0.02)
    for e in live:
        log.warning("process %d (%s %s) ignored SIGTERM; killing it", e.pid, e.role, e.name)
    _signal(live, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(alive(e) for e in live):
        time.sleep(0.02)


def _pids_in_netns(inode: int) -> list[ProcEntry]:
    """Processes whose network namespace is `inode`: they keep a deleted namespace alive."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            if os.stat(d / "ns" / "net").st_ino != inode:
                continue
        except OSError:
            continue
        start = proc_start_time(pid)
        if start is not None:
            found.append(ProcEntry(pid, start, "stray", "in lab namespace"))
    return found


def _remove_namespace(entry: NsEntry) -> None:
    path = NETNS_DIR / entry.name
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return
    if inode != entry.inode:
        log.warning("namespace %s is not the one this lab made (inode changed); left alone", entry.name)
        return
    # Whatever still runs inside (a `syncwall exec` shell, a workload we lost track of)
    # would keep the namespace and its links alive after the unmount; the inode match
    # proves the namespace is ours.
    stop_processes(_pids_in_netns(inode))
    from pyroute2 import netns as pr_netns  # here: pyroute2 costs every CLI call 0.1 s to import

    pr_netns.remove(entry.name)


def teardown(record: LabRecord) -> None:
    """Remove exactly what the record lists: processes, then namespaces, then the run dir.

    Idempotent: anything already gone is skipped, so a second call is harmless.
    """
    stop_processes(list(record.processes))
    # Hosts and nodes first, the fabric last: by then every veth peer is already gone.
    for entry in reversed(record.namespaces):
        _remove_namespace(entry)
    # Only a folder that holds this lab's record is removed: a wrong path never costs a tree.
    if _is_record_dir(record):
        shutil.rmtree(record.run_dir, ignore_errors=True)
    log.info("lab %s removed", record.lab)


def _is_record_dir(record: LabRecord) -> bool:
    try:
        return bool(json.loads(record.path.read_text()).get("lab") == record.lab)
    except (OSError, ValueError, AttributeError):
        return False


def clean(run_dir: Path) -> bool:
    """Teardown from the record left in `run_dir`; False when there is no record."""
    try:
        record = LabRecord.load(run_dir)
    except RecordError:
        return False
    teardown(record)
    return True
