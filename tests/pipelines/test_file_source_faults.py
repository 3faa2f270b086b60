"""The file source under faults: a decoder stuck in native code (the watchdog), a frame size
change mid-stream, a file changing on disk while it is read.

A stuck decoder is real here: right after the probe, a file is replaced by a named pipe no
one writes to, so FFmpeg's ``open()`` (PyAV's, or DALI's reader's) blocks with no timeout.
The pipe is released at the end of each test, so the abandoned threads end too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines import runner
from pipelines.file_source import DecodePlan, FileDecodeSource, FileEvent
from pipelines.preprocess import PreprocessSpec
from pipelines.video_decoding import DecodedBatch
from streams.config import PreprocessConfig, parse_config
from streams.errors import ConfigError
from streams.sources.files import VideoFile
from streams.sources.probe import BackgroundProbe
from tests.media import write_clip
from tests.pipelines.fuzz_corpus import resized_stream

SPEC = PreprocessSpec(dtype="float32", layout="NCHW", options=PreprocessConfig())
HANG_S = 60.0  # a source not finished by then hangs
STALL_S = 2.0  # the tests' stall timeout (DALI is imported and warm by then: see ``warm``)


def _plan(**kw: Any) -> DecodePlan:
    return DecodePlan(SPEC, (64, 64), batch=kw.pop("batch", 8), decode_device="cpu", device_id=None, **kw)


def _drain(source: FileDecodeSource, pause_s: float = 0.0) -> tuple[dict[str, FileEvent], dict[str, list[int]]]:
    """Read ``source`` to its end in a thread (a hang fails the test): each file's last event
    and the frame indices of its batches (``pause_s``: a slow consumer, after each batch)."""
    ends: dict[str, FileEvent] = {}
    frames: dict[str, list[int]] = {}
    done = threading.Event()

    def run() -> None:
        with source:
            while (item := source.read()) is not None:
                if isinstance(item, DecodedBatch):
                    for r in item.rows:
                        if r is not None:
                            frames.setdefault(r.source_id, []).append(r.frame_index)
                    done.wait(pause_s)
                elif item.kind in ("done", "failed"):
                    ends[item.file.source_id] = item
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if not done.wait(HANG_S):
        pytest.fail(f"the file source did not finish within {HANG_S:.0f} s")
    t.join()
    return ends, frames


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import DALI and build both decoders once, as ``fovea run`` does before its clock starts
    (the first import alone can take longer than the tests' stall timeout on a busy machine)."""
    d = tmp_path_factory.mktemp("warm")
    files = [VideoFile(write_clip(d / n, c, frames=4, width=64, height=48), n)
             for n, c in (("a.mp4", "libx264"), ("b.webm", "libvpx-vp9"))]
    ends, _ = _drain(FileDecodeSource(files, _plan(sessions=2)))
    assert {e.kind for e in ends.values()} == {"done"}


@pytest.fixture
def pipe_after_probe() -> Iterator[Any]:
    """``swap(paths, victim)``: probe ``paths``, then replace ``victim`` by a named pipe; the
    probe comes back (for the source). The pipe is released when the test ends."""
    pipes: list[Path] = []

    def swap(paths: list[Path], victim: Path) -> BackgroundProbe:
        probe = BackgroundProbe(paths, processes=1)
        probe.result()
        victim.unlink()
        os.mkfifo(victim)
        pipes.append(victim)
        return probe

    yield swap
    for p in pipes:  # both ends let a reader blocked in open() through; closing gives it EOF
        fd = os.open(p, os.O_RDWR)
        p.unlink()
        os.close(fd)


def test_a_decoder_stuck_in_open_fails_its_file_and_the_others_go_on(tmp_path: Path, pipe_after_probe: Any) -> None:
    """PyAV path, one session: the session stuck on the second file is replaced, and its
    successor decodes the files after it."""
    paths = [write_clip(tmp_path / f"c{i}.mkv", "libx264", frames=10, width=96, height=64) for i in range(4)]
    probe = pipe_after_probe(paths, paths[1])
    files = [VideoFile(p, p.name) for p in paths]
    ends, frames = _drain(FileDecodeSource(files, _plan(sessions=1, stall_timeout_s=STALL_S), probe=probe))
    stuck = ends.pop("c1.mkv")
    assert stuck.kind == "failed" and stuck.frames == 0 and stuck.expected_frames == 10
    assert stuck.error is not None and "decoding stalled" in stuck.error.reason
    assert f"decode.stall_timeout_s: {STALL_S:g}" in stuck.error.reason
    assert {k: (e.kind, e.frames) for k, e in ends.items()} == {f"c{i}.mkv": ("done", 10) for i in (0, 2, 3)}
    assert {k: sorted(v) for k, v in frames.items()} == {f"c{i}.mkv": list(range(10)) for i in (0, 2, 3)}


