"""The workload programs on 127.0.0.1, run as the lab daemon runs them: separate processes, health files."""

from __future__ import annotations

import ftplib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns.workloads.ftpfiles import file_content
from netns.workloads.health import HealthFileError, read_health
from netns.workloads.tcpflows import RECORD_SIZE

LO = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


class Procs:
    """The processes a test started; each is ended by its own handle at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, module: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"netns.workloads.{module}", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.started.append(proc)
        return proc

    def run(self, module: str, *args: str, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", f"netns.workloads.{module}", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.stop_all()


def wait_listening(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LO, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {LO}:{port} after {timeout_s} s")


def wait_health(
    path: Path, ok: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    flows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            flows = read_health(path)["flows"]
        except HealthFileError:
            flows = []
        if flows and ok(flows):
            return flows
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen within {timeout_s} s; last flows: {flows}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, err.decode()


def health_of(flows: list[dict[str, Any]]) -> set[str]:
    return {f["health"] for f in flows}


@pytest.fixture
def tcp_server(procs: Procs) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = procs.start("tcpflows", "server", "--bind", LO, "--port", str(port))
    wait_listening(port)
    return proc, port


def start_tcp_client(
    procs: Procs, port: int, health: Path, flows: int, *extra: str
) -> subprocess.Popen[bytes]:
    return procs.start(
        "tcpflows",
        "client",
        "--server",
        LO,
        "--port",
        str(port),
        "--flows",
        str(flows),
        "--interval-ms",
        "50",
        "--stagger-ms",
        "5",
        "--health-file",
        str(health),
        "--name",
        "t",
        *extra,
    )


# ----------------------------------------------------------------------------- tcp


def test_twenty_tcp_flows_are_healthy_and_end_done(
    procs: Procs, tcp_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    health = tmp_path / "tcp.json"
    client = start_tcp_client(procs, tcp_server[1], health, 20)
    flows = wait_health(
        health,
        lambda fs: len(fs) == 20 and all(f["health"] == "healthy" and f["records_echoed"] >= 5 for f in fs),
        8,
        "20 healthy flows",
    )
    assert len({f["src"] for f in flows}) == 20, "each flow is its own connection"
    assert all(f["dst"] == f"{LO}:{tcp_server[1]}" for f in flows)
    rc, err = stop(client)
    assert rc == 0, err
    assert "Traceback" not in err
    final = read_health(health)["flows"]
    assert health_of(final) == {"done"}
    for f in final:
        assert f["records_echoed"] == f["records_sent"] >= 5
        assert f["bytes"] == f["records_echoed"] * RECORD_SIZE
        assert f["detail"].startswith("stopped after")


def test_killing_the_server_breaks_every_flow_and_says_why(
    procs: Procs, tcp_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    health = tmp_path / "tcp.json"
    client = start_tcp_client(procs, tcp_server[1], health, 4)
    wait_health(health, lambda fs: len(fs) == 4 and health_of(fs) == {"healthy"}, 5, "4 healthy flows")
    tcp_server[0].kill()
    flows = wait_health(health, lambda fs: health_of(fs) == {"broken"}, 5, "every flow broken")
    for f in flows:
        assert "EOF" in f["detail"] or "reset" in f["detail"], f["detail"]
    # A lost connection stays lost: no silent reconnect, even with the server back.
    procs.start("tcpflows", "server", "--bind", LO, "--port", str(tcp_server[1]))
    wait_listening(tcp_server[1])
    time.sleep(0.3)
    assert health_of(read_health(health)["flows"]) == {"broken"}
    rc, err = stop(client)
    assert rc == 0 and "Traceback" not in err


def test_a_paused_server_stalls_the_flows_which_then_recover(
    procs: Procs, tcp_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    health = tmp_path / "tcp.json"
    start_tcp_client(procs, tcp_server[1], health, 3)
    wait_health(health, lambda fs: len(fs) == 3 and health_of(fs) == {"healthy"}, 5, "3 healthy flows")
    server = tcp_server[0]
    server.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        flows = wait_health(health, lambda fs: health_of(fs) == {"stalled"}, 3.5, "every flow stalled")
        assert all("no echo" in f["detail"] for f in flows)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - paused)))
    finally:
        server.send_signal(signal.SIGCONT)
    flows = wait_health(health, lambda fs: health_of(fs) == {"healthy"}, 3, "every flow healthy again")
    for f in flows:
        assert f["longest_pause_ms"] >= 2000
        assert f["stalls"] == 1
        assert f["records_echoed"] == f["records_sent"] or f["records_sent"] - f["records_echoed"] < 5


def test_sigusr1_closes_a_pause_window_so_a_pause_is_told_apart_from_the_quiet_before_it(
    procs: Procs, tcp_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    health = tmp_path / "tcp.json"
    client = start_tcp_client(procs, tcp_server[1], health, 3)
    wait_health(health, lambda fs: len(fs) == 3 and health_of(fs) == {"healthy"}, 5, "3 healthy flows")
    client.send_signal(signal.SIGUSR1)  # the quiet window opens
    time.sleep(0.3)
    client.send_signal(signal.SIGUSR1)  # ... closes; the pause's opens
    server = tcp_server[0]
    server.send_signal(signal.SIGSTOP)
    time.sleep(0.4)
    server.send_signal(signal.SIGCONT)
    time.sleep(0.3)
    client.send_signal(signal.SIGUSR1)  # ... closes
    flows = wait_health(health, lambda fs: all(len(f["pause_windows"]) == 3 for f in fs), 3, "3 windows")
    for f in flows:
        (_, _, _), (_, quiet_ms, _), (opened, pause_ms, ended) = f["pause_windows"]
        assert pause_ms >= 300 > quiet_ms, f["pause_windows"]
        assert ended > opened
    assert stop(client)[0] == 0


def test_a_gap_in_the_echo_breaks_the_flow(procs: Procs, tmp_path: Path) -> None:
    """An echo server that loses record 3 of the stream: the client must name the gap."""
    listener = socket.create_server((LO, 0))
    port = listener.getsockname()[1]

    def lossy_echo() -> None:
        conn, _ = listener.accept()
        with conn:
            for seq in range(6):
                record = b""
                while len(record) < RECORD_SIZE:
                    chunk = conn.recv(RECORD_SIZE - len(record))
                    if not chunk:
                        return
                    record += chunk
                if seq != 3:
                    conn.sendall(record)
            time.sleep(2)

    thread = threading.Thread(target=lossy_echo, daemon=True)
    thread.start()
    health = tmp_path / "tcp.json"
    start_tcp_client(procs, port, health, 1)
    (flow,) = wait_health(health, lambda fs: health_of(fs) == {"broken"}, 5, "the flow broken")
    assert flow["detail"].startswith("gap: expected record 3, got 4"), flow["detail"]
    listener.close()


def test_connect_failure_is_a_broken_flow_with_the_reason(procs: Procs, tmp_path: Path) -> None:
    health = tmp_path / "tcp.json"
    client = start_tcp_client(procs, free_port(), health, 2)
    flows = wait_health(health, lambda fs: len(fs) == 2 and health_of(fs) == {"broken"}, 5, "broken")
    assert all(f["detail"].endswith("failed: Connection refused") for f in flows), flows
    rc, err = stop(client)
    assert rc == 0 and "Traceback" not in err


# ----------------------------------------------------------------------------- udp and burst


def test_udp_flows_lose_nothing_on_loopback(procs: Procs, tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    procs.start("udpflows", "server", "--bind", LO, "--port", str(port))
    time.sleep(0.4)  # no connect() to wait on for UDP; the client also tolerates a late server
    health = tmp_path / "udp.json"
    done = procs.run(
        "udpflows",
        "client",
        "--server",
        LO,
        "--port",
        str(port),
        "--flows",
        "5",
        "--interval-ms",
        "20",
        "--duration-s",
        "1",
        "--health-file",
        str(health),
    )
    assert done.returncode == 0, done.stderr
    flows = read_health(health)["flows"]
    assert len(flows) == 5 and health_of(flows) == {"done"}
    for f in flows:
        assert f["datagrams_sent"] > 10
        assert f["datagrams_received"] == f["datagrams_sent"]
        assert f["loss_pct"] == 0.0 and f["lost"] == 0


def test_burst_counts_successes(
    tcp_server: tuple[subprocess.Popen[bytes], int], procs: Procs, tmp_path: Path
) -> None:
    health = tmp_path / "burst.json"
    args = ["--server", LO, "--count", "40", "--rate", "200", "--health-file", str(health)]
    done = procs.run("burst", "--port", str(tcp_server[1]), *args)
    assert done.returncode == 0, done.stderr
    (flow,) = read_health(health)["flows"]
    assert (flow["kind"], flow["health"]) == ("burst", "done")
    assert (flow["attempted"], flow["successes"], flow["failures"]) == (40, 40, 0)
    assert flow["conn_per_s"] > 0


def test_burst_against_no_server_counts_failures(procs: Procs, tmp_path: Path) -> None:
    health = tmp_path / "burst.json"
    args = ["--server", LO, "--count", "5", "--rate", "100", "--health-file", str(health)]
    done = procs.run("burst", "--port", str(free_port()), *args)
    assert "Traceback" not in done.stderr
    (flow,) = read_health(health)["flows"]
    assert (flow["health"], flow["successes"], flow["failures"]) == ("failed", 0, 5)
    assert flow["failure_reasons"] == {"connection refused": 5}


# ----------------------------------------------------------------------------- ftp


@pytest.fixture
def ftp_server(procs: Procs, tmp_path: Path) -> int:
    port = free_port()
    low = 30000 + (os.getpid() % 300) * 100  # a passive range unlikely to collide with a parallel run
    procs.start(
        "ftpserver",
        "--bind",
        LO,
        "--port",
        str(port),
        "--root",
        str(tmp_path / "ftproot"),
        "--passive-ports",
        f"{low}-{low + 19}",
    )
    wait_listening(port)
    return port


def run_ftp(
    procs: Procs, port: int, mode: str, health: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return procs.run(
        "ftpclient",
        "--server",
        LO,
        "--port",
        str(port),
        "--mode",
        mode,
        "--health-file",
        str(health),
        "--interval-ms",
        "0",
        *extra,
    )


@pytest.mark.parametrize("mode", ["active", "passive"])
def test_ftp_sessions_retrieve_and_verify_the_file(
    procs: Procs, ftp_server: int, tmp_path: Path, mode: str
) -> None:
    health = tmp_path / "ftp.json"
    done = run_ftp(procs, ftp_server, mode, health, "--sessions", "2", "--file", "medium.bin")
    assert done.returncode == 0, done.stderr
    doc = read_health(health)
    flows = doc["flows"]
    # Without --name, the workload is named after its health file (the daemon's workload name).
    assert doc["workload"] == "ftp"
    assert [f["name"] for f in flows] == ["ftp-001", "ftp-002"]
    for f in flows:
        assert (f["kind"], f["health"], f["mode"]) == ("ftp", "done", mode), f["detail"]
        assert f["bytes"] == 100 * 1024
        assert f["dst"] == f"{LO}:{ftp_server}"
        assert f["data_connected"] is True
        assert f["data_client"].startswith(f"{LO}:") and f["data_server"].startswith(f"{LO}:")
        assert f["data_server"] != f["dst"], "the data connection is not the control connection"
        if mode == "active":
            assert f["data_listen"] == f["data_client"]
            if os.geteuid() == 0:
                assert f["data_server"] == f"{LO}:20", "active data leaves from port 20"
        else:
            assert f["pasv_addr"] == f["data_server"]
        assert f["total_ms"] >= f["transfer_ms"] >= 0


def test_ftp_server_works_for_curl_and_refuses_uploads(ftp_server: int, tmp_path: Path) -> None:
    if shutil.which("curl"):
        got = subprocess.run(
            ["curl", "-s", "--max-time", "5", f"ftp://{LO}:{ftp_server}/small.bin"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert got.stdout == file_content("small.bin")
    with ftplib.FTP() as ftp:
        ftp.connect(LO, ftp_server, timeout=5)
        ftp.login()
        assert {"small.bin", "medium.bin", "large.bin"} <= set(ftp.nlst())
        with pytest.raises(ftplib.error_perm):
            ftp.storbinary("STOR up.bin", __import__("io").BytesIO(b"x"))
        with pytest.raises(ftplib.error_perm):
            ftp.delete("small.bin")


def test_ftp_client_reports_a_gone_server(procs: Procs, tmp_path: Path) -> None:
    health = tmp_path / "ftp.json"
    done = run_ftp(procs, free_port(), "passive", health, "--timeout-s", "2")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (flow,) = read_health(health)["flows"]
    assert flow["health"] == "failed"
    assert flow["detail"].startswith("connection refused by"), flow["detail"]


def test_ftp_active_session_names_a_missing_data_connection(procs: Procs, tmp_path: Path) -> None:
    """A server that accepts PORT and RETR but never opens the data connection (as a firewall would)."""
    listener = socket.create_server((LO, 0))
    port = listener.getsockname()[1]

    def silent_ftp() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 hello\r\n")
            for line in lines:
                cmd = line.split()[0].upper() if line.strip() else b""
                reply = {
                    b"USER": b"331 any password\r\n",
                    b"PASS": b"230 in\r\n",
                    b"TYPE": b"200 ok\r\n",
                    b"PORT": b"200 ok\r\n",
                    b"EPRT": b"200 ok\r\n",
                    b"RETR": b"150 opening data connection\r\n",
                }.get(cmd, b"502 no\r\n")
                conn.sendall(reply)

    threading.Thread(target=silent_ftp, daemon=True).start()
    health = tmp_path / "ftp.json"
    done = run_ftp(procs, port, "active", health, "--timeout-s", "1")
    listener.close()
    assert done.returncode == 1
    (flow,) = read_health(health)["flows"]
    assert flow["health"] == "failed"
    assert flow["detail"].startswith("timeout waiting for data connection"), flow["detail"]
    assert flow["data_connected"] is False
    assert flow["data_listen"].startswith(f"{LO}:")


# ----------------------------------------------------------------------------- icmp


def test_icmp_checksum_of_a_request_verifies() -> None:
    from netns.workloads.icmp import checksum, echo_request

    assert checksum(echo_request(0x1234, 7)) == 0  # a packet carrying its checksum sums to zero


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")
def test_icmp_pings_loopback_without_loss(procs: Procs, tmp_path: Path) -> None:
    health = tmp_path / "icmp.json"
    args = ["--target", LO, "--interval-ms", "50", "--duration-s", "0.6", "--health-file", str(health)]
    done = procs.run("icmp", *args)
    assert done.returncode == 0, done.stderr
    (flow,) = read_health(health)["flows"]
    assert (flow["kind"], flow["health"], flow["lost"]) == ("icmp", "done", 0)
    assert flow["replies"] == flow["pings_sent"] > 5
    assert flow["src"].startswith(f"{LO}:")


def test_ftp_client_runs_until_sigterm_and_stops_cleanly(
    procs: Procs, ftp_server: int, tmp_path: Path
) -> None:
    health = tmp_path / "ftp.json"
    args = ["--server", LO, "--port", str(ftp_server), "--mode", "passive", "--sessions", "0"]
    client = procs.start("ftpclient", *args, "--interval-ms", "100", "--health-file", str(health))
    wait_health(health, lambda fs: sum(f["health"] == "done" for f in fs) >= 3, 5, "3 sessions done")
    rc, err = stop(client)
    assert rc == 0, err
    assert "Traceback" not in err
    assert health_of(read_health(health)["flows"]) == {"done"}
