"""Read pcap/pcapng captures and decode the sync frames in them: bytes in, decoded frames out."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sync.records import Record, SyncError
from sync.wire import (
    CODE_TRIGGER,
    MAX_WIRE_INT,
    MIN_FRAME_BYTES,
    TAG_BYTES,
    WIRE_VERSION,
    BadFrame,
    BadFrameKind,
    MsgType,
    record_from_wire,
)

DEFAULT_SYNC_PORT = 7400
# A sane upper bound for one captured packet: anything larger means a corrupt file.
MAX_PACKET_BYTES = 262144
# Wire codes of the heartbeat's mode and of a view's member states. They mirror sync.agent.Mode
# and sync.membership's state codes (a unit test keeps them in step); copied so the decoder
# does not depend on the agent's internals.
MODE_NAMES = ("joining", "active", "leaving", "left", "gone")
STATE_NAMES = ("active", "joining", "failed", "offline")

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D


class CaptureError(SyncError):
    """The file is not a capture this decoder can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured link-layer packet; `number` counts from 1, as Wireshark's frame.number."""

    number: int
    time_s: float
    linktype: int
    data: bytes
    orig_len: int


@dataclass(slots=True)
class Capture:
    """The packets of a file and what went wrong reading it (a truncated tail is not fatal)."""

    packets: list[Packet] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_capture(data: bytes) -> Capture:
    """Parse a classic pcap or a pcapng file. Raises CaptureError if it is neither; a file
    cut short keeps the packets before the cut and says so in `problems`."""
    if len(data) < 4:
        raise CaptureError(f"not a capture: the file has {len(data)} bytes")
    if data[:4] in _PCAP_MAGIC:
        return _read_pcap(data)
    if struct.unpack_from("<I", data)[0] == _PCAPNG_SHB:
        return _read_pcapng(data)
    raise CaptureError("not a pcap or pcapng file (unknown magic number)")


def _read_pcap(data: bytes) -> Capture:
    order, unit = _PCAP_MAGIC[data[:4]]
    if len(data) < 24:
        raise CaptureError("truncated pcap: the file header is incomplete")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    cap = Capture()
    off = 24
    while off < len(data):
        if off + 16 > len(data):
            n = len(cap.packets)
            cap.problems.append(f"truncated pcap: {len(data) - off} stray bytes after packet {n}")
            break
        sec, frac, incl, orig = struct.unpack_from(order + "IIII", data, off)
        if incl > MAX_PACKET_BYTES:
            cap.problems.append(f"corrupt pcap: packet {len(cap.packets) + 1} claims {incl} bytes")
            break
        if off + 16 + incl > len(data):
            cap.problems.append(f"truncated pcap: packet {len(cap.packets) + 1} is cut short")
            break
        pkt = data[off + 16 : off + 16 + incl]
        cap.packets.append(Packet(len(cap.packets) + 1, sec + frac * unit, linktype, pkt, orig))
        off += 16 + incl
    return cap


