"""The `syncwall` command: start, watch, break and stop a lab; run demos and benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from netns import api
from netns import lab as lab_life
from netns.control import ControlError
from netns.lab import daemon_pid, live_labs, load_lab_of, pick_lab, running_labs
from netns.record import RUN_ROOT
from netns.spec import LabSpec
from syncwall_errors import SyncwallError, UsageError

DEFAULT_LAB = "default"


class CliError(SyncwallError):
    """Something the operator can fix; printed without a traceback."""


def err(msg: str) -> None:
    print(f"syncwall: {msg}", file=sys.stderr)


def call(lab: str, req: api.Request, timeout_s: float = 10.0) -> dict[str, Any]:
    try:
        reply = lab_life.client(lab, timeout_s).request(req)
    except ControlError as e:
        raise CliError(f"lab {lab!r} does not answer: {e}") from e
    if not reply.get("ok"):
        raise CliError(str(reply.get("error", "the lab refused")))
    return reply


# argparse types: a bad number is refused before anything is sent (exit 2, one usage line).
def _whole(text: str, lo: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{value} must be {what}")
    return value


def positive(text: str) -> int:
    return _whole(text, 1, "at least 1")


def non_negative(text: str) -> int:
    return _whole(text, 0, "0 or more")


def port(text: str) -> int:
    value = _whole(text, 1, "a port number, 1..65535")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} must be a port number, 1..65535")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def need_root() -> None:
    if os.geteuid() != 0:
        raise CliError("this needs root: it builds network namespaces and firewall rules")


# ---- up / down / clean ---------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    need_root()
    from netns.spec import LabSpecError, load_lab

    overrides: dict[str, Any] = {}
    if args.backups is not None:
        overrides["backups"] = args.backups
    if args.policy is not None:
        overrides["policy"] = args.policy
    if args.interval_ms is not None:
        overrides["interval_ms"] = args.interval_ms
    if args.lossless is not None:
        overrides["lossless"] = args.lossless
    if args.nodes is not None:
        overrides["nodes"] = args.nodes
    if args.traffic is not None:
        overrides["traffic"] = "demo" if args.traffic else "none"
    if args.lab and not args.lab_file:  # `up --lab NAME` without a file: it brought up "default"
        overrides["name"] = args.lab  # (a lab file's own name stays its name)
    lab_file = Path(args.lab_file).resolve() if args.lab_file else None
    try:
        spec = load_lab(lab_file, overrides or None)
    except LabSpecError as e:
        raise CliError(f"bad lab {'file' if args.lab_file else 'name'}: {e}") from e
    except OSError as e:
        raise CliError(f"cannot read lab file: {e}") from e
    return bring_up(spec, lab_file, overrides, quiet=args.json)


def lab_traffic(spec: LabSpec) -> list[tuple[str, api.TrafficStart]]:
    """What `up` starts for the lab's `traffic` (LAB_TRAFFIC), each with its words: "demo" is
    4 long-lived TCP flows, 1 UDP flow and a passive FTP session, from the lab's first two
    clients, to the servers it has (a lab without an FTP server gets no FTP session)."""
    if spec.traffic != "demo":
        return []
    clients = [h.name for h in spec.hosts if h.role == "client"]
    roles = {h.role for h in spec.hosts}
    if not clients:
        return []
    other = clients[1] if len(clients) > 1 else clients[0]
    out: list[tuple[str, api.TrafficStart]] = []
    if "server" in roles:
        out += [(f"4 TCP flows from {clients[0]}", api.TrafficStart(kind="tcp", client=clients[0], flows=4)),
                (f"1 UDP flow from {other}", api.TrafficStart(kind="udp", client=other, flows=1))]
    if "ftp" in roles:
        out.append((f"a passive FTP session from {clients[0]}",
                     api.TrafficStart(kind="ftp", client=clients[0], mode="passive", sessions=1)))
    return out


def bring_up(spec: LabSpec, lab_file: Path | None, overrides: dict[str, Any], quiet: bool = False) -> int:
    lab = spec.name
    pid, took = lab_life.up(lab, lab_file, overrides, say=(lambda _m: None) if quiet else err)
    started: list[str] = []
    said: list[str] = []
    link = lab_life.client(lab, 10.0)
    try:
        for words, req in lab_traffic(spec):
            reply = link.request(req)
            if not reply.get("ok"):
                raise CliError(f"lab {lab!r} is up, but its {spec.traffic} traffic did not "
                               f"start: {reply.get('error')}")
            started.append(str(reply["name"]))
            said.append(words)
        st = {} if quiet else link.request({"cmd": "status"})
    finally:
        link.close()
    if quiet:
        print(json.dumps({"ok": True, "lab": lab, "daemon_pid": pid, "up_s": round(took, 2),
                          "traffic": started}))
    else:
        from netns.headline import describe_lab

        err(f"lab {lab!r} is up in {took:.1f} s: {describe_lab(st)}")
        if said:
            err(f"traffic: {', '.join(said)} (`syncwall traffic stop` ends it)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    saved: dict[str, Any] | None = None
    if getattr(args, "record", None):  # first: the recording goes with the run folder
        from app.replay_cmd import save_lab_recording, saved_text

        saved = save_lab_recording(lab, Path(args.record))
        err(saved_text(saved))
    took = lab_life.down(lab, say=err)
    if args.json:
        print(json.dumps({"ok": True, "lab": lab, "down_s": round(took, 2), "recording": saved}))
    else:
        err(f"lab {lab!r} is down ({took:.1f} s)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    need_root()
    labs = [args.lab] if args.lab else running_labs()
    cleaned = []
    for lab in labs:
        pid = lab_life.owner_pid(lab)
        if pid and not args.force:
            how = "use `syncwall down`" if daemon_pid(lab) else "its owner takes it down when done"
            err(f"lab {lab!r} is running (pid {pid}); {how}, or clean --force")
            continue
        lab_life.clean(lab)
        cleaned.append(lab)
    if args.json:
        print(json.dumps({"ok": True, "cleaned": cleaned}))
    else:
        err(f"cleaned: {', '.join(cleaned) or 'nothing to clean'}")
    return 0


# ---- status and actions --------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    lab = pick_lab(args.lab)
    st = call(lab, api.Status())
    st.pop("ok", None)
    if args.json:
        print(json.dumps(st))
        return 0
    spread = st.get("bucket_spread") or {}
    share = (f" ({spread['min']}-{spread['max']} per active node)"
             if spread.get("max") else "")
    print(f"lab {st['lab']}  daemon {st['daemon_pid']}  policy {st['policy']} "
          f"({st['interval_ms']} ms)  sync port {st['sync_port']}  buckets {st['buckets']}{share}")
    if st.get("headline"):
        print(f"  {st['headline']}")
    print(f"  {'node':6} {'state':8} {'health':9} {'own':>6} {'backup':>7} {'common':>7} {'held':>5} "
          f"{'nat':>9} {'blocked':>7} {'users':>5}  {'backups':10} {'backs up':10} buckets")
    for n in st["nodes"]:
        print(f"  {n['name']:6} {n['state']:8} {n.get('health') or '-':9} {n['own']:>6} {n['backup']:>7} "
              f"{n['common']:>7} {n['held']:>5} {_state_counts(n):>23}  {','.join(n['backups']):10} "
              f"{','.join(n['backs_up']):10} {','.join(map(str, n['buckets']))}")
    print("  (nat: own/backup/common bindings, common always 0: a binding belongs to one connection; "
          "blocked, users: the common entries each node honours; health: ok, degraded (a data link "
          "lost, buckets handed to the backups), attention (the minority side of a cut: owns nothing))")
    for n in st["nodes"]:
        if isinstance(n.get("paths"), dict):
            print(f"  paths {n['name']}: {_paths_summary(n['paths'])}")
    for line in split_brain_lines(st["nodes"]):
        print(f"  {line}")
    return 0


def _paths_summary(paths: dict[str, Any]) -> str:
    """Per peer, the paths it is heard on and the sync route when it is not the sync segment;
    refused path frames and the fence reason when there are any (sync/paths.py status)."""
    parts = []
    for peer, p in sorted((paths.get("peers") or {}).items()):
        got = p.get("paths") or {}
        heard = [x for x in ("sync", "inside", "outside") if (got.get(x) or {}).get("heard")]
        unheard = [x for x in ("sync", "inside", "outside") if x in got and x not in heard]
        text = f"{peer} heard on {','.join(heard)}" if heard else f"{peer} heard nowhere"
        if unheard and heard:
            text += f" (not {','.join(unheard)})"
        if p.get("route", "sync") != "sync":
            text += f", sync via {p['route']}"
        parts.append(text)
    refused = {k: int(v) for k, v in (paths.get("refused") or {}).items() if v}
    if refused:
        parts.append("refused " + " ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    if paths.get("fenced"):
        parts.append(f"fenced: {paths['fenced']}")
    return " · ".join(parts) or "no peers"


def split_brain_lines(nodes: list[dict[str, Any]]) -> list[str]:
    """One line per bucket in more than one node's owned set: that must never happen, and if it
    does it must be seen."""
    owners: dict[int, list[str]] = {}
    for n in nodes:
        if n.get("state") in ("failed", "offline"):
            continue
        for b in n.get("buckets") or []:
            owners.setdefault(int(b), []).append(str(n["name"]))
    return [f"SPLIT BRAIN: bucket {b} owned by {' and '.join(o)}"
            for b, o in sorted(owners.items()) if len(o) > 1]


def _state_counts(n: dict[str, Any]) -> str:
    """The status line's state beyond connections: NAT bindings own/backup/common, blocklisted
    sources and users (common state)."""
    nat = n.get("nat") or {}
    common = {k: int((n.get(k) or {}).get("common", 0)) for k in ("blocklist", "users")}
    parts = f"{int(nat.get('own', 0))}/{int(nat.get('backup', 0))}/{int(nat.get('common', 0))}"
    return f"{parts:>9} {common['blocklist']:>7} {common['users']:>5}"


def cmd_action(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    actions: dict[str, type[api.NodeAction]] = {
        "kill": api.Kill, "crash": api.Crash, "revive": api.Revive, "offline": api.Offline}
    reply = call(lab, actions[args.command](args.node), timeout_s=30)
    if args.json:
        print(json.dumps(reply))
    else:
        err(f"{args.command} {args.node}: done")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    req = api.SetPolicy(args.policy, interval_ms=args.interval_ms, batch_ms=args.batch_ms)
    reply = call(pick_lab(args.lab), req)
    if args.json:
        print(json.dumps(reply))
    else:
        batch = f", batch {reply['batch_ms']} ms" if "batch_ms" in reply else ""
        err(f"policy {reply['policy']}, interval {reply['interval_ms']} ms{batch}")
    return 0


def cmd_lossless(args: argparse.Namespace) -> int:
    reply = call(pick_lab(args.lab), api.SetLossless(on=args.mode == "on"))
    if args.json:
        print(json.dumps(reply))
    else:
        err(f"lossless takeover {'on' if reply['lossless'] else 'off'} on every node")
    return 0


TRAFFIC_FLAGS = ("flows", "interval_ms", "stagger_ms", "mode", "sessions", "count", "rate", "timeout_s")


def traffic_request(args: argparse.Namespace) -> api.Request:
    """The request for `syncwall traffic ...`; an option the kind does not take is refused."""
    if args.action == "stop":
        return api.TrafficStop(args.name)
    if args.action == "clear":
        return api.TrafficClear()
    given = {k: getattr(args, k) for k in TRAFFIC_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "ipv6", False):
        given["ipv6"] = True
    try:
        return api.TrafficStart(kind=args.kind, client=args.client, **given)
    except api.RequestError as e:
        raise CliError(f"--{e.field.replace('_', '-')}: {e}") from e


def cmd_traffic(args: argparse.Namespace) -> int:
    req = traffic_request(args)  # refused before looking for a lab
    reply = call(pick_lab(args.lab), req)
    reply.pop("ok", None)
    print(json.dumps(reply))
    return 0


def fault_request(args: argparse.Namespace) -> api.Fault:
    groups = tuple(tuple(g.split(",")) for g in args.groups.split("/")) if args.groups else None
    try:
        return api.Fault(args.kind, node=args.node, rate=args.rate, groups=groups,
                         delay_ms=args.delay_ms, link=args.link,
                         silent=True if args.silent else None, flap_ms=args.flap_ms)
    except api.RequestError as e:
        raise CliError(f"--{e.field.replace('_', '-')}: {e}") from e


def cmd_fault(args: argparse.Namespace) -> int:
    req = fault_request(args)
    need_root()
    reply = call(pick_lab(args.lab), req, timeout_s=30)
    reply.pop("ok", None)
    print(json.dumps(reply))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    from netns.build import ns_name

    spec = load_lab_of(lab)
    lab_life.check_host(spec, args.host)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("give a command after --, e.g. syncwall exec c1 -- ip addr")
    os.execvp("ip", ["ip", "netns", "exec", ns_name(spec, args.host), *cmd])



# ---- console -------------------------------------------------------------------------------
def cmd_console(args: argparse.Namespace) -> int:
    from app.client import DaemonLink
    from app.console.app import run_console

    lab = pick_lab(args.lab)
    link = DaemonLink(RUN_ROOT / lab / "control.sock", viewer=args.viewer)
    choice = run_console(link, viewer=args.viewer, present=args.present)
    if choice == "stop" and not args.viewer:
        ns = argparse.Namespace(lab=lab, json=False)
        return cmd_down(ns)
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    """`syncwall` alone: the default lab (started if none runs) and the console."""
    need_root()
    labs = live_labs()
    if not labs:
        from netns.spec import load_lab

        spec = load_lab(None)
        bring_up(spec, None, {})
        labs = [spec.name]
    ns = argparse.Namespace(lab=labs[0], viewer=False, present=args.present)
    return cmd_console(ns)


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import serve

    lab = pick_lab(args.lab)
    serve(args.port, f"{sys.executable} -m app.cli console --viewer --lab {lab}", args.host)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from demos.runner import run_demo

    def open_console(sock: Path, demo: str) -> str:
        """The console on the demo's panel (demos never import app: it is handed this)."""
        from app.client import DaemonLink
        from app.console.app import run_console

        link = DaemonLink(sock)
        try:
            return run_console(link, demo=demo)
        finally:
            link.close()

    record = Path(args.record) if getattr(args, "record", None) else None
    if record is not None and not record.parent.is_dir():  # say so now, not after the demo
        raise UsageError(f"--record {record}: no folder {record.parent}")
    return run_demo(args.name, headless=args.headless, as_json=args.json, lab=args.lab,
                    open_console=open_console, record=record)


