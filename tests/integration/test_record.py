"""A real lab records itself: traffic, a kill, `record save`, then `replay --json` as a user without root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns.recorder import FLUSH_FILE, RECORDING_DIR, Recording
from tests.integration.labtools import (
    RUN_ROOT,
    flows_of,
    nodes,
    running_lab,
    snapshot,
    status,
    sw,
    sw_json,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOWS = 30


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    with running_lab() as up:
        yield up


def _healthy() -> bool:
    fl = flows_of(snapshot(), "tcp-")
    return len(fl) >= FLOWS and all(f["health"] == "healthy" for f in fl)


def test_a_kill_recorded_and_replayed_without_root(lab: dict[str, Any], tmp_path: Path) -> None:
    assert (RUN_ROOT / "default" / RECORDING_DIR / "header").exists()
    sw("traffic", "start", "tcp", "--flows", str(FLOWS), "--client", "c1", "--interval-ms", "100")
    wait_for(f"{FLOWS} healthy flows", _healthy, 30)
    wait_for(f"{FLOWS} connections owned", lambda: sum(n["own"] for n in nodes(status()).values())
             >= FLOWS, 10)
    # ... and captured: the daemon removes the flush file at its next capture
    flush = RUN_ROOT / "default" / RECORDING_DIR / FLUSH_FILE
    flush.touch()
    wait_for("a capture after the connections were owned", lambda: not flush.exists(), 5)
    sw("kill", "n1")
    wait_for("the takeover", lambda: "took over" in snapshot()["headline"], 10)
    wait_for("every flow healthy after the kill", _healthy, 30)
    live = status()
    saved = sw_json("record", "save", str(tmp_path / "lab.swrec"))
    assert saved["ok"] and not saved["partial"] and saved["segments"] >= 1

    # The file needs nothing of the lab: copy it where anyone may read it, replay it as nobody.
    shared = Path("/tmp") / f"syncwall-test-{os.getpid()}.swrec"
    shutil.copy(tmp_path / "lab.swrec", shared)
    os.chmod(shared, 0o644)
    try:
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              sys.executable, "-m", "app.cli", "replay", str(shared), "--json"],
                             capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2],
                             env={"PATH": os.environ.get("PATH", ""), "HOME": "/tmp"})
    finally:
        shared.unlink()
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["takeovers"] == 1, doc["takeover_texts"]
    assert doc["flows_lost"] == 0, doc["lost_flows"]
    assert doc["nodes"] == ["n1", "n2", "n3"]
    assert doc["flows"] >= FLOWS and doc["duration_s"] > 0 and not doc["problem"]

    # At the end of the recording the nodes are as the live lab showed them just before saving.
    rec = Recording.open(tmp_path / "lab.swrec")
    _t, state = rec.state_at(rec.t_end)
    replayed = {n["name"]: (n["state"], sorted(n["buckets"])) for n in state["snapshot"]["nodes"]}
    assert replayed == {k: (v["state"], sorted(v["buckets"])) for k, v in nodes(live).items()}
    assert "took over" in state["snapshot"]["headline"]
    n2_own = state["table n2 own"]
    assert n2_own["total"] > 0 and n2_own["rows"]

    # Compare a moment before the kill with the end: n1's connections moved to its backup, n2.
    kill_t = next(float(e["t"]) for e in rec.events if e.get("kind") == "action"
                  and str(e.get("text", "")).startswith("kill n1"))
    out = sw("replay", str(tmp_path / "lab.swrec"), "--compare",
             f"{kill_t - 0.01 - rec.t_start:.2f}", f"{rec.t_end - rec.t_start:.2f}", "--json")
    moved = json.loads(out.stdout)["moved"]
    assert [(m["from"], m["to"]) for m in moved] == [("n1", "n2")] and moved[0]["count"] > 0