def _read_pcapng(data: bytes) -> Capture:
    cap = Capture()
    order = "<"
    ifaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
    off = 0
    while off < len(data):
        if off + 12 > len(data):
            cap.problems.append(f"truncated pcapng: {len(data) - off} stray bytes at the end")
            break
        btype = struct.unpack_from("<I", data, off)[0]
        if btype == _PCAPNG_SHB:
            bom = data[off + 8 : off + 12]
            if bom == struct.pack("<I", _PCAPNG_BOM):
                order = "<"
            elif bom == struct.pack(">I", _PCAPNG_BOM):
                order = ">"
            else:
                cap.problems.append("corrupt pcapng: bad byte-order magic")
                break
            ifaces = []
        blen = struct.unpack_from(order + "I", data, off + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_PACKET_BYTES + 64:
            cap.problems.append(f"corrupt pcapng: block of {blen} bytes at offset {off}")
            break
        if off + blen > len(data):
            cap.problems.append(f"truncated pcapng: the block at offset {off} is cut short")
            break
        body = data[off + 8 : off + blen - 4]
        try:
            _pcapng_block(cap, order, btype, body, ifaces)
        except (struct.error, IndexError):
            cap.problems.append(f"corrupt pcapng: block type {btype:#x} at offset {off} is malformed")
            break
        off += blen
    return cap


def _pcapng_block(cap: Capture, order: str, btype: int, body: bytes, ifaces: list[tuple[int, float]]) -> None:
    if btype == 1:  # interface description
        linktype = struct.unpack_from(order + "H", body, 0)[0]
        ifaces.append((linktype, _tsresol(order, body[8:])))
    elif btype in (6, 2):  # enhanced packet, obsolete packet
        if btype == 6:
            iface, hi, lo, incl, orig = struct.unpack_from(order + "IIIII", body, 0)
        else:
            iface, _drops, hi, lo, incl, orig = struct.unpack_from(order + "HHIIII", body, 0)
        if iface >= len(ifaces) or 20 + incl > len(body):
            raise IndexError
        linktype, unit = ifaces[iface]
        ts = ((hi << 32) | lo) * unit
        cap.packets.append(Packet(len(cap.packets) + 1, ts, linktype, body[20 : 20 + incl], orig))
    elif btype == 3:  # simple packet: no timestamp, interface 0
        orig = struct.unpack_from(order + "I", body, 0)[0]
        if not ifaces:
            raise IndexError
        pkt = body[4 : 4 + min(orig, len(body) - 4)]
        cap.packets.append(Packet(len(cap.packets) + 1, 0.0, ifaces[0][0], pkt, orig))


def _tsresol(order: str, opts: bytes) -> float:
    off = 0
    while off + 4 <= len(opts):
        code, olen = struct.unpack_from(order + "HH", opts, off)
        if code == 0:
            break
        if code == 9 and olen >= 1:
            v = opts[off + 4]
            return float(2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v)
        off += 4 + olen + (-olen % 4)
    return 1e-6


# ---- link, IP and UDP ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP datagram found in a packet. `cut` is True when the capture kept only part of it."""

    number: int
    time_s: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    cut: bool


def _ip_of(pkt: Packet) -> bytes | None:
    d, lt = pkt.data, pkt.linktype
    if lt == 1:  # Ethernet, with any VLAN tags
        off, etype = 14, d[12:14]
        while etype in (b"\x81\x00", b"\x88\xa8") and len(d) >= off + 4:
            etype, off = d[off + 2 : off + 4], off + 4
        return d[off:] if etype == b"\x08\x00" else None
    if lt == 113:  # Linux cooked (tcpdump -i any)
        return d[16:] if d[14:16] == b"\x08\x00" else None
    if lt == 276:  # Linux cooked v2
        return d[20:] if d[0:2] == b"\x08\x00" else None
    if lt in (101, 228, 12, 14):  # raw IPv4
        return d
    if lt == 0:  # BSD loopback: address family in host order
        return d[4:] if d[:4] in (b"\x02\x00\x00\x00", b"\x00\x00\x00\x02") else None
    return None


def udp_datagrams(cap: Capture) -> Iterator[Datagram]:
    """Every IPv4 UDP datagram of the capture (first fragments only: sync frames never fragment)."""
    for pkt in cap.packets:
        ip = _ip_of(pkt)
        if ip is None or len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        if ihl < 20 or len(ip) < ihl + 8 or struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
            continue
        sport, dport, ulen = struct.unpack_from("!HHH", ip, ihl)
        payload = ip[ihl + 8 : ihl + max(ulen, 8)]
        yield Datagram(
            pkt.number,
            pkt.time_s,
            ".".join(str(b) for b in ip[12:16]),
            sport,
            ".".join(str(b) for b in ip[16:20]),
            dport,
            payload,
            len(payload) < ulen - 8,
        )


# ---- sync frames --------------------------------------------------------------------------


@dataclass(slots=True)
class DecodedFrame:
    """A sync datagram as far as it could be read. `malformed` is empty for a well-formed
    frame; `hmac` is "ok", "bad" or "unchecked" (no key); `other_lab` is set when the frame
    names a lab id other than the expected one."""

    number: int
    time_s: float
    src: str
    dst: str
    length: int
    malformed: str = ""
    hmac: str = "unchecked"
    other_lab: bool = False
    version: int | None = None
    lab: str | None = None
    sender: str | None = None
    incarnation: int | None = None
    to_inc: int | None = None
    epoch: int | None = None
    seq: int | None = None
    ack: int | None = None
    type: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "time": round(self.time_s, 6),
            "src": self.src,
            "dst": self.dst,
            "length": self.length,
            "malformed": self.malformed or None,
            "hmac": self.hmac,
            "other_lab": self.other_lab,
            "version": self.version,
            "lab": self.lab,
            "sender": self.sender,
            "incarnation": self.incarnation,
            "to_inc": self.to_inc,
            "epoch": self.epoch,
            "seq": self.seq,
            "ack": self.ack,
            "type": self.type,
            "payload": self.payload,
        }


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def _int(v: Any) -> bool:
    return type(v) is int and 0 <= v < MAX_WIRE_INT


