"""The lab daemon's control API in one place: every request and the shape of its reply.

The daemon parses every line it receives with `parse_request`; the CLI, the console, its fake
lab, demos and tests build requests from these classes. A request with a field the command
does not take, or a value out of range, is refused with an error that names the field, so a
client and the daemon can never again disagree silently (the console once sent `count` where
the daemon read `flows`, and 3 flows became 10).

Wire form: one JSON object per line, `{"cmd": NAME, ...fields}`; traffic requests also carry
`action` (start, stop, clear). Replies are `{"ok": true, ...}` or `{"ok": false, "error": TEXT}`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from syncwall_errors import UsageError

POLICIES = ("on-demand", "periodic", "hybrid")
SCOPES = ("own", "backup", "common")
TRAFFIC_KINDS = ("tcp", "udp", "burst", "ftp")
FTP_MODES = ("active", "passive")
FAULT_KINDS = ("loss", "partition", "slow", "cut", "heal")
CUT_LINKS = ("sync", "inside", "outside")
INTERVAL_MS = (10, 60_000)  # the sync policy's period
BATCH_MS = (0, 1000)  # how long a plain change may wait to share a sync datagram
MAX_LIMIT = 100_000
MAX_EVENTS = 100_000
MAX_TEXT = 200


class RequestError(UsageError):
    """A request the daemon refuses before acting: unknown command, unknown field, bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ---- value checks (each names the field it checks) ---------------------------------------------
def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"{field} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise RequestError(field, f"{field} must be between {lo} and {hi}, not {value}")
    return value


def _num(field: str, value: Any, lo: float, hi: float, *, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"{field} must be a number, not {value!r}")
    if value < lo or value > hi or (open_lo and value == lo):
        low = f"more than {lo:g}" if open_lo else f"at least {lo:g}"
        raise RequestError(field, f"{field} must be {low} and at most {hi:g}, not {value:g}")
    return float(value)


def _text(field: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value) or len(value) > MAX_TEXT:
        what = "a string" if empty else "a non-empty string"
        raise RequestError(field, f"{field} must be {what} of at most {MAX_TEXT} characters, "
                                  f"not {value!r}")
    return value


