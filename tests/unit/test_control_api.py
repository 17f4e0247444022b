"""The control API's one schema (netns/api.py), its one client (netns/control.py) and the CLI's
argument checks, without a lab."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from app import cli
from netns import api
from netns.control import AsyncControlClient, ControlClient, ControlError, Refused
from syncwall_errors import SyncwallError


@pytest.mark.parametrize("cls", sorted(set(api.REQUESTS.values()), key=lambda c: c.__name__))
def test_every_request_round_trips_through_its_wire_form(cls: type[api.Request]) -> None:
    examples: dict[type[api.Request], api.Request] = {
        api.Table: api.Table("n1", scope="backup", filter="198.18", limit=7),
        api.Kill: api.Kill("n2"), api.Crash: api.Crash("n2"), api.Revive: api.Revive("n2"),
        api.Offline: api.Offline("n2"), api.SetPolicy: api.SetPolicy("periodic", interval_ms=500),
        api.TrafficStart: api.TrafficStart(kind="ftp", mode="passive", sessions=2),
        api.TrafficStop: api.TrafficStop("tcp-c1-1"),
        api.Fault: api.Fault("partition", groups=(("n1",), ("n2", "n3"))),
        api.AuthLogin: api.AuthLogin(user="alice", host="c1"),
        api.AuthLogout: api.AuthLogout(host="c1"),
        api.Unblock: api.Unblock(host="c2"),
    }
    req = examples.get(cls) or cls()
    wire = json.loads(json.dumps(req.to_dict()))
    assert api.parse_request(wire) == req


@pytest.mark.parametrize(("msg", "field", "words"), [
    ({"cmd": "traffic", "action": "start", "kind": "tcp", "count": 3}, "count",
     "count does not apply to tcp traffic; tcp takes flows, interval_ms, stagger_ms"),
    ({"cmd": "traffic", "kind": "tcp", "flows": -5}, "flows", "flows must be between 1 and 1000"),
    ({"cmd": "traffic", "kind": "udp", "flows": True}, "flows", "must be a whole number"),
    ({"cmd": "traffic", "kind": "ftp", "mode": "sideways"}, "mode", "mode must be active or passive"),
    ({"cmd": "traffic", "kind": "icmp"}, "kind", "kind must be tcp, udp, burst or ftp"),
    ({"cmd": "table", "node": "n1", "limit": "many"}, "limit", "limit must be a whole number"),
    ({"cmd": "table"}, "node", "table needs node"),
    ({"cmd": "snapshot", "since": "x"}, "since", "since must be a number"),
    ({"cmd": "status", "pad": "x"}, "pad", "status does not take pad"),
    ({"cmd": "policy", "policy": "hybrid", "interval_ms": 5}, "interval_ms", "between 10 and 60000"),
    ({"cmd": "policy", "policy": "hybrid", "batch_ms": 5000}, "batch_ms", "between 0 and 1000"),
    ({"cmd": "fault", "kind": "loss"}, "rate", "a loss fault needs rate"),
    ({"cmd": "fault", "kind": "loss", "rate": 0.1, "groups": [["n1"], ["n2"]]}, "groups",
     "groups does not apply to a loss fault"),
    ({"cmd": "fault", "kind": "partition", "groups": [["n1"], ["n1", "n2"]]}, "groups",
     "a node is in two groups"),
    ({"cmd": "explode"}, "cmd", "unknown command 'explode'"),
    ([1, 2], "", "a request is a JSON object"),
])
def test_a_bad_request_is_refused_naming_its_field(msg: Any, field: str, words: str) -> None:
    with pytest.raises(api.RequestError) as info:
        api.parse_request(msg)
    assert info.value.field == field and words in str(info.value)
    assert isinstance(info.value, SyncwallError)


def test_traffic_options_fill_in_the_daemons_defaults() -> None:
    assert api.TrafficStart(kind="tcp", flows=3).options() == {
        "flows": 3, "interval_ms": 50, "stagger_ms": 20}
    assert api.TrafficStart(kind="ftp", mode="passive").options()["mode"] == "passive"
    assert api.parse_request({"cmd": "traffic"}) == api.TrafficStart()  # start tcp from c1


class _Server:
    """A control socket on a thread that answers each line with `answer(request)`."""

    def __init__(self, path: Path, answer: Any) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.answer = answer
        self.seen: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    msg = json.loads(line)
                    self.seen.append(msg)
                    f.write(json.dumps(self.answer(msg)).encode() + b"\n")
                    f.flush()

    def close(self) -> None:
        self.sock.close()


def test_the_sync_and_async_clients_send_typed_requests_and_see_refusals(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    srv = _Server(path, lambda m: {"ok": m["cmd"] == "status", "error": "no such luck"})
    try:
        with ControlClient(path) as c:
            assert c.request(api.Status())["ok"] is True
            with pytest.raises(Refused, match="no such luck"):
                c.call(api.Kill("n1"))
            assert c.request({"cmd": "status"})["ok"]  # dicts still work (demos)

        async def go() -> dict[str, Any]:
            a = AsyncControlClient(path)
            try:
                return await a.request(api.Table("n1", limit=3))
            finally:
                a.close()

        assert asyncio.run(go())["ok"] is False
        assert srv.seen[-1] == {"cmd": "table", "node": "n1", "scope": "own", "filter": "",
                                "limit": 3}
    finally:
        srv.close()
    with pytest.raises(ControlError, match="cannot reach"):
        ControlClient(tmp_path / "nobody.sock").request(api.Status())


@pytest.mark.parametrize("argv", [
    ["traffic", "start", "tcp", "--flows", "-5"], ["traffic", "start", "tcp", "--flows", "x"],
    ["fault", "loss", "--rate", "3"], ["up", "--nodes", "0"], ["policy", "hybrid", "--interval-ms", "0"],
    ["traffic", "start", "burst", "--rate", "-1"],
])
def test_the_cli_refuses_a_bad_number_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("syncwall "), err


def test_the_cli_refuses_an_option_the_kind_does_not_take_before_looking_for_a_lab(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["traffic", "start", "tcp", "--count", "3"]) == 1
    assert capsys.readouterr().err == (
        "syncwall: --count: count does not apply to tcp traffic; tcp takes flows, interval_ms, "
        "stagger_ms\n")


def test_a_damaged_lab_record_is_one_line_during_clean(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from netns import lab

    monkeypatch.setattr(lab, "RUN_ROOT", tmp_path)
    monkeypatch.setattr(cli, "need_root", lambda: None)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "record.json").write_text(json.dumps(
        {"lab": "broken", "namespaces": [{"name": 5, "inode": "q"}], "processes": [], "created": 1}))
    assert cli.main(["clean", "--lab", "broken"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "words"), [
    (["auth", "unblock"], "auth unblock needs --host HOST"),
    (["auth", "login", "--host", "c1"], "auth login needs a USER"),
    (["auth", "logout"], "auth logout needs --host HOST"),
])
def test_auth_says_what_is_missing_before_looking_for_a_lab(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 1
    assert words in capsys.readouterr().err
