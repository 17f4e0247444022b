"""A lab's recording: what the console would see, every few hundred ms, plus every trace event.

Format (version 1), one file:
  FILE_MAGIC, u16 version, u32 header length, msgpack header {version, codec, lab, ...}
  then segments, each: SEG_HEAD (magic, events length, captures length, first and last capture
  time, crc32 of both payloads), the compressed msgpack list of trace events, the compressed
  msgpack list of captures. A segment's first capture is a keyframe (every reply whole); the
  others are patches against the capture before them, so every segment stands alone and old
  ones can be dropped. The index (time, offset per segment) is rebuilt on open from the
  32-byte segment headers, without decompressing anything.

While a lab runs, the same pieces live as files in `<run_dir>/recording/` (a header file and
one file per segment), so that bounding the size is deleting the oldest segment file, and a
reader never sees half a segment (each is written to a temporary name, then renamed).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import logging
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from netns.recpatch import (
    DEL_TAG,
    ROW_KEYS,
    ROWS_TAG,
    State,
    diff_reply,
    diff_rows,
    diff_state,
    freeze_ages,
    patch_reply,
    patch_rows,
    patch_state,
    table_channel,
    thaw_ages,
)
from syncwall_errors import SyncwallError

try:  # zstandard compresses recordings ~2x better than zlib at the same speed
    import zstandard
except ImportError:  # pragma: no cover - the pinned install has it
    zstandard = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# The patch names are re-exported: the console, replay and tests import them from here.
__all__ = [
    "DEL_TAG",
    "FLUSH_FILE",
    "RECORDING_DIR",
    "ROWS_TAG",
    "ROW_KEYS",
    "SCOPES",
    "FormatTooNew",
    "Limits",
    "Recorder",
    "Recording",
    "RecordingError",
    "State",
    "diff_reply",
    "diff_rows",
    "diff_state",
    "freeze_ages",
    "pack_folder",
    "patch_reply",
    "patch_rows",
    "patch_state",
    "table_channel",
    "thaw_ages",
]

FORMAT_VERSION = 1
FILE_MAGIC = b"SWREC\n"
FILE_HEAD = struct.Struct("<6sHI")
SEG_MAGIC = b"SWSG"
SEG_HEAD = struct.Struct("<4sIIddI")
RECORDING_DIR = "recording"
HEADER_FILE = "header"
FLUSH_FILE = "flush"  # `record save` creates it; the recorder writes its open segment and removes it
SCOPES = ("own", "backup", "common")
LIMITS_ENV = "SYNCWALL_RECORD"

Handler = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]


class RecordingError(SyncwallError):
    """A recording cannot be written or read; the message says which file and where."""


class FormatTooNew(RecordingError):
    """The file was written by a newer syncwall, in a format version this one cannot read."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How much a lab keeps: whichever bound is reached first drops the oldest segments."""

    max_bytes: int = 64 << 20
    max_age_s: float = 30 * 60.0
    segment_s: float = 10.0  # a keyframe every segment: seeking decodes at most this much
    interval_ms: int = 500
    table_limit: int = 500  # rows per node and scope, as the console asks for

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_age_s <= 0 or self.segment_s <= 0 or self.interval_ms <= 0:
            raise ValueError("recording limits must be positive")

    @classmethod
    def parse(cls, text: str) -> Limits:
        """From "max_mb=64,max_min=30,interval_ms=500,segment_s=5,table_limit=500" (any subset)."""
        fields: dict[str, Any] = {}
        names: dict[str, tuple[str, Callable[[str], Any]]] = {
            "max_mb": ("max_bytes", lambda v: int(float(v) * (1 << 20))),
            "max_min": ("max_age_s", lambda v: float(v) * 60),
            "interval_ms": ("interval_ms", int), "segment_s": ("segment_s", float),
            "table_limit": ("table_limit", int)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in names:
                raise ValueError(f"unknown recording limit {name!r}: use {', '.join(names)}")
            field_name, cast = names[name]
            fields[field_name] = cast(value)
        return cls(**fields)

    @classmethod
    def from_env(cls) -> Limits:
        """The lab daemon's limits: SYNCWALL_RECORD (see `parse`), or the defaults."""
        return cls.parse(os.environ.get(LIMITS_ENV, ""))


# ---- compression --------------------------------------------------------------------------

def codec_name() -> str:
    return "zstd" if zstandard is not None else "zlib"


def compress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        if zstandard is None:
            raise RecordingError("this recording needs zstandard: pip install zstandard")
        return bytes(zstandard.ZstdCompressor(level=3).compress(data))
    return zlib.compress(data, 6)


def decompress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        if zstandard is None:
            raise RecordingError("this recording needs zstandard: pip install zstandard")
        return bytes(zstandard.ZstdDecompressor().decompress(data))
    if codec == "zlib":
        return zlib.decompress(data)
    raise RecordingError(f"unknown compression {codec!r}")


# ---- writing ------------------------------------------------------------------------------

def _pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True, default=str))


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def file_header(meta: dict[str, Any]) -> bytes:
    head = _pack({"version": FORMAT_VERSION, **meta})
    return FILE_HEAD.pack(FILE_MAGIC, FORMAT_VERSION, len(head)) + head