def _choice(field: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RequestError(field, f"{field} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                                  f"not {value!r}")
    return str(value)


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(field, f"{field} must be true or false, not {value!r}")
    return value


# ---- requests -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """One control request. Subclasses set CMD (and ACTION for traffic) and check their fields."""

    CMD: ClassVar[str] = ""
    ACTION: ClassVar[str] = ""
    READ_ONLY: ClassVar[bool] = False  # what a viewer console may send

    def to_dict(self) -> dict[str, Any]:
        """The wire form; fields left at None are left out (the daemon applies its default)."""
        out: dict[str, Any] = {"cmd": self.CMD}
        if self.ACTION:
            out["action"] = self.ACTION
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = [list(g) for g in value] if f.name == "groups" else value
        return out


@dataclass(frozen=True, slots=True)
class Status(Request):
    CMD: ClassVar[str] = "status"
    READ_ONLY: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Snapshot(Request):
    """Status plus the flows and the events after `since` (the daemon's clock, seconds)."""

    CMD: ClassVar[str] = "snapshot"
    READ_ONLY: ClassVar[bool] = True
    since: float = 0.0
    max_events: int = 500

    def __post_init__(self) -> None:
        _num("since", self.since, 0.0, 1e12)
        _int("max_events", self.max_events, 0, MAX_EVENTS)


@dataclass(frozen=True, slots=True)
class Table(Request):
    """One node's connection table in one scope, filtered, at most `limit` rows."""

    CMD: ClassVar[str] = "table"
    READ_ONLY: ClassVar[bool] = True
    node: str
    scope: str = "own"
    filter: str = ""
    limit: int = 500

    def __post_init__(self) -> None:
        _text("node", self.node)
        _choice("scope", self.scope, SCOPES)
        _text("filter", self.filter, empty=True)
        _int("limit", self.limit, 1, MAX_LIMIT)


@dataclass(frozen=True, slots=True)
class NodeAction(Request):
    """An operator's action on one node."""

    node: str

    def __post_init__(self) -> None:
        _text("node", self.node)


@dataclass(frozen=True, slots=True)
class Kill(NodeAction):
    """SIGKILL the node's engine."""

    CMD: ClassVar[str] = "kill"


@dataclass(frozen=True, slots=True)
class Crash(NodeAction):
    """Cut all of the node's links at once."""

    CMD: ClassVar[str] = "crash"


@dataclass(frozen=True, slots=True)
class Revive(NodeAction):
    """A fresh engine joins, resyncs and takes its buckets back."""

    CMD: ClassVar[str] = "revive"


@dataclass(frozen=True, slots=True)
class Offline(NodeAction):
    """A graceful leave: push all state to the backups, hand the buckets over, go."""

    CMD: ClassVar[str] = "offline"


@dataclass(frozen=True, slots=True)
class SetPolicy(Request):
    CMD: ClassVar[str] = "policy"
    policy: str
    interval_ms: int | None = None
    differential: bool | None = None
    batch_ms: int | None = None

    def __post_init__(self) -> None:
        _choice("policy", self.policy, POLICIES)
        if self.interval_ms is not None:
            _int("interval_ms", self.interval_ms, *INTERVAL_MS)
        if self.batch_ms is not None:
            _int("batch_ms", self.batch_ms, *BATCH_MS)
        if self.differential is not None:
            _bool("differential", self.differential)


@dataclass(frozen=True, slots=True)
class SetLossless(Request):
    """Lossless takeover on or off on every node (backups hold and replay their buckets' packets)."""

    CMD: ClassVar[str] = "lossless"
    on: bool = True

    def __post_init__(self) -> None:
        _bool("on", self.on)


@dataclass(frozen=True, slots=True)
class FullSync(Request):
    CMD: ClassVar[str] = "full_sync"


@dataclass(frozen=True, slots=True)
class Freeze(Request):
    """Hold every sync message until a step releases it."""

    CMD: ClassVar[str] = "freeze"


@dataclass(frozen=True, slots=True)
class Resume(Request):
    CMD: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True)
class Step(Request):
    """Release one held sync message (the channel must be frozen)."""

    CMD: ClassVar[str] = "step"


@dataclass(frozen=True, slots=True)
class Down(Request):
    CMD: ClassVar[str] = "down"


# What each traffic kind takes: field -> its default (what the daemon runs when it is left out).
# The daemon passes each as `--field-name VALUE` to the workload's module.
TRAFFIC_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "tcp": {"flows": 10, "interval_ms": 50, "stagger_ms": 20},
    "udp": {"flows": 4, "interval_ms": 50},
    "burst": {"count": 100, "rate": 50},
    "ftp": {"mode": "active", "sessions": 1, "interval_ms": 200, "file": "small.bin",
            "timeout_s": 3.0},
}
_OPTION_CHECKS: Mapping[str, Any] = {
    "flows": lambda v: _int("flows", v, 1, 1000),
    "interval_ms": lambda v: _int("interval_ms", v, 1, 60_000),
    "stagger_ms": lambda v: _int("stagger_ms", v, 0, 60_000),
    "count": lambda v: _int("count", v, 0, 1_000_000),  # burst: 0 = until stopped
    "rate": lambda v: _num("rate", v, 0.0, 100_000.0, open_lo=True),
    "mode": lambda v: _choice("mode", v, FTP_MODES),
    "sessions": lambda v: _int("sessions", v, 0, 100_000),  # ftp: 0 = until stopped
    "file": lambda v: _text("file", v),
    "timeout_s": lambda v: _num("timeout_s", v, 0.0, 600.0, open_lo=True),
}


