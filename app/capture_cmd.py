"""`syncwall capture` and `syncwall decode`: a segment to a pcap file, a pcap file to sync frames."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from netns.record import RUN_ROOT
from sync.decode import DEFAULT_SYNC_PORT, CaptureError, DecodedFrame, decode_capture
from syncwall_errors import NotFoundError, StateError, UsageError


def _say(msg: str) -> None:
    print(f"syncwall: {msg}", file=sys.stderr, flush=True)


def cmd_capture(args: argparse.Namespace) -> int:
    from netns import capture
    from netns.lab import LabNotRunning, daemon_pid, load_lab_of, pick_lab

    if os.geteuid() != 0:
        raise StateError("capture needs root: it runs tcpdump inside the lab's namespaces")
    lab = pick_lab(args.lab)
    if daemon_pid(lab) is None:
        raise LabNotRunning(f"lab {lab!r} is not running; start it with `syncwall up`")
    spec = load_lab_of(lab)
    # Ctrl-C and SIGTERM stop the capture and keep what it saw. Handlers of our own, not
    # Python's KeyboardInterrupt: a program started from a background job (CI, nohup, `cmd &`
    # in a script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set():
            _say(f"{signal.Signals(signum).name}: stopping the capture")
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        res = capture.capture(spec, args.segment, Path(args.write), args.seconds, args.node,
                              say=_say, stop=stop)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps({"ok": True, "file": str(res.path), "packets": res.packets,
                          "dropped": res.dropped, "seconds": round(res.seconds, 3)}))
    return 0


def read_key(text: str) -> bytes:
    """A key given on the command line: a file holding the raw key, or the key in hex."""
    p = Path(text)
    if p.is_file():
        try:
            return p.read_bytes()
        except PermissionError:
            raise StateError(f"cannot read the key file {p}: permission denied (run as root)") from None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"--key: {text!r} is neither a key file nor a key in hex") from None


def lab_key(lab: str) -> tuple[bytes, str, int]:
    """A running lab's HMAC key, lab id (as its frames carry it) and sync port."""
    from netns.lab import load_lab_of

    key_file = RUN_ROOT / lab / "sync.key"
    if not key_file.exists():
        raise NotFoundError(f"lab {lab!r} has no key ({key_file} is missing): is it running? "
                            "A lab's key lives only as long as the lab; save it with --key for later")
    key = read_key(str(key_file))
    spec = load_lab_of(lab)
    return key, str(spec.lab_id), spec.sync_port


def cmd_decode(args: argparse.Namespace) -> int:
    key: bytes | None = None
    lab_id: str | None = args.lab_id
    port = DEFAULT_SYNC_PORT
    lab = getattr(args, "lab", None)
    if args.key and lab:
        raise UsageError("give --key or --lab, not both")
    if lab:
        key, lid, port = lab_key(lab)
        lab_id = lab_id or lid
    elif args.key:
        key = read_key(args.key)
    if args.port:
        port = args.port
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NotFoundError(f"cannot read {path}: {e.strerror}") from None
    try:
        frames, problems = decode_capture(data, port, key, lab_id)
    except CaptureError as e:
        raise UsageError(f"{path}: {e}") from None
    summary = _summary(frames, problems, key is not None, port)
    if args.json:
        print(json.dumps({"ok": True, "file": str(path), "port": port,
                          "frames": [f.to_json() for f in frames], "summary": summary}))
    else:
        for f in frames:
            print(format_frame(f))
        print(_summary_text(summary))
    for p in problems:
        _say(f"{path}: {p}")
    if key is None:
        _say("HMAC not checked: give --lab LAB (a running lab) or --key KEY")
    return 0


def _summary(frames: list[DecodedFrame], problems: list[str], keyed: bool, port: int) -> dict[str, Any]:
    return {
        "frames": len(frames),
        "types": dict(Counter(f.type or "?" for f in frames if not f.malformed)),
        "malformed": sum(1 for f in frames if f.malformed),
        "hmac_bad": sum(1 for f in frames if f.hmac == "bad"),
        "other_lab": sum(1 for f in frames if f.other_lab),
        "senders": sorted({f.sender for f in frames if f.sender and not f.malformed}),
        "hmac_checked": keyed,
        "port": port,
        "problems": problems,
    }


def _summary_text(s: dict[str, Any]) -> str:
    types = ", ".join(f"{t} {n}" for t, n in sorted(s["types"].items())) or "none"
    parts = [f"{s['frames']} sync frames on port {s['port']} ({types})"]
    if s["malformed"]:
        parts.append(f"{s['malformed']} malformed")
    if s["hmac_bad"]:
        parts.append(f"{s['hmac_bad']} with a bad HMAC (wrong key, or not this lab's)")
    if s["other_lab"]:
        parts.append(f"{s['other_lab']} from another lab")
    return "; ".join(parts)


def format_frame(f: DecodedFrame) -> str:
    head = f"#{f.number} {f.time_s:.6f} {f.src} > {f.dst} {f.length} B"
    if f.malformed and f.type is None:
        return f"{head} MALFORMED: {f.malformed}" + (f" [hmac {f.hmac}]" if f.hmac != "unchecked" else "")
    flags = f" hmac={f.hmac}" + (f" OTHER LAB {f.lab!r}" if f.other_lab else "")
    line = (f"{head} {f.type} from {f.sender} inc={f.incarnation} to_inc={f.to_inc} epoch={f.epoch} "
            f"seq={f.seq} ack={f.ack}{flags}")
    if f.malformed:
        return f"{line} MALFORMED: {f.malformed}"
    lines = [line]
    pl = f.payload
    if "records" in pl:
        lines[0] += f" trigger={pl['trigger']} records={len(pl['records'])}"
        lines += [f"    {_record_text(r)}" for r in pl["records"]]
    elif "record" in pl:
        lines[0] += f" key={pl['key']}" + ("" if pl["record"] else " (not found)")
        if pl["record"]:
            lines.append(f"    {_record_text(pl['record'])}")
    elif pl:
        lines[0] += " " + " ".join(f"{k}={_short(v)}" for k, v in pl.items())
    return "\n".join(lines)


def _record_text(r: dict[str, Any]) -> str:
    return (f"key={r['key']} owner={r['owner']} version={r['version']} scope={r['scope']} "
            f"bucket={r['bucket']}{' DELETED' if r['deleted'] else ''} data={json.dumps(r['data'])}")


def _short(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def add_parsers(add: Any) -> None:
    """Register both subcommands through app.cli's `add(name, fn, help)`."""
    p = add("capture", cmd_capture, "write a pcap of a lab segment with tcpdump")
    p.add_argument("--segment", required=True, choices=["sync", "inside", "outside"])
    p.add_argument("--node", help="capture on this node's interface (default: the segment's bridge)")
    p.add_argument("-w", "--write", required=True, metavar="FILE", help="the pcap file to write")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after this long (default 10)")
    p = add("decode", cmd_decode, "print the sync frames of a pcap file")
    p.add_argument("file")
    p.add_argument("--key", help="the HMAC key: a key file, or the key in hex (or use --lab)")
    p.add_argument("--lab-id", help="the lab id frames must carry (default: the --lab's)")
    p.add_argument("--port", type=int,
                   help=f"the sync UDP port (default: the lab's, else {DEFAULT_SYNC_PORT})")
