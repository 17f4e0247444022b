"""`demo --record FILE`: a FILE in a missing folder is refused before any lab is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from netns.record import RUN_ROOT


def _labs() -> set[Path]:
    return set(RUN_ROOT.iterdir()) if RUN_ROOT.is_dir() else set()


def test_demo_record_into_a_missing_folder_is_refused_before_the_demo(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-folder" / "demo.swrec"
    before = _labs()
    assert main(["demo", "takeover", "--headless", "--record", str(target)]) == 1
    assert f"no folder {target.parent}" in capsys.readouterr().err
    assert _labs() == before  # no lab was started