def cmd_bench(args: argparse.Namespace) -> int:
    from demos.bench import run_bench

    if args.minutes:
        os.environ["SWBENCH_MINUTES"] = str(args.minutes)  # benches that run for a time (false-failover)
    return run_bench(args.name, as_json=args.json, lab=args.lab, runs=args.runs)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit 2) instead of the usage text and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="syncwall", description="A real firewall cluster in namespaces, "
                                 "synchronised on demand. With no command: start the default lab "
                                 "if none runs and open the console.")
    ap.add_argument("--lab", help="lab name (default: the one running)")
    ap.add_argument("--present", action="store_true", help="presentation mode for the console")
    sub = ap.add_subparsers(dest="command")

    def add(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--lab", default=argparse.SUPPRESS, help="lab name")
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.set_defaults(fn=fn)
        return p

    p = add("up", cmd_up, "start a lab (the default lab without a file)")
    p.add_argument("lab_file", nargs="?", help="lab file (TOML)")
    p.add_argument("--nodes", type=positive)
    p.add_argument("--backups", type=non_negative)
    p.add_argument("--policy", choices=api.POLICIES)
    p.add_argument("--interval-ms", type=positive)
    p.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                   help="backups hold and replay their buckets' packets at a takeover")
    p.add_argument("--traffic", action=argparse.BooleanOptionalAction, default=None,
                   help="then start a small mixed workload: 4 TCP flows, 1 UDP flow, an FTP "
                        "session (a lab file: traffic = \"demo\")")
    p = add("down", cmd_down, "stop the lab and remove everything it made")
    p.add_argument("--record", metavar="FILE", help="first save the lab's recording to FILE")
    p = add("clean", cmd_clean, "remove whatever a crashed lab left behind (by its records)")
    p.add_argument("--force", action="store_true", help="also labs whose daemon still runs")
    add("status", cmd_status, "nodes, states, buckets, backups, entry counts, policy")
    for action, help in (("kill", "SIGKILL a node's engine"), ("crash", "cut all of a node's links"),
                         ("revive", "bring a node back; it resyncs and takes its buckets back"),
                         ("offline", "take a node offline gracefully")):
        p = add(action, cmd_action, help)
        p.add_argument("node")
    p = add("lossless", cmd_lossless, "switch lossless takeover on or off at run time")
    p.add_argument("mode", choices=("on", "off"))
    p = add("policy", cmd_policy, "switch the sync policy at run time")
    p.add_argument("policy", choices=api.POLICIES)
    p.add_argument("--interval-ms", type=positive,
                   help=f"the sync period, {api.INTERVAL_MS[0]}..{api.INTERVAL_MS[1]} ms")
    p.add_argument("--batch-ms", type=non_negative,
                   help=f"how long a plain change may wait to share a sync datagram, "
                        f"{api.BATCH_MS[0]}..{api.BATCH_MS[1]} ms (0: at the loop turn's end)")
    p = add("traffic", cmd_traffic, "start or stop traffic workloads")
    p.add_argument("action", choices=["start", "stop", "clear"])
    p.add_argument("kind", nargs="?", default="tcp", choices=api.TRAFFIC_KINDS)
    p.add_argument("--client", default="c1")
    p.add_argument("--flows", type=positive, help="tcp, udp: flows to open")
    p.add_argument("--interval-ms", type=positive, help="tcp, udp, ftp: time between records/sessions")
    p.add_argument("--stagger-ms", type=non_negative,
                   help="tcp: delay between opening two flows (default 20)")
    p.add_argument("--mode", choices=api.FTP_MODES, help="ftp: data connection mode")
    p.add_argument("--sessions", type=non_negative, help="ftp: sessions, 0 = until stopped")
    p.add_argument("--count", type=non_negative, help="burst: connections, 0 = until stopped")
    p.add_argument("--rate", type=positive_float, help="burst: new connections per second")
    p.add_argument("--timeout-s", type=positive_float,
                   help="ftp: how long one step of a session may take before the session fails "
                        "(default 3; a data connection a node dropped fails after this long)")
    p.add_argument("--name", help="stop: the workload to stop (default: all traffic)")
    p.add_argument("--ipv6", action="store_true", help="start: to the server's IPv6 address")
    p = add("fault", cmd_fault, "inject a fault: loss, partition, slow (sync segment), cut (any link), heal")
    p.add_argument("kind", choices=api.FAULT_KINDS)
    p.add_argument("--node", help="the node (loss, slow, cut)")
    p.add_argument("--rate", type=fraction, help="loss: fraction of sync datagrams dropped, 0..1")
    p.add_argument("--groups", help="partition: e.g. n1/n2,n3 (nodes in different groups cannot sync)")
    p.add_argument("--delay-ms", type=non_negative, help="slow: how late the node handles sync input")
    p.add_argument("--link", choices=api.CUT_LINKS, help="cut: which link of the node")
    p.add_argument("--silent", action="store_true",
                   help="cut: carrier stays up, frames are dropped at the fabric (a failed switch port)")
    p.add_argument("--flap-ms", type=non_negative, help="cut: the link goes and comes back every MS")
    p = add("exec", cmd_exec, "run a program inside a lab host or node")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = add("console", cmd_console, "attach the console to the running lab")
    p.add_argument("--viewer", action="store_true", help="watch only: no actions")
    p.add_argument("--present", action="store_true", help="high contrast, large captions")
    p = add("serve", cmd_serve, "viewer consoles in a browser (localhost unless --host)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--host", default="localhost",
                   help="listen on ADDR (0.0.0.0: every address); beyond localhost the URL "
                        "it prints carries a token, and only that URL opens a console")
    p = add("demo", cmd_demo, "run a scripted scenario")
    p.add_argument("name")
    p.add_argument("--record", metavar="FILE", help="save the demo's recording to FILE at its end")
    p.add_argument("--headless", action="store_true")
    p = add("bench", cmd_bench, "measure a figure")
    p.add_argument("name")
    p.add_argument("--runs", type=non_negative, default=0, help="repetitions (0: the bench's default)")
    p.add_argument("--minutes", type=float, default=0, help="how long a timed bench runs (false-failover)")
    from app import replay_cmd  # record, replay, serve --replay: their own module

    replay_cmd.add_commands(add, sub.choices["serve"])
    from app.capture_cmd import add_parsers as add_capture_parsers  # capture, decode

    add_capture_parsers(add)
    from app.exercise_cmd import add_parser as add_exercise_parser  # exercise: its own module

    add_exercise_parser(add)
    from app.auth_cmd import add_parser as add_auth_parser  # auth: its own module

    add_auth_parser(add)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        if args.command is None:
            return cmd_default(args)
        return int(args.fn(args))
    except SyncwallError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(e)}))
        err(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
