"""The FTP helper (the patent's "second software entity"): names the data connection to expect."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any

from engine.packet import TCP, Reason

log = logging.getLogger(__name__)

SEQ_MASK = 0xFFFFFFFF
HALF = 1 << 31
MAX_LINE = 512  # RFC 959 lines are short; a longer one is not a command we need to read

_PASV_RE = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV_RE = re.compile(rb"\(([\x21-\x7e])\1\1(\d{1,5})\1\)")


@dataclass(frozen=True, slots=True)
class Expect:
    """Open the way for one TCP connection from src (any port when src_port is 0) to dst."""

    src_ip: bytes
    src_port: int
    dst_ip: bytes
    dst_port: int
    reason: str  # "ftp-port", "ftp-eprt", "ftp-227", "ftp-229"
    proto: int = TCP


@dataclass(frozen=True, slots=True)
class Refuse:
    """The segment must be dropped (a bounce attempt)."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something odd but harmless seen on the control stream, counted by the engine."""

    reason: str


Finding = Expect | Refuse | Anomaly


class FtpHelper:
    """Per-connection FTP control stream reader. Each direction keeps the bytes of an unfinished
    line and the next sequence number expected, so commands split across segments are read whole
    and retransmitted bytes are not read twice."""

    name = "ftp"
    __slots__ = ("_bufs", "_next", "client_ip", "server_ip")

    def __init__(self, client_ip: bytes, server_ip: bytes) -> None:
        self.client_ip = client_ip
        self.server_ip = server_ip
        self._bufs = [b"", b""]  # [client->server, server->client]
        self._next = [-1, -1]

    # ---- replication and rollback -------------------------------------------------------
    def state(self) -> list[Any]:
        """Positional and msgpack-able, for the connection's record."""
        return [self._bufs[0], self._bufs[1], self._next[0], self._next[1]]

    @classmethod
    def from_state(cls, client_ip: bytes, server_ip: bytes, state: list[Any]) -> FtpHelper:
        h = cls(client_ip, server_ip)
        if state:
            h._bufs = [bytes(state[0]), bytes(state[1])]
            h._next = [int(state[2]), int(state[3])]
        return h

    def snapshot(self) -> tuple[bytes, bytes, int, int]:
        return (self._bufs[0], self._bufs[1], self._next[0], self._next[1])

    def restore(self, snap: tuple[bytes, bytes, int, int]) -> None:
        """Forget a segment the engine dropped, so its retransmission is read again."""
        self._bufs = [snap[0], snap[1]]
        self._next = [snap[2], snap[3]]

    # ---- reading ------------------------------------------------------------------------
    def feed(self, from_client: bool, seq: int, payload: bytes) -> list[Finding]:
        d = 0 if from_client else 1
        found: list[Finding] = []
        nxt = self._next[d]
        if nxt >= 0:
            diff = (seq - nxt) & SEQ_MASK
            if diff >= HALF:  # starts before what we read: a retransmission, maybe with new bytes
                skip = (nxt - seq) & SEQ_MASK
                if skip >= len(payload):
                    return found
                payload = payload[skip:]
                seq = nxt
            elif diff:  # bytes missing in between: the line we were reading is lost
                self._bufs[d] = b""
                found.append(Anomaly("ftp-gap"))
        self._next[d] = (seq + len(payload)) & SEQ_MASK
        buf = self._bufs[d] + payload
        lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            rest = b""
            found.append(Anomaly("ftp-line-too-long"))
        self._bufs[d] = rest
        for raw in lines:
            line = raw.rstrip(b"\r")
            f = self._command(line) if from_client else self._reply(line)
            if f is not None:
                found.append(f)
        return found

    def _command(self, line: bytes) -> Finding | None:
        verb, _, arg = line.strip().partition(b" ")
        verb = verb.upper()
        if verb == b"PORT":
            return self._port(arg.strip())
        if verb == b"EPRT":
            return self._eprt(arg.strip())
        return None

    def _port(self, arg: bytes) -> Finding:
        parts = arg.split(b",")
        if len(parts) != 6 or not all(p.strip().isdigit() for p in parts):
            return Anomaly("ftp-malformed")
        nums = [int(p) for p in parts]
        if any(v > 255 for v in nums):
            return Anomaly("ftp-malformed")
        ip = bytes(nums[:4])
        port = nums[4] * 256 + nums[5]
        if ip != self.client_ip:
            return Refuse(Reason.FTP_PORT_BOUNCE)
        if port == 0:
            return Anomaly("ftp-malformed")
        return Expect(self.server_ip, 0, self.client_ip, port, "ftp-port")

    def _eprt(self, arg: bytes) -> Finding:
        if len(arg) < 2:
            return Anomaly("ftp-malformed")
        fields = arg.split(arg[:1])
        # |af|addr|port| splits into ['', af, addr, port, '']
        if len(fields) != 5 or fields[0] or fields[4]:
            return Anomaly("ftp-malformed")
        try:
            af = int(fields[1])
            addr = ipaddress.ip_address(fields[2].decode("ascii"))
            port = int(fields[3])
        except (ValueError, UnicodeDecodeError):
            return Anomaly("ftp-malformed")
        if af not in (1, 2) or addr.version != (4 if af == 1 else 6):
            return Anomaly("ftp-malformed")
        if addr.packed != self.client_ip:
            return Refuse(Reason.FTP_PORT_BOUNCE)
        if not 1 <= port <= 65535:
            return Anomaly("ftp-malformed")
        return Expect(self.server_ip, 0, self.client_ip, port, "ftp-eprt")

    def _reply(self, line: bytes) -> Finding | None:
        if line.startswith(b"227 "):
            m = _PASV_RE.search(line, 4)
            if m is None:
                return Anomaly("ftp-malformed")
            nums = [int(g) for g in m.groups()]
            if any(v > 255 for v in nums):
                return Anomaly("ftp-malformed")
            port = nums[4] * 256 + nums[5]
            if bytes(nums[:4]) != self.server_ip:
                # The server asks the client to connect elsewhere: the mirror image of a PORT bounce.
                return Refuse(Reason.FTP_PASV_BOUNCE)
            if port == 0:
                return Anomaly("ftp-malformed")
            return Expect(self.client_ip, 0, self.server_ip, port, "ftp-227")
        if line.startswith(b"229 "):
            m = _EPSV_RE.search(line, 4)
            if m is None:
                return Anomaly("ftp-malformed")
            port = int(m.group(2))
            if not 1 <= port <= 65535:
                return Anomaly("ftp-malformed")
            return Expect(self.client_ip, 0, self.server_ip, port, "ftp-229")
        return None


def make_helper(name: str, client_ip: bytes, server_ip: bytes, state: list[Any] | None = None) -> FtpHelper:
    """The helper a rule names, fresh or restored from a record."""
    if name != FtpHelper.name:
        raise ValueError(f"unknown protocol helper {name!r}; known: ['ftp']")
    return FtpHelper.from_state(client_ip, server_ip, state or [])
