"""Every demo, headless, as a teacher would run it: `syncwall demo NAME --headless --json` says ok,
every expectation held, and the demo's own lab is gone afterwards (also after Ctrl-C)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from demos.runner import DemoRun, list_demos
from demos.scenarios import SCENARIOS, DemoError
from netns.spec import ns_name
from tests.integration.labtools import RUN_ROOT, netns_names

LAB_DEMOS = [name for name, s in SCENARIOS.items() if s.needs_lab]


def run_demo_cli(name: str, timeout_s: float = 240) -> tuple[int, dict[str, Any], str]:
    p = subprocess.run([sys.executable, "-m", "app.cli", "demo", name, "--headless", "--json"],
                       capture_output=True, text=True, timeout=timeout_s, check=False)
    try:
        report: dict[str, Any] = json.loads(p.stdout)
    except ValueError as e:
        raise AssertionError(f"demo {name}: stdout is not one JSON object: {p.stdout!r}\n{p.stderr}") from e
    return p.returncode, report, p.stderr


def failures(report: dict[str, Any]) -> list[str]:
    out = []
    for s in report.get("steps", []):
        if not s["ok"]:
            bad = [f"{e['text']}: {e['details']}" for e in s.get("expectations", []) if not e["ok"]]
            out.append(f"{s['caption']} -> {bad or s['details']}")
    return out


def test_every_demo_is_listed_with_a_title() -> None:
    names = [n for n, _ in list_demos()]
    assert names == ["basics", "takeover", "ftp", "policies", "join-and-leave", "backup-groups",
                     "split-brain", "one-sees-all-block"]
    assert all(title for _, title in list_demos())


def test_backup_groups_step_by_step_needs_no_lab() -> None:
    run = DemoRun("backup-groups", None)
    assert run.index == 0 and not run.done and len(run.steps) == 1
    res = run.run_next()
    assert run.done and run.ok, res
    groups = {r["nodes"]: r for r in run.figures["groups"]}
    assert sorted(groups) == [3, 4, 6]
    # 3 nodes: cyclic holds two thirds of a full mesh's entries, plus the common records
    assert groups[3]["memory_ratio"] <= 2 / 3 + 0.05
    assert groups[6]["traffic_ratio"] < groups[3]["traffic_ratio"] < 1
    with pytest.raises(DemoError):
        run.run_next()


def test_unknown_demo_and_lab_demo_without_lab_are_refused() -> None:
    with pytest.raises(DemoError, match="demos are"):
        DemoRun("nope", None)
    with pytest.raises(DemoError, match="needs a running lab"):
        DemoRun("takeover", None)
    p = subprocess.run([sys.executable, "-m", "app.cli", "demo", "nope", "--headless", "--json"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["ok"] is False


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", LAB_DEMOS)
def test_demo_runs_headless_and_every_expectation_holds(name: str) -> None:
    before = netns_names()
    rc, report, err = run_demo_cli(name)
    # Other labs (a bench, another engineer's tests) may come and go meanwhile: only this
    # demo's lab counts. Its namespaces are named after it.
    leftovers = {n for n in netns_names() - before if n.startswith(ns_name(SCENARIOS[name].lab_name, ""))}
    assert not leftovers, f"demo {name} left namespaces behind: {leftovers}"
    assert not (RUN_ROOT / SCENARIOS[name].lab_name / "record.json").exists()
    assert report["demo"] == name and len(report["steps"]) == len(SCENARIOS[name].steps)
    assert report["ok"] and rc == 0, f"demo {name} failed: {failures(report)}\n{err[-2000:]}"
    assert all(s["duration_s"] >= 0 and s["caption"] for s in report["steps"])
    fig = report["figures"]
    if name == "takeover":
        assert fig["flows_lost"] == 0 and fig["takeover_ms"] > 0 and "took over" in fig["headline"]
    if name == "ftp":
        assert fig["hybrid_sessions_ok"] == 8 and fig["periodic_sessions_failed"] > 0
    if name == "policies":
        rows = fig["policies"]
        assert rows["periodic"]["flows_lost"] > 0
        assert rows["on-demand"]["flows_lost"] == rows["hybrid"]["flows_lost"] == 0


@pytest.mark.integration
@pytest.mark.slow
def test_ctrl_c_takes_the_demo_lab_down() -> None:
    lab = SCENARIOS["join-and-leave"].lab_name
    # SIGINT back to its default in the demo: a test run from a background job (CI, nohup)
    # inherits it ignored, and the demo would never see the Ctrl-C this test sends.
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "join-and-leave", "--headless", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (RUN_ROOT / lab / "ready").exists():
            assert p.poll() is None and time.monotonic() < deadline, "the demo's lab did not come up"
            time.sleep(0.1)
        made = {n["name"] for n in json.loads((RUN_ROOT / lab / "record.json").read_text())["namespaces"]}
        assert made
        # Into the first step: its caption is on stderr (stdout holds only the JSON report).
        assert p.stderr is not None
        while not (line := p.stderr.readline()).startswith("[1/"):
            assert line, "the demo ended before its first step"
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert json.loads(out)["ok"] is False
    assert not (RUN_ROOT / lab / "record.json").exists()
    assert not netns_names() & made, "Ctrl-C left the demo's namespaces behind"
