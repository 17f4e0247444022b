"""The `syncwall` command: start, watch, break and stop a lab; run demos and benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netns.control import ControlClient, ControlError
from netns.record import RUN_ROOT
from syncwall_errors import SyncwallError

DEFAULT_LAB = "default"


class CliError(SyncwallError):
    """Something the operator can fix; printed without a traceback."""


def err(msg: str) -> None:
    print(f"syncwall: {msg}", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running_labs() -> list[str]:
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.name for p in RUN_ROOT.iterdir() if (p / "record.json").exists())


def daemon_pid(lab: str) -> int | None:
    """The pid of the lab's daemon if it is alive (same start time as recorded, not a zombie)."""
    from netns.record import LabRecord, RecordError, alive

    try:
        rec = LabRecord.load(RUN_ROOT / lab)
    except (OSError, ValueError, RecordError):
        return None
    for p in rec.processes:
        if p.role == "daemon" and alive(p):
            return p.pid
    return None


def pick_lab(name: str | None) -> str:
    if name:
        return name
    labs = [lab for lab in running_labs() if daemon_pid(lab)]
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise CliError("no lab is running; start one with `syncwall up`")
    raise CliError(f"several labs run ({', '.join(labs)}); choose one with --lab")


def client(lab: str, timeout_s: float = 10.0) -> ControlClient:
    sock = RUN_ROOT / lab / "control.sock"
    if not sock.exists():
        raise CliError(f"lab {lab!r} is not running (no {sock})")
    return ControlClient(sock, timeout_s)