def jsonable(v: Any) -> Any:
    """Msgpack values as JSON values: bytes as hex, map keys as strings."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(jsonable(k)): jsonable(x) for k, x in v.items()}
    return v


def record_json(r: Record) -> dict[str, Any]:
    return {
        "key": r.key.hex(),
        "scope": r.scope.value,
        "owner": r.owner,
        "version": r.version,
        "bucket": r.bucket,
        "deleted": r.deleted,
        "data": jsonable(r.data),
    }


def decode_datagram(dg: Datagram, key: bytes | None = None, lab_id: str | None = None) -> DecodedFrame:
    """Decode one sync datagram. Never raises for bad input: a frame that is not valid has
    `malformed` set to the reason, and every field read before the fault is kept."""
    data = dg.payload
    out = DecodedFrame(dg.number, dg.time_s, f"{dg.src}:{dg.sport}", f"{dg.dst}:{dg.dport}", len(data))
    if dg.cut:
        out.malformed = "truncated by the capture (snap length)"
        return out
    if len(data) < MIN_FRAME_BYTES:
        out.malformed = f"{BadFrameKind.SHORT.value}: {len(data)} bytes"
        return out
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if key is not None:
        out.hmac = "ok" if hmac.compare_digest(tag, _tag(key, body)) else "bad"
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for garbage
        out.malformed = f"{BadFrameKind.UNDECODABLE.value}: {type(exc).__name__}"
        return out
    if not isinstance(fields, list) or len(fields) != 10:
        out.malformed = f"{BadFrameKind.UNDECODABLE.value}: not a 10-field array"
        return out
    version, flab, sender, inc, to_inc, epoch, seq, ack, code, payload = fields
    out.version = version if type(version) is int else None
    if version != WIRE_VERSION:
        out.malformed = f"{BadFrameKind.BAD_VERSION.value}: {version!r}"
        return out
    if not isinstance(flab, str) or not isinstance(sender, str):
        out.malformed = f"{BadFrameKind.UNDECODABLE.value}: lab or sender is not a string"
        return out
    out.lab, out.sender = flab, sender
    out.other_lab = lab_id is not None and flab != lab_id
    if not all(_int(v) for v in (inc, to_inc, epoch, seq, ack)):
        out.malformed = f"{BadFrameKind.UNDECODABLE.value}: bad header field"
        return out
    out.incarnation, out.to_inc, out.epoch, out.seq, out.ack = inc, to_inc, epoch, seq, ack
    mtype = next((t for t in MsgType if t.value == code), None) if type(code) is int else None
    if mtype is None:
        out.type = f"unknown({code!r})"
        out.malformed = f"{BadFrameKind.UNKNOWN_TYPE.value}: {code!r}"
        return out
    out.type = mtype.name
    try:
        out.payload = decode_payload(mtype, payload)
    except BadFrame as exc:
        out.malformed = f"{exc.kind.value}: {str(exc).split(': ', 1)[-1]}"
        out.payload = {"raw": jsonable(payload)}
    return out


def _bad(detail: str) -> BadFrame:
    return BadFrame(BadFrameKind.BAD_PAYLOAD, detail)


def _count(pl: Any, what: str) -> dict[str, Any]:
    if type(pl) is not list or len(pl) != 1 or not _int(pl[0]):
        raise _bad(f"{what}: expected [count]")
    return {"count": pl[0]}


def decode_payload(mtype: MsgType, pl: Any) -> dict[str, Any]:
    """A message type's payload as named fields; BadFrame(BAD_PAYLOAD) if its shape is wrong."""
    if mtype in (MsgType.HELLO, MsgType.HEARTBEAT):
        if type(pl) is not list or len(pl) != 2 or type(pl[1]) is not bool:
            raise _bad("heartbeat: expected [mode, ready]")
        if type(pl[0]) is not int or not 0 <= pl[0] < len(MODE_NAMES):
            raise _bad(f"heartbeat: unknown mode {pl[0]!r}")
        return {"mode": MODE_NAMES[pl[0]], "ready": pl[1]}
    if mtype is MsgType.ACK:
        if pl is not None:
            raise _bad("ack: payload must be nil")
        return {}
    if mtype in (MsgType.BULK_REQUEST, MsgType.LEAVE):
        if pl != []:
            raise _bad(f"{mtype.name.lower()}: payload must be an empty array")
        return {}
    if mtype in (MsgType.BULK_START, MsgType.BULK_END):
        return _count(pl, mtype.name.lower())
    if mtype is MsgType.RECORDS:
        return _records(pl)
    if mtype is MsgType.STATE_REQUEST:
        if type(pl) is not list or len(pl) != 1 or type(pl[0]) is not bytes:
            raise _bad("state request: expected [key]")
        return {"key": pl[0].hex()}
    if mtype is MsgType.STATE_REPLY:
        if type(pl) is not list or len(pl) != 2 or type(pl[0]) is not bytes:
            raise _bad("state reply: expected [key, record or nil]")
        return {"key": pl[0].hex(), "record": None if pl[1] is None else record_json(record_from_wire(pl[1]))}
    if mtype is MsgType.KEYS:
        if (type(pl) is not list or len(pl) != 3 or type(pl[0]) is not bool or type(pl[1]) is not bool
                or type(pl[2]) is not list or not all(type(k) is bytes for k in pl[2])):
            raise _bad("keys: expected [first, last, [key, ...]]")
        return {"first": pl[0], "last": pl[1], "keys": [k.hex() for k in pl[2]]}
    if mtype is MsgType.WANT:
        if type(pl) is not list or not pl or not all(type(k) is bytes for k in pl):
            raise _bad("want: expected [key, ...]")
        return {"keys": [k.hex() for k in pl]}
    return _view(pl)