@dataclass(frozen=True, slots=True)
class TrafficStart(Request):
    """Start a workload on an inside client against a server of the kind's role.

    Only the options of its kind are accepted (`flows` is for tcp and udp, `count` for burst,
    `sessions` and `mode` for ftp); `options()` gives every option with the defaults filled in.
    """

    CMD: ClassVar[str] = "traffic"
    ACTION: ClassVar[str] = "start"
    kind: str = "tcp"
    client: str = "c1"
    server: str | None = None
    flows: int | None = None
    interval_ms: int | None = None
    stagger_ms: int | None = None
    count: int | None = None
    rate: float | None = None
    mode: str | None = None
    sessions: int | None = None
    file: str | None = None
    timeout_s: float | None = None
    ipv6: bool = False  # to the server's IPv6 address (a dual-stack lab)

    def __post_init__(self) -> None:
        _choice("kind", self.kind, TRAFFIC_KINDS)
        _text("client", self.client)
        _bool("ipv6", self.ipv6)
        if self.server is not None:
            _text("server", self.server)
        takes = TRAFFIC_OPTIONS[self.kind]
        for name, check in _OPTION_CHECKS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if name not in takes:
                raise RequestError(name, f"{name} does not apply to {self.kind} traffic; "
                                         f"{self.kind} takes {', '.join(takes)}")
            check(value)

    def options(self) -> dict[str, Any]:
        """Every option of this kind, the given ones and the defaults of the rest."""
        return {name: default if getattr(self, name) is None else getattr(self, name)
                for name, default in TRAFFIC_OPTIONS[self.kind].items()}


@dataclass(frozen=True, slots=True)
class TrafficStop(Request):
    """Stop one workload by name, or every traffic workload (never the servers)."""

    CMD: ClassVar[str] = "traffic"
    ACTION: ClassVar[str] = "stop"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _text("name", self.name)


@dataclass(frozen=True, slots=True)
class TrafficClear(Request):
    """Forget the health reports of workloads that have ended."""

    CMD: ClassVar[str] = "traffic"
    ACTION: ClassVar[str] = "clear"


_FAULT_FIELDS: Mapping[str, tuple[set[str], set[str]]] = {
    # kind -> (required fields, optional fields)
    "loss": ({"rate"}, {"node"}),
    "partition": ({"groups"}, set()),
    "slow": ({"node", "delay_ms"}, set()),
    "cut": ({"node", "link"}, {"silent", "flap_ms"}),
    "heal": (set(), set()),
}


@dataclass(frozen=True, slots=True)
class Fault(Request):
    """Fault injection: loss, partition, slow peer on the sync segment; a cut of one node's
    link (sync, inside or outside: link down, or `silent` with the carrier up, optionally
    flapping every `flap_ms`); heal (netns/faults.py)."""

    CMD: ClassVar[str] = "fault"
    kind: str
    node: str | None = None
    rate: float | None = None
    groups: tuple[tuple[str, ...], ...] | None = None
    delay_ms: int | None = None
    link: str | None = None
    silent: bool | None = None
    flap_ms: int | None = None

    def __post_init__(self) -> None:
        _choice("kind", self.kind, FAULT_KINDS)
        required, optional = _FAULT_FIELDS[self.kind]
        for name in ("node", "rate", "groups", "delay_ms", "link", "silent", "flap_ms"):
            given = getattr(self, name) is not None
            if name in required and not given:
                raise RequestError(name, f"a {self.kind} fault needs {name}")
            if given and name not in required | optional:
                raise RequestError(name, f"{name} does not apply to a {self.kind} fault")
        if self.node is not None:
            _text("node", self.node)
        if self.rate is not None:
            _num("rate", self.rate, 0.0, 1.0)
        if self.delay_ms is not None:
            _int("delay_ms", self.delay_ms, 0, 60_000)
        if self.link is not None:
            _choice("link", self.link, CUT_LINKS)
        if self.silent is not None and not isinstance(self.silent, bool):
            raise RequestError("silent", f"silent is true or false, not {self.silent!r}")
        if self.flap_ms is not None:
            _int("flap_ms", self.flap_ms, 20, 60_000)
        if self.groups is not None:
            groups = _groups(self.groups)
            object.__setattr__(self, "groups", groups)


@dataclass(frozen=True, slots=True)
class AuthLogin(Request):
    """Log USER in from a lab host: a user record, common state, admits the host on every node."""

    CMD: ClassVar[str] = "auth_login"
    user: str
    host: str

    def __post_init__(self) -> None:
        _text("user", self.user)
        if not self.user.isprintable() or len(self.user) > 64:
            raise RequestError("user", f"user must be 1-64 printable characters, not {self.user!r}")
        _text("host", self.host)


