"""REJECT rules in a real lab: a refused TCP connect fails at once (the node's RST), a refused UDP
datagram comes back as ICMP port unreachable; the same server still serves other clients."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from netns.build import ns_name
from tests.integration.labtools import running_lab

pytestmark = pytest.mark.integration

C1, C2, S1 = "198.18.1.10", "198.18.1.11", "198.18.2.10"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = "r" + secrets.token_hex(3)  # never collides with a lab someone else runs
    path = tmp_path_factory.mktemp("reject") / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        [[rules]]
        name = "no-c2-tcp"
        action = "reject"
        proto = "tcp"
        src = "{C2}/32"
        dport = 5001
        [[rules]]
        name = "no-c2-udp"
        action = "reject"
        proto = "udp"
        src = "{C2}/32"
        dport = 5002
        [[rules]]
        name = "tcp-services"
        action = "accept"
        proto = "tcp"
        src = "198.18.1.0/24"
        dst = "198.18.2.0/24"
        dport = "5000-5999"
    """))
    with running_lab(name, path) as up:
        yield {"name": name, **up}


def _in(lab: str, host: str, code: str) -> str:
    """Run Python `code` in the host's namespace; its last line of output."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns_name(lab, host), sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return out.strip().splitlines()[-1]


CONNECT = """
import socket
try:
    socket.create_connection(("{dst}", 5001), timeout=5).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""

UDP = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("{dst}", 5002))
try:
    for _ in range(3):  # the first datagram may meet a node still learning its buckets
        s.send(b"hello")
        try:
            s.recv(100)
            print("answered")
            break
        except TimeoutError:
            continue
    else:
        print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


def test_a_rejected_tcp_connect_is_refused_not_timed_out(lab: dict[str, Any]) -> None:
    assert _in(lab["name"], "c1", CONNECT.format(dst=S1)) == "connected", "the server listens"
    assert _in(lab["name"], "c2", CONNECT.format(dst=S1)) == "refused"


def test_a_rejected_udp_datagram_gets_port_unreachable(lab: dict[str, Any]) -> None:
    assert _in(lab["name"], "c2", UDP.format(dst=S1)) == "refused"