def _records(pl: Any) -> dict[str, Any]:
    if type(pl) is not list or len(pl) != 2:
        raise _bad("records: expected [trigger, blob]")
    code, blob = pl
    if type(code) is not int or code not in CODE_TRIGGER:
        raise _bad(f"records: unknown trigger {code!r}")
    if type(blob) is not bytes:
        raise _bad("records: blob is not bytes")
    try:
        items = msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:
        raise _bad(f"records blob: {type(exc).__name__}") from None
    if type(items) is not list:
        raise _bad("records blob is not an array")
    return {"trigger": CODE_TRIGGER[code].value, "records": [record_json(record_from_wire(a)) for a in items]}


def _view(pl: Any) -> dict[str, Any]:
    if type(pl) is not list or len(pl) != 5:
        raise BadFrame(BadFrameKind.BAD_VIEW, "expected [epoch, proposer, states, owners, groups]")
    epoch, proposer, codes, owners, groups = pl
    if (
        not _int(epoch)
        or type(proposer) is not str
        or type(codes) is not list
        or not all(type(c) is int and 0 <= c < len(STATE_NAMES) for c in codes)
        or type(owners) is not list
        or not all(o is None or type(o) is str for o in owners)
        or type(groups) is not list
        or not all(type(g) is list and all(type(n) is str for n in g) for g in groups)
    ):
        raise BadFrame(BadFrameKind.BAD_VIEW, "a view field of the wrong type")
    return {
        "view_epoch": epoch,
        "proposer": proposer,
        "states": [STATE_NAMES[c] for c in codes],
        "bucket_owner": owners,
        "backup_groups": groups,
    }


def decode_capture(
    data: bytes, port: int = DEFAULT_SYNC_PORT, key: bytes | None = None, lab_id: str | None = None
) -> tuple[list[DecodedFrame], list[str]]:
    """Every datagram to or from `port` in a capture file, decoded; plus the reading problems."""
    cap = read_capture(data)
    frames = [
        decode_datagram(dg, key, lab_id)
        for dg in udp_datagrams(cap)
        if port in (dg.sport, dg.dport)
    ]
    return frames, cap.problems


def udp_pcap(datagrams: list[tuple[tuple[str, int], tuple[str, int], bytes]], t0_s: float = 0.0) -> bytes:
    """A classic pcap (Ethernet) holding the given (src, dst, payload) UDP datagrams, one per
    millisecond from t0_s: for tests and for replaying frames to a decoder."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, ((src, sport), (dst, dport), payload) in enumerate(datagrams):
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes(int(b) for b in src.split(".")), bytes(int(b) for b in dst.split(".")))
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp
        usec = round((t0_s + i / 1000) * 1e6)
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame)
    return b"".join(out)


def _ip_checksum(header: bytes) -> int:
    s: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
