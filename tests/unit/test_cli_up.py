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


def test_up_traffic_asks_for_the_demo_workload_and_a_lab_file_may_too(tmp_path: Path) -> None:
    from app.cli import build_parser, lab_traffic
    from netns.spec import load_lab

    parse = build_parser().parse_args
    assert parse(["up"]).traffic is None  # the lab file decides
    assert parse(["up", "--traffic"]).traffic is True
    assert parse(["up", "lab.toml", "--no-traffic"]).traffic is False
    assert lab_traffic(load_lab(None)) == []  # nothing unless asked
    f = tmp_path / "lab.toml"
    f.write_text('traffic = "demo"\n')
    demo = [req for _words, req in lab_traffic(load_lab(f))]
    assert [(r.kind, r.client) for r in demo] == [("tcp", "c1"), ("udp", "c2"), ("ftp", "c1")]
    assert [r.options()["flows"] for r in demo[:2]] == [4, 1]
    assert demo[2].options()["mode"] == "passive" and demo[2].options()["sessions"] == 1
    assert lab_traffic(load_lab(f, {"traffic": "none"})) == []  # --no-traffic beats the file


def test_a_lab_without_an_ftp_server_gets_no_ftp_session(tmp_path: Path) -> None:
    from app.cli import lab_traffic
    from netns.spec import load_lab

    f = tmp_path / "lab.toml"
    f.write_text('traffic = "demo"\n[[hosts]]\nname = "c1"\nsegment = "inside"\nip = "198.18.1.10"\n'
                 'role = "client"\n[[hosts]]\nname = "s1"\nsegment = "outside"\nip = "198.18.2.10"\n'
                 'role = "server"\n')
    assert [(r.kind, r.client) for _w, r in lab_traffic(load_lab(f))] == [("tcp", "c1"), ("udp", "c1")]