@dataclass(frozen=True, slots=True)
class AuthLogout(Request):
    """Log a lab host out: its user record is deleted on every node."""

    CMD: ClassVar[str] = "auth_logout"
    host: str

    def __post_init__(self) -> None:
        _text("host", self.host)


@dataclass(frozen=True, slots=True)
class Unblock(Request):
    """Lift a lab host's blocklist entry before its timeout: the entry is deleted on every node."""

    CMD: ClassVar[str] = "unblock"
    host: str

    def __post_init__(self) -> None:
        _text("host", self.host)


@dataclass(frozen=True, slots=True)
class Guards(Request):
    """Every node's blocklist and user entries, with when each node got them."""

    CMD: ClassVar[str] = "guards"
    READ_ONLY: ClassVar[bool] = True


def _groups(value: Any) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(
            isinstance(g, (list, tuple)) and g and all(isinstance(n, str) and n for n in g)
            for g in value):
        raise RequestError("groups", "groups must be two or more non-empty lists of node names, "
                                     f"not {value!r}")
    names = [n for g in value for n in g]
    if len(names) != len(set(names)):
        raise RequestError("groups", f"a node is in two groups: {value!r}")
    return tuple(tuple(g) for g in value)


REQUESTS: Mapping[tuple[str, str], type[Request]] = {
    (cls.CMD, cls.ACTION): cls
    for cls in (Status, Snapshot, Table, Kill, Crash, Revive, Offline, SetPolicy, SetLossless, FullSync,
                Freeze, Resume, Step, Down, TrafficStart, TrafficStop, TrafficClear, Fault,
                AuthLogin, AuthLogout, Unblock, Guards)
}
COMMANDS = sorted({cmd for cmd, _ in REQUESTS})


def parse_request(msg: Any) -> Request:
    """The typed request for one decoded JSON line; RequestError names what is wrong."""
    if not isinstance(msg, dict):
        raise RequestError("", "a request is a JSON object")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise RequestError("cmd", f"unknown command {cmd!r}; commands are {', '.join(COMMANDS)}")
    action = ""
    if cmd == "traffic":
        action = msg.get("action", "start")
        actions = [a for c, a in REQUESTS if c == cmd]
        _choice("action", action, actions)
    cls = REQUESTS[(cmd, action)]
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(msg) - names - {"cmd", "action"})
    if extra:
        what = f"{cmd} {action}".strip()
        takes = ", ".join(sorted(names)) or "no fields"
        raise RequestError(extra[0], f"{what} does not take {', '.join(extra)} (it takes {takes})")
    fields = {k: v for k, v in msg.items() if k in names}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in fields and f.default is dataclasses.MISSING]
    if missing:
        raise RequestError(missing[0], f"{cmd} needs {', '.join(missing)}")
    if "groups" in fields:
        fields["groups"] = _groups(fields["groups"])
    return cls(**fields)


def as_request(msg: Request | Mapping[str, Any]) -> Request:
    """A request object from either form (clients may still hold dicts)."""
    return msg if isinstance(msg, Request) else parse_request(dict(msg))


def wire(msg: Request | Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of either form, checked: a client never sends what the daemon refuses."""
    return as_request(msg).to_dict()


# ---- replies ------------------------------------------------------------------------------------
def refused(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


class FlowReport(TypedDict, total=False):
    """One flow in a snapshot's `flows` (written by netns/workloads/health.py, completed by the
    daemon). `src` is the client side, `dst` the server side."""

    name: str
    kind: str
    workload: str
    src: str
    dst: str
    health: str  # healthy, stalled, broken, done, failed
    bytes: int
    detail: str
    started: float
    last_progress: float
    longest_pause_ms: float
    pause_windows: list[list[float]]  # tcp: closed pause windows [mark t, longest ms, its end t]
    node: str
    age_s: float | None


class NodeReport(TypedDict, total=False):
    """One node in `status` and `snapshot` replies (see LabDaemon.node_view)."""

    name: str
    state: str  # active, joining, failed, offline
    intent: str
    buckets: list[int]
    backs_up: list[str]
    backups: list[str]
    sync_address: str
    own: int
    backup: int
    common: int
    held: int
    sync_msgs_per_s: float


class TrafficStarted(TypedDict):
    ok: bool
    name: str
    health_file: str