def test_a_reader_stuck_before_its_first_frame_finds_its_culprit_alone(tmp_path: Path,
                                                                        pipe_after_probe: Any) -> None:
    """DALI reader path: four VP9 files of one size share a reader, which opens them all
    before its first frame, so a stall then names no file: they are read one by one and only
    the culprit fails."""
    paths = [write_clip(tmp_path / f"v{i}.webm", "libvpx-vp9", frames=10, width=96, height=64) for i in range(4)]
    probe = pipe_after_probe(paths, paths[2])
    files = [VideoFile(p, p.name) for p in paths]
    ends, frames = _drain(FileDecodeSource(files, _plan(sessions=1, stall_timeout_s=STALL_S), probe=probe))
    assert ends["v2.webm"].kind == "failed" and ends["v2.webm"].frames == 0
    assert {k: (e.kind, e.frames) for k, e in ends.items() if k != "v2.webm"} == \
        {f"v{i}.webm": ("done", 10) for i in (0, 1, 3)}
    assert "v2.webm" not in frames


def test_waiting_for_room_in_the_queue_is_not_a_stall(tmp_path: Path) -> None:
    """A consumer slower than the stall timeout: the sessions wait for room, nothing fails."""
    paths = [write_clip(tmp_path / "a.mp4", "libx264", frames=12, width=96, height=64),
             write_clip(tmp_path / "b.webm", "libvpx-vp9", frames=12, width=96, height=64)]
    files = [VideoFile(p, p.name) for p in paths]
    source = FileDecodeSource(files, _plan(sessions=2, batch=4, stall_timeout_s=0.5), queue_size=1)
    ends, _ = _drain(source, pause_s=0.8)
    assert {k: (e.kind, e.frames) for k, e in ends.items()} == {"a.mp4": ("done", 12), "b.webm": ("done", 12)}
    assert source._decode_blocked > 0.5  # a session did wait longer than the timeout


@pytest.mark.parametrize("suffix,encoder", [(".webm", "libvpx-vp9"), (".ts", "libx264"), (".ts", "libx265")])
def test_a_frame_size_change_fails_the_file_after_the_frames_before_it(tmp_path: Path, suffix: str,
                                                                       encoder: str) -> None:
    """DALI's reader would decode the later frames as garbage at the first size; PyAV's path
    stops at the change. Either way the frames before it are processed and the file fails,
    naming both sizes and the frame."""
    data = resized_stream(tmp_path, "parts", encoder, suffix, [(96, 64), (64, 48)], [12, 10])
    path = tmp_path / f"resized{suffix}"
    path.write_bytes(data)
    ends, frames = _drain(FileDecodeSource([VideoFile(path, "r")], _plan(batch=4)))
    end = ends["r"]
    assert end.kind == "failed" and end.error is not None and end.expected_frames == 22
    assert "frame size changes mid-stream, from 96x64 to 64x48 at frame 12" in end.error.reason
    assert sorted(frames.get("r", [])) == list(range(end.frames))
    if suffix == ".webm":  # the reader decodes exactly the frames before the change
        assert end.frames == 12


def test_a_file_that_changes_while_it_is_read_fails_with_its_frames(tmp_path: Path) -> None:
    paths = [write_clip(tmp_path / "a.mkv", "libx264", frames=10, width=96, height=64),
             write_clip(tmp_path / "b.webm", "libvpx-vp9", frames=10, width=96, height=64)]
    probe = BackgroundProbe(paths, processes=1)
    probe.result()
    for p in paths:
        with open(p, "ab") as f:
            f.write(b"\0" * 64)  # a writer appended after the probe
    ends, frames = _drain(FileDecodeSource([VideoFile(p, p.name) for p in paths], _plan(), probe=probe))
    for name in ("a.mkv", "b.webm"):
        end = ends[name]
        assert end.kind == "failed" and end.error is not None, name
        assert "changed while it was read" in end.error.reason and "still being written" in end.error.reason
        assert end.frames == 10 and sorted(frames[name]) == list(range(10))


def test_the_stall_timeout_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"decode\.stall_timeout_s: expected 0\.1\.\.86400"):
        parse_config({"sources": ["a.mp4"], "decode": {"stall_timeout_s": 0}})
    assert parse_config({"sources": ["a.mp4"], "decode": {"stall_timeout_s": 5}}).decode.stall_timeout_s == 5.0
    with pytest.raises(ValueError, match="stall_timeout_s must be > 0"):
        FileDecodeSource([], _plan(stall_timeout_s=0.0))


def test_the_job_hands_the_stall_timeout_to_the_file_source() -> None:
    stage = SimpleNamespace(engine=SimpleNamespace(input_dtype="float32", input_layout="NCHW"),
                            info=SimpleNamespace(input_size=(64, 64), head=None, dynamic=False, source="m"))
    cfg = parse_config({"sources": ["a.mp4"], "decode": {"stall_timeout_s": 7}})
    assert runner.decode_plan(cfg, stage, "cpu", 8).stall_timeout_s == 7.0  # type: ignore[arg-type]
