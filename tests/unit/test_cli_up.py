"""`syncwall up --lab NAME` names the lab it starts (it used to start "default" whatever the name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


def test_up_checks_the_name_given_with_lab(capsys: pytest.CaptureFixture[str]) -> None:
    # A bad name is refused before anything is built: the name reached the spec, not "default".
    assert main(["up", "--lab", "no/slash"]) == 1
    assert "got 'no/slash'" in capsys.readouterr().err


def test_a_lab_files_own_name_is_kept_beside_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('name = "no/slash"\n')
    assert main(["up", str(f), "--lab", "fine"]) == 1  # the file's bad name, not --lab's, is checked
    assert "bad lab file" in capsys.readouterr().err
