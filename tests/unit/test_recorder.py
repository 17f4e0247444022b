"""The recording format: write with a fake clock and fake lab, read back, seek, bound, survive truncation."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from netns.recorder import (
    FILE_HEAD,
    FILE_MAGIC,
    FLUSH_FILE,
    FORMAT_VERSION,
    RECORDING_DIR,
    FormatTooNew,
    Limits,
    Recorder,
    Recording,
    RecordingError,
    diff_state,
    freeze_ages,
    pack_folder,
    patch_state,
    save_recording,
    table_channel,
    thaw_ages,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeDaemon:
    """Answers snapshot and table like the daemon, from a state that moves with the clock."""

    def __init__(self, clock: Clock, rows: int = 40, asynchronous: bool = False) -> None:
        self.clock = clock
        self.rows = rows
        self.asynchronous = asynchronous
        self.asked: list[dict[str, Any]] = []

    def reply(self, req: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(req)
        tick = round((self.clock() - 1000.0) * 2)
        if req["cmd"] == "snapshot":
            return {"ok": True, "lab": "t", "time": self.clock(), "headline": f"tick {tick}",
                    "nodes": [{"name": n, "state": "active", "counters": {"held": tick}}
                              for n in ("n1", "n2")],
                    "flows": [{"name": f"f{i}", "health": "healthy", "bytes": tick * i}
                              for i in range(3)],
                    "events": [{"t": 0, "text": "must not be recorded here"}]}
        assert req["cmd"] == "table"
        first = tick  # rows come and go: a window sliding one row per tick
        rows = [{"key": f"{req['node']}-{k}", "packets": tick if k % 3 == 0 else 1,
                 "scope": req["scope"], "age_s": tick * 0.5 + k} for k in range(first, first + self.rows)]
        return {"ok": True, "rows": rows[:req["limit"]], "total": len(rows)}

    def __call__(self, req: dict[str, Any]) -> Any:
        if self.asynchronous:
            async def later() -> dict[str, Any]:
                return self.reply(req)
            return later()
        return self.reply(req)


def record(tmp: Path, captures: int, limits: Limits | None = None, asynchronous: bool = False,
           events_every: int = 3) -> tuple[Recorder, dict[float, dict[str, Any]], Clock]:
    """Run `captures` captures half a second apart; returns the replies seen at each time."""
    clock = Clock()
    lab = FakeDaemon(clock, asynchronous=asynchronous)
    rec = Recorder(tmp, lab, limits or Limits(segment_s=5.0), clock=clock, meta={"lab": "t"})
    seen: dict[float, dict[str, Any]] = {}

    async def go() -> None:
        for i in range(captures):
            if i % events_every == 0:
                rec.event({"t": clock(), "id": i, "kind": "sync", "text": f"event {i}"})
            await rec.capture()
            seen[clock()] = {"snapshot": lab.reply({"cmd": "snapshot"}),
                             "n2 own": lab.reply({"cmd": "table", "node": "n2", "scope": "own",
                                                  "limit": 500})}
            clock.t += 0.5
        await rec.stop()

    asyncio.run(go())
    return rec, seen, clock


def test_round_trip_every_capture_reads_back_as_recorded(tmp_path: Path) -> None:
    _rec, seen, _clock = record(tmp_path, 40)
    recording = Recording.open(tmp_path / RECORDING_DIR)
    assert recording.header["version"] == FORMAT_VERSION
    assert recording.header["lab"] == "t"
    assert len(recording.segments) == 4  # 40 captures, 0.5 s apart, 5 s segments
    for t, want in seen.items():
        at, state = recording.state_at(t)
        assert at == t
        snap = dict(want["snapshot"])
        snap.pop("events")
        assert state["snapshot"] == snap
        assert state[table_channel("n2", "own")]["rows"] == want["n2 own"]["rows"]
    assert [e["id"] for e in recording.events] == list(range(0, 40, 3))


def test_seek_between_captures_shows_the_earlier_one_and_clamps_at_the_ends(tmp_path: Path) -> None:
    record(tmp_path, 30)
    recording = Recording.open(tmp_path / RECORDING_DIR)
    assert recording.state_at(1007.3)[0] == 1007.0
    assert recording.state_at(1007.3)[1]["snapshot"]["headline"] == "tick 14"
    assert recording.state_at(10.0)[0] == 1000.0
    assert recording.state_at(1e12)[0] == 1014.5
    # backwards after forwards: the cached state must not leak into an earlier moment
    assert recording.state_at(1012.0)[1]["snapshot"]["headline"] == "tick 24"
    assert recording.state_at(1011.0)[1]["snapshot"]["headline"] == "tick 22"


def test_an_async_handler_is_awaited_and_no_events_ride_in_snapshots(tmp_path: Path) -> None:
    rec, _seen, _clock = record(tmp_path, 4, asynchronous=True)
    recording = Recording.open(tmp_path / RECORDING_DIR)
    assert "events" not in recording.state_at(1000.0)[1]["snapshot"]
    asked = rec.handler.asked  # type: ignore[attr-defined]
    assert {(a.get("node"), a.get("scope")) for a in asked if a["cmd"] == "table"} == {
        (n, s) for n in ("n1", "n2") for s in ("own", "backup", "common")}


def test_bounded_by_size_drops_the_oldest_segments(tmp_path: Path) -> None:
    record(tmp_path, 200, Limits(segment_s=2.0))
    folder = tmp_path / RECORDING_DIR
    segment = max(p.stat().st_size for p in folder.glob("seg-*.swseg"))
    whole = sum(p.stat().st_size for p in folder.glob("seg-*.swseg"))
    for p in folder.glob("seg-*.swseg"):
        p.unlink()
    record(tmp_path, 200, Limits(segment_s=2.0, max_bytes=whole // 3))
    kept = sorted(folder.glob("seg-*.swseg"))
    assert sum(p.stat().st_size for p in kept) <= whole // 3
    assert sum(p.stat().st_size for p in kept) > whole // 3 - 2 * segment
    recording = Recording.open(folder)
    assert recording.segments[0].t_first > 1000.0  # the start is gone
    assert recording.segments[-1].t_last == 1099.5  # the end is kept


def test_bounded_by_age_keeps_the_last_minutes(tmp_path: Path) -> None:
    record(tmp_path, 200, Limits(segment_s=2.0, max_age_s=30.0))
    recording = Recording.open(tmp_path / RECORDING_DIR)
    assert recording.segments[-1].t_last - recording.segments[0].t_first <= 32.0
    assert recording.segments[-1].t_last == 1099.5


def test_a_truncated_file_reads_up_to_its_last_whole_segment(tmp_path: Path) -> None:
    record(tmp_path, 40)
    data = pack_folder(tmp_path / RECORDING_DIR)
    whole = Recording.from_bytes(data)
    last = whole.segments[-1]
    cut = data[:last.offset + 40]
    recording = Recording.from_bytes(cut, "cut.swrec")
    assert len(recording.segments) == len(whole.segments) - 1
    assert f"offset {last.offset}" in recording.problem
    assert "cut.swrec" in recording.problem and "truncated" in recording.problem
    assert recording.state_at(1e12)[0] == whole.segments[-2].t_last


def test_a_corrupt_segment_names_its_offset(tmp_path: Path) -> None:
    record(tmp_path, 40)
    data = bytearray(pack_folder(tmp_path / RECORDING_DIR))
    seg = Recording.from_bytes(bytes(data)).segments[2]
    data[seg.offset + 40] ^= 0xFF
    recording = Recording.from_bytes(bytes(data))
    assert len(recording.segments) == 2
    assert f"offset {seg.offset}" in recording.problem and "checksum" in recording.problem


def test_a_newer_format_is_refused_with_its_version(tmp_path: Path) -> None:
    record(tmp_path, 4)
    data = pack_folder(tmp_path / RECORDING_DIR)
    _magic, _version, head_len = FILE_HEAD.unpack_from(data)
    newer = struct.pack("<6sHI", FILE_MAGIC, FORMAT_VERSION + 1, head_len) + data[FILE_HEAD.size:]
    with pytest.raises(FormatTooNew, match=f"version {FORMAT_VERSION + 1}"):
        Recording.from_bytes(newer)
    with pytest.raises(RecordingError, match="not a syncwall recording"):
        Recording.from_bytes(b"hello world, not a recording")
    with pytest.raises(RecordingError, match="no segments"):
        Recording.from_bytes(data[:FILE_HEAD.size + head_len])


def test_the_flush_file_makes_the_open_segment_readable_at_once(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder(tmp_path, FakeDaemon(clock), Limits(), clock=clock)

    async def go() -> None:
        await rec.capture()
        assert not list((tmp_path / RECORDING_DIR).glob("seg-*.swseg"))
        (tmp_path / RECORDING_DIR / FLUSH_FILE).touch()
        clock.t += 0.5
        await rec.capture()

    asyncio.run(go())
    assert not (tmp_path / RECORDING_DIR / FLUSH_FILE).exists()
    assert len(Recording.open(tmp_path / RECORDING_DIR).segments) == 1


def test_patches_rebuild_any_change_of_rows_and_fields() -> None:
    rng = random.Random(3)
    state: dict[str, dict[str, Any]] = {}
    for _ in range(300):
        new = {}
        for ch in rng.sample(["snapshot", "table a own", "table b own", "x"], rng.randint(1, 4)):
            rows = [{"key": f"k{rng.randint(0, 12)}", "v": rng.randint(0, 2)} for _ in range(8)]
            rows = list({r["key"]: r for r in rows}.values())
            new[ch] = {"rows": rows, "flows": [{"name": r["key"]} for r in rows[:3]],
                       **({"note": "n"} if rng.random() < 0.5 else {}), "total": len(rows)}
        assert patch_state(state, diff_state(state, new)) == new
        state = new


def test_limits_parse_from_text() -> None:
    limits = Limits.parse("max_mb=8, max_min=2,interval_ms=250")
    assert (limits.max_bytes, limits.max_age_s, limits.interval_ms) == (8 << 20, 120.0, 250)
    assert Limits.parse("") == Limits()
    with pytest.raises(ValueError, match="unknown recording limit"):
        Limits.parse("max_gb=1")
    with pytest.raises(ValueError, match="positive"):
        Limits.parse("interval_ms=0")


def test_ages_are_kept_as_birth_times_so_ageing_rows_cost_nothing() -> None:
    rows = [{"key": f"k{i}", "age_s": 10.0 + i} for i in range(50)]
    older = [{**r, "age_s": r["age_s"] + 0.5} for r in rows]
    a, b = freeze_ages(100.0, {"t": {"rows": rows}}), freeze_ages(100.5, {"t": {"rows": older}})
    assert diff_state(a, b) == {}  # nothing changed but the ages
    assert thaw_ages(100.5, b)["t"]["rows"][3]["age_s"] == 13.5
    jittered = freeze_ages(200.0, {"t": {"rows": [{"key": "x", "age_s": 4.7}]}})
    assert abs(thaw_ages(200.0, jittered)["t"]["rows"][0]["age_s"] - 4.7) <= 0.5


def test_save_copies_the_recording_out_readable_by_anyone(tmp_path: Path) -> None:
    record(tmp_path, 12)
    target = tmp_path / "out.swrec"
    # No daemon removes the flush file here: the save says the last seconds may be missing.
    doc = save_recording(tmp_path, target, wait_s=0.1)
    assert doc["ok"] and doc["partial"] and doc["segments"] == 2 and doc["bytes"] == target.stat().st_size
    assert target.stat().st_mode & 0o777 == 0o644
    assert len(Recording.open(target).events) == len(Recording.open(tmp_path / RECORDING_DIR).events)


def test_save_of_a_folder_without_recording_says_so_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="holds no recording"):
        save_recording(tmp_path, tmp_path / "out.swrec", wait_s=0.1)
    assert not (tmp_path / "out.swrec").exists()


def test_save_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    record(tmp_path, 2)
    with pytest.raises(RecordingError, match=r"cannot write the recording to .*missing"):
        save_recording(tmp_path, tmp_path / "missing" / "out.swrec", wait_s=0.1)