class SegmentWriter:
    """Writes captures and events into segment files in a folder, and keeps it within its limits."""

    def __init__(self, folder: Path, limits: Limits, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.limits = limits
        self.codec = codec_name()
        folder.mkdir(parents=True, exist_ok=True)
        self._write(folder / HEADER_FILE, file_header({"codec": self.codec, **meta}))
        self._seq = max((int(p.stem.split("-")[1]) for p in folder.glob("seg-*.swseg")), default=0)
        self._events: list[dict[str, Any]] = []
        self._caps: list[dict[str, Any]] = []
        self._seg_t0: float | None = None
        self._last: State = {}
        self.bytes_written = 0

    def add_event(self, ev: dict[str, Any]) -> None:
        self._events.append(ev)

    def add_capture(self, t: float, state: State) -> None:
        if self._seg_t0 is not None and t - self._seg_t0 >= self.limits.segment_s:
            self.flush()
        if not self._caps:
            self._seg_t0 = t
            self._caps.append({"t": t, "key": True, "set": state})
        else:
            self._caps.append({"t": t, **diff_state(self._last, state)})
        self._last = state

    def flush(self) -> None:
        """Write the open segment (if it has a capture) and start the next one with a keyframe."""
        if not self._caps:
            return
        evs = compress(_pack(self._events), self.codec)
        caps = compress(_pack(self._caps), self.codec)
        crc = zlib.crc32(caps, zlib.crc32(evs))
        head = SEG_HEAD.pack(SEG_MAGIC, len(evs), len(caps), self._caps[0]["t"], self._caps[-1]["t"], crc)
        self._seq += 1
        self._write(self.folder / f"seg-{self._seq:08d}.swseg", head + evs + caps)
        self.bytes_written += len(head) + len(evs) + len(caps)
        self._events, self._caps, self._seg_t0 = [], [], None
        self.enforce_limits()

    def enforce_limits(self) -> None:
        segs = sorted(self.folder.glob("seg-*.swseg"))
        sizes = [p.stat().st_size for p in segs]
        newest = _segment_times(segs[-1])[1] if segs else 0.0
        while len(segs) > 1 and (sum(sizes) > self.limits.max_bytes
                                 or _segment_times(segs[0])[1] < newest - self.limits.max_age_s):
            with contextlib.suppress(FileNotFoundError):
                segs[0].unlink()
            segs.pop(0)
            sizes.pop(0)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def _segment_times(path: Path) -> tuple[float, float]:
    with open(path, "rb") as f:
        _m, _e, _c, t0, t1, _crc = SEG_HEAD.unpack(f.read(SEG_HEAD.size))
    return t0, t1


def pack_folder(folder: Path) -> bytes:
    """One recording file from a live recording folder: its header, then its segments in order."""
    header = folder / HEADER_FILE
    if not header.exists():
        raise RecordingError(f"{folder} holds no recording (no {HEADER_FILE} file)")
    parts = [header.read_bytes()]
    for seg in sorted(folder.glob("seg-*.swseg")):
        with contextlib.suppress(FileNotFoundError):  # dropped by the limits as we read
            parts.append(seg.read_bytes())
    return b"".join(parts)


FLUSH_WAIT_S = 3.0  # the daemon writes its open segment at its next capture (every 500 ms)


def save_recording(run_dir: Path, target: Path, wait_s: float = FLUSH_WAIT_S) -> dict[str, Any]:
    """Copy a lab's live recording out to `target` (readable by anyone: replay needs no root).

    Asks the daemon to write its open segment first (the flush file, removed at its next
    capture) and waits up to `wait_s` for it; `partial` says when it did not come in time.
    Returns what `record save --json` prints."""
    folder = run_dir / RECORDING_DIR
    flush = folder / FLUSH_FILE
    if folder.is_dir():
        flush.touch()
        deadline = time.monotonic() + wait_s
        while flush.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a file the daemon removes: nothing to await but the file
    data = pack_folder(folder)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RecordingError(f"cannot write the recording to {target}: {e.strerror}") from e
    rec = Recording.from_bytes(data, str(target))
    return {"ok": True, "file": str(target), "bytes": len(data), "segments": len(rec.segments),
            "duration_s": round(rec.t_end - rec.t_start, 1), "partial": flush.exists(),
            "problem": rec.problem}


class Recorder:
    """Owned by the lab daemon: captures the console's replies every interval and every trace event.

    `handler` is the daemon's own request handler (sync or async); no sockets are opened here.
    """

    def __init__(self, run_dir: Path, handler: Handler, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time, meta: dict[str, Any] | None = None) -> None:
        self.limits = limits or Limits()
        self.handler = handler
        self.clock = clock
        self.folder = run_dir / RECORDING_DIR
        self.writer = SegmentWriter(self.folder, self.limits, {"started": clock(), **(meta or {})})
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._pending: list[dict[str, Any]] = []  # events since the last capture
        # What each capture cost the daemon, for measurements: the whole capture (awaiting the
        # nodes' table replies included) and the recording's own CPU work (patch, pack, compress),
        # which runs in a worker thread so that the daemon's loop keeps answering meanwhile.
        self.capture_ms: list[float] = []
        self.write_ms: list[float] = []
        self.captures = 0

    async def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        reply = self.handler(req)
        if inspect.isawaitable(reply):
            reply = await reply
        return dict(reply)

    def event(self, ev: dict[str, Any]) -> None:
        """A trace event, as it happens (written with the next capture)."""
        self._pending.append(ev)

    async def capture(self) -> None:
        """Record now what the console would get: the snapshot and every node's tables."""
        t0 = time.perf_counter()
        t = self.clock()
        snap = await self._call({"cmd": "snapshot", "max_events": 0})
        snap.pop("events", None)  # the events are recorded one by one, as they happen
        state: State = {"snapshot": snap}
        names = [str(n.get("name")) for n in snap.get("nodes", [])]
        asks = [(n, s) for n in names for s in SCOPES]
        replies = await asyncio.gather(*(self._call({"cmd": "table", "node": n, "scope": s,
                                                     "limit": self.limits.table_limit})
                                          for n, s in asks))
        for (n, s), reply in zip(asks, replies, strict=True):
            state[table_channel(n, s)] = reply
        events, self._pending = self._pending, []
        flush = (self.folder / FLUSH_FILE).exists()
        write_ms = await asyncio.to_thread(self._write, t, state, events, flush)
        self.write_ms.append(write_ms)
        self.capture_ms.append((time.perf_counter() - t0) * 1000)
        del self.capture_ms[:-1000], self.write_ms[:-1000]
        self.captures += 1
        if self.captures % 60 == 0:  # every 30 s at the default interval
            log.info("recording: %s", self.stats())

    def _write(self, t: float, state: State, events: list[dict[str, Any]], flush: bool) -> float:
        started = time.thread_time()
        for ev in events:
            self.writer.add_event(ev)
        self.writer.add_capture(t, freeze_ages(t, state))
        if flush:
            self.writer.flush()
            with contextlib.suppress(FileNotFoundError):
                (self.folder / FLUSH_FILE).unlink()
        return (time.thread_time() - started) * 1000

    def stats(self) -> str:
        """The cost of the last captures, in words, for the daemon's log."""
        if not self.capture_ms:
            return "no captures yet"
        cap, wr = sorted(self.capture_ms), sorted(self.write_ms)
        return (f"{self.captures} captures; capture median {cap[len(cap) // 2]:.1f} ms, "
                f"max {cap[-1]:.1f} ms; recording CPU median {wr[len(wr) // 2]:.2f} ms, "
                f"max {wr[-1]:.1f} ms; {self.writer.bytes_written / 1e6:.2f} MB written")

    async def run(self) -> None:
        interval_s = self.limits.interval_ms / 1000
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self.capture()
            except Exception:  # a recording problem must never take the lab down
                log.exception("recording a capture failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(),
                                       max(0.0, interval_s - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop capturing (the capture under way finishes) and write what is still open."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10.0)
            except Exception:  # a capture stuck on a node: the writer is ours again all the same
                log.exception("the last capture did not finish")
            self._task = None
        try:
            for ev in self._pending:
                self.writer.add_event(ev)
            self._pending = []
            await asyncio.to_thread(self.writer.flush)
        except OSError:
            log.exception("writing the last recording segment failed")
        log.info("recording stopped: %s", self.stats())


# ---- reading ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Segment:
    offset: int
    events_len: int
    captures_len: int
    t_first: float
    t_last: float


@dataclass
class Recording:
    """A recording file opened for reading and seeking; `problem` says what could not be read."""

    data: bytes
    header: dict[str, Any]
    segments: list[Segment]
    events: list[dict[str, Any]]
    problem: str = ""
    name: str = ""
    _cache: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _state: tuple[int, int, State] | None = None

    @classmethod
    def open(cls, path: Path | str) -> Recording:
        path = Path(path)
        try:
            data = pack_folder(path) if path.is_dir() else path.read_bytes()
        except OSError as e:
            raise RecordingError(f"cannot read the recording {path}: {e.strerror or e}") from e
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "recording") -> Recording:
        if len(data) < FILE_HEAD.size or not data.startswith(FILE_MAGIC):
            raise RecordingError(f"{name} is not a syncwall recording (bad magic at offset 0)")
        _magic, version, head_len = FILE_HEAD.unpack_from(data)
        if version > FORMAT_VERSION:
            raise FormatTooNew(f"{name} is a format version {version} recording; this syncwall reads "
                               f"version {FORMAT_VERSION} and older: upgrade syncwall to replay it")
        try:
            header = _unpack(data[FILE_HEAD.size:FILE_HEAD.size + head_len])
        except ValueError as e:
            raise RecordingError(f"{name}: unreadable header at offset {FILE_HEAD.size}: {e}") from e
        codec = str(header.get("codec", "zlib"))
        segments: list[Segment] = []
        events: list[dict[str, Any]] = []
        problem = ""
        off = FILE_HEAD.size + head_len
        while off < len(data):
            why = ""
            if len(data) - off < SEG_HEAD.size:
                why = "truncated segment header"
            else:
                magic, elen, clen, t0, t1, crc = SEG_HEAD.unpack_from(data, off)
                body = off + SEG_HEAD.size
                if magic != SEG_MAGIC:
                    why = "not a segment (bad magic)"
                elif body + elen + clen > len(data):
                    why = f"truncated segment ({len(data) - body} of {elen + clen} bytes)"
                elif zlib.crc32(data[body + elen:body + elen + clen],
                                zlib.crc32(data[body:body + elen])) != crc:
                    why = "corrupt segment (checksum mismatch)"
            if not why:
                try:
                    events.extend(_unpack(decompress(data[body:body + elen], codec)))
                except (ValueError, zlib.error, RecordingError) as e:
                    why = f"corrupt events ({e})"
                else:
                    segments.append(Segment(off, elen, clen, t0, t1))
                    off = body + elen + clen
                    continue
            problem = (f"{name}: {why} at offset {off}; read the {len(segments)} whole segments "
                       "before it")
            break
        if not segments:
            raise RecordingError(problem or f"{name} holds no segments (empty recording)")
        events.sort(key=lambda e: float(e.get("t", 0)))
        return cls(data, header, segments, events, problem, name)

    # ---- times ----
    @property
    def t_start(self) -> float:
        first = self.segments[0].t_first
        return min(first, float(self.events[0]["t"])) if self.events else first

    @property
    def t_end(self) -> float:
        last = self.segments[-1].t_last
        return max(last, float(self.events[-1]["t"])) if self.events else last

    @property
    def event_times(self) -> list[float]:
        return [float(e.get("t", 0)) for e in self.events]

    def _captures(self, i: int) -> list[dict[str, Any]]:
        caps = self._cache.get(i)
        if caps is None:
            seg = self.segments[i]
            start = seg.offset + SEG_HEAD.size + seg.events_len
            codec = str(self.header.get("codec", "zlib"))
            try:
                caps = list(_unpack(decompress(self.data[start:start + seg.captures_len], codec)))
            except (ValueError, zlib.error) as e:
                raise RecordingError(f"{self.name}: corrupt captures at offset {start}: {e}") from e
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = caps
        return caps

    def state_at(self, t: float) -> tuple[float, State]:
        """The console's replies as last captured at or before `t` (the first capture before it)."""
        i = max(0, bisect.bisect_right([s.t_first for s in self.segments], t) - 1)
        caps = self._captures(i)
        j = max(0, bisect.bisect_right([c["t"] for c in caps], t) - 1)
        if self._state is not None and self._state[0] == i and self._state[1] <= j:
            k, state = self._state[1], self._state[2]
        else:
            k, state = 0, dict(caps[0]["set"])
        for c in caps[k + 1:j + 1]:
            state = patch_state(state, c)
        self._state = (i, j, state)
        at = float(caps[j]["t"])
        return at, thaw_ages(at, state)

    def captures(self) -> Iterator[tuple[float, State]]:
        """Every capture in order, whole (for summaries)."""
        for i in range(len(self.segments)):
            state: State = {}
            for c in self._captures(i):
                state = dict(c["set"]) if c.get("key") else patch_state(state, c)
                yield float(c["t"]), thaw_ages(float(c["t"]), state)
