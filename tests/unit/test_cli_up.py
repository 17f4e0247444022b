"""`syncwall up --lab NAME` names the lab it starts (it used to start "default" whatever the name)."""

from __future__ import annotations

import pytest

from app.cli import main


def test_up_checks_the_name_given_with_lab(capsys: pytest.CaptureFixture[str]) -> None:
    # A bad name is refused before anything is built: the name reached the spec, not "default".
    assert main(["up", "--lab", "no/slash"]) == 1
    assert "got 'no/slash'" in capsys.readouterr().err
