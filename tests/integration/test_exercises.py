"""Each exercise on a real lab, both ways, through the `syncwall exercise` command a student uses:
the starting point (or a wrong answer) fails on the criterion that names the mistake and shows
its hint; a scripted correct solution passes every criterion. Run under the lab lock."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netns.lab import daemon_pid

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _remove_our_sessions() -> Iterator[None]:
    """The session records these tests make (a student's are kept for the report): by name,
    only the files that were not there before, and the folder only if we made it."""
    from demos.exercises.session import EX_ROOT

    had_root = EX_ROOT.exists()
    before = set(EX_ROOT.iterdir()) if had_root else set()
    yield
    if EX_ROOT.exists():
        for f in set(EX_ROOT.iterdir()) - before:
            f.unlink(missing_ok=True)
        if not had_root and not any(EX_ROOT.iterdir()):
            EX_ROOT.rmdir()


def ex(*args: str, timeout: float = 180) -> tuple[int, dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "app.cli", "exercise", *args, "--json"],
                       capture_output=True, text=True, timeout=timeout, check=False)
    try:
        out: dict[str, Any] = json.loads(p.stdout)
    except ValueError as e:
        raise AssertionError(f"exercise {' '.join(args)}: not JSON: {p.stdout!r}\n{p.stderr}") from e
    return p.returncode, out


def failing(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in out["criteria"] if not c["ok"]]


@contextmanager
def started(name: str, lab: str) -> Iterator[dict[str, Any]]:
    """`exercise start NAME`; its lab is always down afterwards."""
    try:
        rc, out = ex("start", name)
        assert rc == 0 and out["ok"], out
        yield out
    finally:
        ex("stop", "--name", name)
        assert daemon_pid(lab) is None


# ---- fast-path ---------------------------------------------------------------------------------
RULE = """
[[rules]]
name = "echo"
action = "accept"
proto = "tcp"
src = "198.18.1.0/24"
dst = "198.18.2.10/32"
{port}
"""


def test_fast_path_both_ways(tmp_path: Path) -> None:
    with started("fast-path", "ex-fast") as out:
        lab_file = Path(out["lab_file"])
        start_text = lab_file.read_text()
        rc, res = ex("check")
        assert rc == 3 and not res["passed"]
        first = failing(res)[0]
        assert first["text"].startswith("c1 reaches the TCP service") and "no-rule-match" in first["details"]
        assert first["hint"]
        rc, h = ex("hint")
        assert rc == 0 and h["hint"] == first["hint"] and h["hints_used"] == 1

        # Wrong: the rule admits every TCP port.
        lab_file.write_text(start_text + RULE.format(port=""))
        rc, res = ex("check")
        assert rc == 3 and [c["text"] for c in failing(res)] == [
            "nothing else got in: TCP port 7000 on s1 stays closed"], res
        assert "let the SYN through" in failing(res)[0]["details"] and "narrower" in failing(res)[0]["hint"]

        # `exercise reset`: the starting file and a lab built from it again, so the service is
        # refused again; the session goes on.
        rc, out = ex("reset")
        assert rc == 0 and out["ok"] and lab_file.read_text() == start_text, out
        rc, res = ex("check")
        assert rc == 3 and failing(res)[0]["text"].startswith("c1 reaches the TCP service"), res

        # Right: the one service.
        lab_file.write_text(start_text + RULE.format(port="dport = 5001"))
        rc, res = ex("check")
        assert rc == 0 and res["passed"] and res["time_to_pass_s"] > 0, res
        assert "rule-accept:echo +3" in res["criteria"][1]["details"]

        rc, rep = ex("report", "--out", str(tmp_path))
        md = Path(rep["markdown"]).read_text()
        assert "**hints used**: 1" in md and "**resets**: 1" in md and "- [x] nothing else got in" in md
        assert Path(rep["html"]).read_text().startswith("<!doctype html>")


# ---- ftp-nodes ---------------------------------------------------------------------------------
def sw(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                       text=True, timeout=60, check=True)
    return p.stdout


def test_ftp_nodes_both_ways() -> None:
    with started("ftp-nodes", "ex-ftp"):
        # What a student reads: the nodes' no-rule-match counters.
        st = json.loads(sw("status", "--lab", "ex-ftp", "--json"))
        nrm = {n["name"]: n["counters"].get("no-rule-match", 0) for n in st["nodes"]}
        dropper = max(nrm, key=lambda n: nrm[n])
        assert nrm[dropper] > 0, nrm
        wrong = next(n for n in nrm if n != dropper)

        rc, res = ex("answer", wrong)
        assert rc == 3 and not res["passed"]
        bad = {c["text"]: c for c in failing(res)}
        assert "you named the node that dropped the data connection" in bad
        named = bad["you named the node that dropped the data connection"]
        assert repr(wrong) in named["details"]
        assert named["hint"] and dropper not in named["hint"], named  # a hint, not the answer
        assert "active FTP works across nodes" in bad  # the planted policy is still there
        assert bad["active FTP works across nodes"]["hint"]

        sw("policy", "hybrid", "--interval-ms", "1000", "--lab", "ex-ftp")
        rc, res = ex("answer", dropper)
        assert rc == 0 and res["passed"], res


# ---- two-failures ------------------------------------------------------------------------------
def test_two_failures_both_ways() -> None:
    with started("two-failures", "ex-two") as out:
        lab_file = Path(out["lab_file"])
        rc, res = ex("check")  # the starting file: one backup per node
        assert rc == 3
        bad = {c["text"]: c for c in failing(res)}
        names = "every node's connections are copied to at least two other nodes"
        assert names in bad and "backups per node: n1 1" in bad[names]["details"] and bad[names]["hint"]
        kill = "crashing a node and its backup together under traffic loses no connection"
        first = None
        if kill not in bad:
            # Once in a fresh-clone suite (2026-12-03) this double crash under one backup lost
            # nothing; not reproduced alone nor beside CPU hogs, and not explained. The check's
            # own details (kept for the message below) say which pair it crashed and how far apart.
            first = next((c for c in res["criteria"] if c["text"] == kill), res)
            rc, res = ex("check")
            assert rc == 3
            bad = {c["text"]: c for c in failing(res)}
        assert kill in bad and "lost" in bad[kill]["details"], (first, bad)  # real flows were lost

        lab_file.write_text(lab_file.read_text().replace("backups = 1", "backups = 2"))
        rc, res = ex("check")
        assert res["criteria"][0]["ok"], res  # the lab was rebuilt from the student's file
        assert rc == 0 and res["passed"], res


# ---- planted-fault -----------------------------------------------------------------------------
def fault_named(res: dict[str, Any], node: str) -> None:
    """The check failed, each failing criterion names the faulted node where it says what is
    wrong, and carries its hint."""
    bad = failing(res)
    assert bad and all(c["hint"] for c in bad), res
    for c in bad:
        said = c["details"]
        if c["text"] == "every node has a backup":
            assert node in said.split("without a backup: ", 1)[1].split(", "), res
        else:
            assert "copies missing at: " in said, res
            assert node in [w.split(" ")[0] for w in said.split("copies missing at: ", 1)[1].split(", ")], res


def test_planted_fault_both_ways() -> None:
    with started("planted-fault", "ex-fault"):
        st = json.loads(sw("status", "--lab", "ex-fault", "--json"))
        assert [f["kind"] for f in st["faults"]] == ["loss"], st["faults"]
        rc, res = ex("check")  # the fault is still there
        assert rc == 3, res
        # With the extra liveness paths the deaf node stays a member, but its copies never come:
        # either criterion may be the one that fails; each names the deaf node and gives its hint.
        fault_named(res, st["faults"][0]["node"])

        sw("fault", "heal", "--lab", "ex-fault")
        rc, res = ex("check")
        assert rc == 0 and res["passed"], res