def call(lab: str, msg: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    try:
        reply = client(lab, timeout_s).request(msg)
    except ControlError as e:
        raise CliError(f"lab {lab!r} does not answer: {e}") from e
    if not reply.get("ok"):
        raise CliError(str(reply.get("error", "the lab refused")))
    return reply


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
    if args.nodes is not None:
        overrides["nodes"] = args.nodes
    lab_file = Path(args.lab_file).resolve() if args.lab_file else None
    try:
        spec = load_lab(lab_file, overrides or None)
    except LabSpecError as e:
        raise CliError(f"bad lab file: {e}") from e
    except OSError as e:
        raise CliError(f"cannot read lab file: {e}") from e
    return bring_up(spec.name, lab_file, overrides, quiet=args.json)


def bring_up(lab: str, lab_file: Path | None, overrides: dict[str, Any], quiet: bool = False) -> int:
    run_dir = RUN_ROOT / lab
    pid = daemon_pid(lab)
    if pid:
        raise CliError(f"lab {lab!r} is already running (daemon pid {pid}); nothing changed. "
                       "Stop it with `syncwall down` first.")
    if (run_dir / "record.json").exists():
        err(f"lab {lab!r} crashed earlier; removing what it left behind first")
        clean_lab(lab)
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
    if not quiet:
        err(f"starting lab {lab!r} (daemon pid {proc.pid})")
    last = ""
    while time.monotonic() - t0 < 60:
        if (run_dir / "ready").exists():
            break
        if proc.poll() is not None or (run_dir / "failed").exists():
            why = (run_dir / "failed").read_text().strip() if (run_dir / "failed").exists() else ""
            proc.wait(timeout=10)
            raise CliError(f"the lab did not come up: {why or 'daemon exited'} "
                           f"(see {run_dir}/daemon.log; `syncwall clean` removes leftovers)")
        if not quiet and (run_dir / "trace.jsonl").exists():
            # The daemon may be writing the last line right now: only complete lines count.
            lines = (run_dir / "trace.jsonl").read_text().split("\n")[:-1]
            if lines and lines[-1] != last:
                last = lines[-1]
                with contextlib.suppress(ValueError):
                    err(f"  {json.loads(last).get('text', '')}")
        time.sleep(0.1)
    else:
        raise CliError("the lab did not come up within 60 s")
    took = time.monotonic() - t0
    if quiet:
        print(json.dumps({"ok": True, "lab": lab, "daemon_pid": proc.pid, "up_s": round(took, 2)}))
    else:
        err(f"lab {lab!r} is up in {took:.1f} s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    pid = daemon_pid(lab)
    t0 = time.monotonic()
    if pid is None:
        raise CliError(f"lab {lab!r} has no live daemon; use `syncwall clean`")
    try:
        call(lab, {"cmd": "down"})
    except CliError as e:
        err(f"{e}; cleaning by record instead")
        clean_lab(lab)
        return 0
    while pid_alive(pid) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    if pid_alive(pid) or (RUN_ROOT / lab / "record.json").exists():
        err("the daemon did not finish; cleaning by record")
        clean_lab(lab)
    if args.json:
        print(json.dumps({"ok": True, "lab": lab, "down_s": round(time.monotonic() - t0, 2)}))
    else:
        err(f"lab {lab!r} is down ({time.monotonic() - t0:.1f} s)")
    return 0


def clean_lab(lab: str) -> None:
    from netns.record import LabRecord, teardown

    run_dir = RUN_ROOT / lab
    if not (run_dir / "record.json").exists():
        return
    teardown(LabRecord.load(run_dir))


def cmd_clean(args: argparse.Namespace) -> int:
    need_root()
    labs = [args.lab] if args.lab else running_labs()
    cleaned = []
    for lab in labs:
        pid = daemon_pid(lab)
        if pid and not args.force:
            err(f"lab {lab!r} is running (daemon pid {pid}); use `syncwall down`, or clean --force")
            continue
        clean_lab(lab)
        cleaned.append(lab)
    if args.json:
        print(json.dumps({"ok": True, "cleaned": cleaned}))
    else:
        err(f"cleaned: {', '.join(cleaned) or 'nothing to clean'}")
    return 0


# ---- status and actions --------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    lab = pick_lab(args.lab)
    st = call(lab, {"cmd": "status"})
    st.pop("ok", None)
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"lab {st['lab']}  daemon {st['daemon_pid']}  policy {st['policy']} "
          f"({st['interval_ms']} ms)  sync port {st['sync_port']}  buckets {st['buckets']}")
    if st.get("headline"):
        print(f"  {st['headline']}")
    print(f"  {'node':6} {'state':8} {'own':>6} {'backup':>7} {'common':>7} {'held':>5}  "
          f"{'backups':10} {'backs up':10} buckets")
    for n in st["nodes"]:
        print(f"  {n['name']:6} {n['state']:8} {n['own']:>6} {n['backup']:>7} {n['common']:>7} "
              f"{n['held']:>5}  {','.join(n['backups']):10} {','.join(n['backs_up']):10} "
              f"{','.join(map(str, n['buckets']))}")
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    reply = call(lab, {"cmd": args.command, "node": args.node}, timeout_s=30)
    if args.json:
        print(json.dumps(reply))
    else:
        err(f"{args.command} {args.node}: done")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    lab = pick_lab(args.lab)
    msg: dict[str, Any] = {"cmd": "policy", "policy": args.policy}
    if args.interval_ms is not None:
        if args.interval_ms <= 0:
            raise CliError("--interval-ms must be positive")
        msg["interval_ms"] = args.interval_ms
    reply = call(lab, msg)
    err(f"policy {reply['policy']}, interval {reply['interval_ms']} ms")
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    lab = pick_lab(args.lab)
    msg: dict[str, Any] = {"cmd": "traffic", "action": args.action, "kind": args.kind,
                           "client": args.client}
    for k in ("flows", "interval_ms", "stagger_ms", "mode", "sessions", "count", "rate", "name"):
        v = getattr(args, k, None)
        if v is not None:
            msg[k] = v
    reply = call(lab, msg)
    reply.pop("ok", None)
    print(json.dumps(reply))
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    msg: dict[str, Any] = {"cmd": "fault", "kind": args.kind}
    if args.node:
        msg["node"] = args.node
    if args.rate is not None:
        if not 0 <= args.rate <= 1:
            raise CliError("--rate is a fraction between 0 and 1")
        msg["rate"] = args.rate
    if args.groups:
        msg["groups"] = [g.split(",") for g in args.groups.split("/")]
    if args.delay_ms is not None:
        msg["delay_ms"] = args.delay_ms
    reply = call(lab, msg, timeout_s=30)
    reply.pop("ok", None)
    print(json.dumps(reply))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    need_root()
    lab = pick_lab(args.lab)
    from netns.build import ns_name

    spec = load_lab_of(lab)
    names = {n.name for n in spec.nodes} | {h.name for h in spec.hosts}
    if args.host not in names:
        raise CliError(f"no host {args.host!r} in lab {lab!r}; hosts are {', '.join(sorted(names))}")
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("give a command after --, e.g. syncwall exec c1 -- ip addr")
    os.execvp("ip", ["ip", "netns", "exec", ns_name(spec, args.host), *cmd])


def load_lab_of(lab: str) -> Any:
    """The spec of a running lab, as its daemon loaded it."""
    from netns.spec import load_lab

    saved = RUN_ROOT / lab / "spec.json"
    if saved.exists():
        d = json.loads(saved.read_text())
        return load_lab(Path(d["lab_file"]) if d.get("lab_file") else None, d.get("overrides"))
    return load_lab(None)


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
    labs = [lab for lab in running_labs() if daemon_pid(lab)]
    if not labs:
        from netns.spec import load_lab

        spec = load_lab(None)
        bring_up(spec.name, None, {})
        labs = [spec.name]
    ns = argparse.Namespace(lab=labs[0], viewer=False, present=args.present)
    return cmd_console(ns)


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import serve

    lab = pick_lab(args.lab)
    serve(args.port, f"{sys.executable} -m app.cli console --viewer --lab {lab}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from demos.runner import run_demo

    return run_demo(args.name, headless=args.headless, as_json=args.json, lab=args.lab)


def cmd_bench(args: argparse.Namespace) -> int:
    from demos.bench import run_bench

    return run_bench(args.name, as_json=args.json, lab=args.lab, runs=args.runs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="syncwall", description="A real firewall cluster in namespaces, "
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
    p.add_argument("--nodes", type=int)
    p.add_argument("--backups", type=int)
    p.add_argument("--policy", choices=["on-demand", "periodic", "hybrid"])
    p.add_argument("--interval-ms", type=int)
    add("down", cmd_down, "stop the lab and remove everything it made")
    p = add("clean", cmd_clean, "remove whatever a crashed lab left behind (by its records)")
    p.add_argument("--force", action="store_true", help="also labs whose daemon still runs")
    add("status", cmd_status, "nodes, states, buckets, backups, entry counts, policy")
    for action, help in (("kill", "SIGKILL a node's engine"), ("crash", "cut all of a node's links"),
                         ("revive", "bring a node back; it resyncs and takes its buckets back"),
                         ("offline", "take a node offline gracefully")):
        p = add(action, cmd_action, help)
        p.add_argument("node")
    p = add("policy", cmd_policy, "switch the sync policy at run time")
    p.add_argument("policy", choices=["on-demand", "periodic", "hybrid"])
    p.add_argument("--interval-ms", type=int)
    p = add("traffic", cmd_traffic, "start or stop traffic workloads")
    p.add_argument("action", choices=["start", "stop", "clear"])
    p.add_argument("kind", nargs="?", default="tcp", choices=["tcp", "udp", "burst", "ftp"])
    p.add_argument("--client", default="c1")
    p.add_argument("--flows", type=int)
    p.add_argument("--interval-ms", type=int)
    p.add_argument("--stagger-ms", type=int, help="tcp: delay between opening two flows (default 20)")
    p.add_argument("--mode", choices=["active", "passive"])
    p.add_argument("--sessions", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--rate", type=int)
    p.add_argument("--name")
    p = add("fault", cmd_fault, "inject a fault on the sync segment: loss, partition, slow, heal")
    p.add_argument("kind", choices=["loss", "partition", "slow", "heal"])
    p.add_argument("--node", help="the node (loss, slow)")
    p.add_argument("--rate", type=float, help="loss: fraction of sync datagrams dropped, 0..1")
    p.add_argument("--groups", help="partition: e.g. n1/n2,n3 (nodes in different groups cannot sync)")
    p.add_argument("--delay-ms", type=int, help="slow: how late the node handles sync input")
    p = add("exec", cmd_exec, "run a program inside a lab host or node")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = add("console", cmd_console, "attach the console to the running lab")
    p.add_argument("--viewer", action="store_true", help="watch only: no actions")
    p.add_argument("--present", action="store_true", help="high contrast, large captions")
    p = add("serve", cmd_serve, "viewer consoles in a browser (localhost)")
    p.add_argument("--port", type=int, default=8000)
    p = add("demo", cmd_demo, "run a scripted scenario")
    p.add_argument("name")
    p.add_argument("--headless", action="store_true")
    p = add("bench", cmd_bench, "measure a figure")
    p.add_argument("name")
    p.add_argument("--runs", type=int, default=0, help="repetitions (0: the bench's default)")
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
    except CliError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(e)}))
        err(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
