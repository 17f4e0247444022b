"""Helpers for tests that drive a real lab through the `syncwall` command, as an operator would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.nfq import OWNED_CHAIN
from netns import iptables
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


# A counting chain's rule as iptables-save -c writes it: [packets:bytes] ... --mark 0xB/0xffff -j RETURN
_COUNT_RULE = re.compile(r"^\[(\d+):\d+\] -A (\S+) -m mark --mark (0x[0-9a-f]+)/0xffff -j RETURN$")


@contextmanager
def bucket_counting(ns: str, chains: dict[str, tuple[str, str]], buckets: int,
                    ipv6: bool = False) -> Iterator[Callable[[], dict[str, dict[int, int]]]]:
    """Count packets per bucket mark in a node's namespace, as the kernel marked them.

    `chains`: name -> (hook, match). Packets matching `match` (iptables arguments) jump to the
    chain, which holds one RETURN per bucket mark (the low 16 bits: a packet the engine
    translated carries TRANSLATED_MARK beside its bucket). Hook "PREROUTING" counts after
    HMARK and before the owned-bucket split, so every frame the node sees (the bridges flood
    the shared MAC to every node); "POSTROUTING" counts what leaves the node, with the mark it
    got when it arrived. Yields a reader: {chain: {bucket: packets}}. The chains and their
    jumps are removed afterwards, whatever happened."""
    tool = "ip6tables" if ipv6 else "iptables"
    save = iptables.run_in_ns(ns, [f"{tool}-save", "-t", "mangle"]).stdout
    pre = [ln for ln in save.splitlines() if ln.startswith("-A PREROUTING")]
    at = next(i for i, ln in enumerate(pre) if OWNED_CHAIN in ln) + 1  # before the first split, 1-based
    text = ["*mangle", *(f":{c} - [0:0]" for c in chains)]
    text += [f"-A {c} -m mark --mark {b}/0xffff -j RETURN" for c in chains for b in range(1, buckets + 1)]
    for c, (hook, match) in chains.items():
        if hook not in ("PREROUTING", "POSTROUTING"):
            raise ValueError(f"hook: PREROUTING or POSTROUTING, got {hook!r}")
        text.append(f"-I PREROUTING {at} {match} -j {c}" if hook == "PREROUTING"
                    else f"-A POSTROUTING {match} -j {c}")
    restore = [f"{tool}-restore", "-w", "--noflush"]
    iptables.run_in_ns(ns, restore, input_text="\n".join([*text, "COMMIT", ""]))

    def read() -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {c: {} for c in chains}
        for line in iptables.run_in_ns(ns, [f"{tool}-save", "-c", "-t", "mangle"]).stdout.splitlines():
            m = _COUNT_RULE.match(line)
            if m and m.group(2) in out:
                out[m.group(2)][int(m.group(3), 16)] = int(m.group(1))
        return out

    try:
        yield read
    finally:
        undo = ["*mangle", *(f"-D {hook} {match} -j {c}" for c, (hook, match) in chains.items())]
        undo += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
        iptables.run_in_ns(ns, restore, input_text="\n".join([*undo, "COMMIT", ""]))


def hits(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    """Per chain, the buckets whose count rose between two reads, and by how much."""
    out: dict[str, dict[int, int]] = {}
    for c, counts in after.items():
        was = before.get(c, {})
        out[c] = {b: n - was.get(b, 0) for b, n in counts.items() if n > was.get(b, 0)}
    return out
