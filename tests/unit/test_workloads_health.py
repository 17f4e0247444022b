"""Health files and the workload command lines: pure, in-process, no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netns.workloads import burst, ftpclient, ftpfiles, ftpserver, icmp, tcpflows, udpflows
from netns.workloads.health import (
    Flow,
    FlowHealth,
    FlowKind,
    HealthFileError,
    HealthWriter,
    fmt_addr,
    read_health,
)
from netns.workloads.tcpflows import RECORD_SIZE, describe_mismatch, encode_record


def test_health_file_round_trip_has_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "h.json"
    writer = HealthWriter(path, workload="tcpflows:t")
    flow = Flow(
        name="t-001",
        kind=FlowKind.TCP,
        src="198.18.1.10:40001",
        dst="198.18.2.10:5001",
        extra={"records_echoed": 7},
    )
    flow.bytes = 224
    writer.write([flow])
    doc = read_health(path)
    assert doc["workload"] == "tcpflows:t"
    assert doc["pid"] == os.getpid()
    assert isinstance(doc["updated"], float)
    (f,) = doc["flows"]
    assert {
        "name",
        "kind",
        "src",
        "dst",
        "health",
        "bytes",
        "detail",
        "started",
        "last_progress",
    } <= set(f)
    assert (f["kind"], f["health"], f["bytes"], f["records_echoed"]) == ("tcp", "healthy", 224, 7)
    # Written by rename: no temporary file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == ["h.json"]


def test_maybe_write_is_rate_limited_but_write_is_not(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    writer = HealthWriter(path, interval_s=60)
    assert writer.maybe_write([]) is True
    flow = Flow(name="x", kind=FlowKind.UDP)
    assert writer.maybe_write([flow]) is False
    assert read_health(path)["flows"] == []
    writer.write([flow])
    assert len(read_health(path)["flows"]) == 1


def test_read_health_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(HealthFileError, match="no health file"):
        read_health(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HealthFileError, match="unreadable"):
        read_health(bad)
    bad.write_text(json.dumps({"workload": "x"}))
    with pytest.raises(HealthFileError, match="'flows'"):
        read_health(bad)


def test_a_final_state_is_never_left() -> None:
    flow = Flow(name="x", kind=FlowKind.TCP)
    flow.set_health(FlowHealth.STALLED, "no echo for 2.1 s")
    flow.set_health(FlowHealth.HEALTHY, "resumed")
    flow.set_health(FlowHealth.BROKEN, "connection reset by peer (RST)")
    flow.set_health(FlowHealth.DONE, "stopped")
    assert flow.health is FlowHealth.BROKEN
    assert "reset" in flow.detail


def test_addresses_are_ip_colon_port() -> None:
    assert fmt_addr(("198.18.1.10", 40001)) == "198.18.1.10:40001"
    assert fmt_addr(("::1", 21, 0, 0)) == "[::1]:21"
    assert fmt_addr(None) == ""


def test_records_are_distinct_per_flow_and_sequence() -> None:
    r = encode_record(3, 10)
    assert len(r) == RECORD_SIZE
    assert r == encode_record(3, 10)
    assert r != encode_record(3, 11) and r != encode_record(4, 10)
    assert describe_mismatch(3, 10, encode_record(3, 12)).startswith("gap: expected record 10, got 12")
    assert "flow 4" in describe_mismatch(3, 10, encode_record(4, 10))
    corrupted = r[:-1] + bytes([r[-1] ^ 1])
    assert "corrupted" in describe_mismatch(3, 10, corrupted)


def test_ftp_files_have_the_promised_sizes_and_fixed_content() -> None:
    assert sorted(ftpfiles.FILES.values()) == [1024, 100 * 1024, 1024 * 1024]
    for name, size in ftpfiles.FILES.items():
        data = ftpfiles.file_content(name)
        assert len(data) == size
        assert data == ftpfiles.file_content(name)
    assert ftpfiles.file_content("small.bin") != ftpfiles.file_content("medium.bin")[:1024]


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (tcpflows.main, ["client", "--server", "example", "--port", "1", "--health-file", "h"], "not an IP"),
        (tcpflows.main, ["server", "--bind", "127.0.0.1", "--port", "70000"], "outside 0-65535"),
        (udpflows.main, ["client", "--server", "127.0.0.1", "--port", "1"], "--health-file"),
        (
            burst.main,
            ["--server", "127.0.0.1", "--port", "1", "--rate", "0", "--health-file", "h"],
            "greater than 0",
        ),
        (ftpclient.main, ["--server", "127.0.0.1", "--mode", "sideways", "--health-file", "h"], "sideways"),
        (ftpserver.main, ["--bind", "127.0.0.1", "--passive-ports", "90-80"], "1024-65535"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    main: object, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(main)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "main", [tcpflows.main, udpflows.main, burst.main, ftpclient.main, ftpserver.main, icmp.main]
)
def test_every_program_has_help(main: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert callable(main)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


class _FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "sockname" else None

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def test_udp_accounting_counts_loss_stall_and_late_arrivals() -> None:
    import time

    flow = udpflows.UdpFlow(0, "u-001", "127.0.0.1", 5002, interval_s=0.05)
    transport = _FakeDatagramTransport()
    flow.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(3):
        flow.send_next()
    flow.datagram_received(transport.sent[0], ("127.0.0.1", 5002))
    flow.settle(time.monotonic() + 5)  # nothing more came back for 5 s
    assert flow.flow.health is FlowHealth.STALLED
    assert (flow.flow.extra["lost"], flow.flow.extra["loss_pct"]) == (2, 66.67)
    flow.datagram_received(transport.sent[2], ("127.0.0.1", 5002))  # a late echo
    flow.datagram_received(transport.sent[2], ("127.0.0.1", 5002))  # and a duplicate of it
    flow.datagram_received(b"garbage", ("127.0.0.1", 5002))
    flow.settle(time.monotonic())
    assert flow.flow.health is FlowHealth.HEALTHY
    extra = flow.flow.extra
    assert (extra["lost"], extra["late"], extra["duplicates"], extra["corrupt"]) == (1, 1, 1, 1)
    assert extra["datagrams_received"] == 2
    flow.finish()
    assert flow.flow.health is FlowHealth.DONE
    assert flow.flow.detail == "stopped: 1 of 3 datagrams lost (33.33%)"
