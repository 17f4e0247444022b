"""A daemon-less topology (a bench's own namespaces) counts as running while its builder lives,
so `syncwall clean` without --force leaves it alone; a reused pid does not keep it alive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netns import lab as lab_life
from netns.record import LabRecord, owner_meta


def _record(root: Path, name: str, meta: dict[str, object]) -> None:
    run = root / name
    run.mkdir()
    LabRecord(lab=name, run_dir=run, meta=meta).save()


def test_a_topology_is_running_while_its_owner_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_life, "RUN_ROOT", tmp_path)
    _record(tmp_path, "bench", {"kind": "bench-topology", **owner_meta()})
    assert lab_life.owner_pid("bench") == os.getpid()
    assert lab_life.daemon_pid("bench") is None  # it has no daemon: status and down do not pick it


def test_a_reused_pid_or_old_record_does_not_keep_it_alive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_life, "RUN_ROOT", tmp_path)
    meta = owner_meta()
    _record(tmp_path, "reused", {**meta, "owner_start": meta["owner_start"] + 1})
    _record(tmp_path, "old", {"kind": "bench-topology", "owner_pid": os.getpid()})  # no start time
    assert lab_life.owner_pid("reused") is None
    assert lab_life.owner_pid("old") is None
