"""A stream added with ``first_frame_index`` (a camera restarted on another Ray worker,
``pipelines.ray_live``) numbers its frames from it: what the manager hands out and what it
reports dropped, for a real reader (a clip, its end read as a reconnect) and for a source
that reports drops of its own (an ingest process's), which still number from 0."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams.errors import ConfigError
from streams.frames import FrameMeta
from streams.live.config import parse_live_config
from streams.live.manager import StreamManager
from streams.live.types import FRAME_INDEX_LIMIT, GopBuffer, LiveFrame, LiveItem, StreamSpec
from tests.live.helpers import PushSource
from tests.media import write_clip

EPOCH = 2**40


@pytest.mark.parametrize("mode", ["frames", "gop"])
def test_frames_are_numbered_from_the_first_index_with_none_lost(tmp_path: Path, mode: str) -> None:
    """Behind a queue of one, every index from the first up is handed out or reported
    dropped, once, across reconnects; a stream added without one still counts from 0."""
    clip = write_clip(tmp_path / "c.mp4", frames=20, width=96, height=64, options={"g": "5", "bf": "0"})
    cfg = parse_live_config({"http": {"enabled": False}, "log_interval_s": 0, "decode": "cpu",
                             "pace_files": False, "loop_files": False,
                             "backoff": {"initial_s": 0.01, "max_s": 0.02},
                             "batch": {"queue_size": 1, "policy": "drop_oldest"}})
    got: list[LiveItem] = []
    dropped: dict[str, list[int]] = {"a": [], "z": []}
    with StreamManager(cfg, mode=mode) as mgr:  # type: ignore[arg-type]
        mgr.add_stream(StreamSpec("a", f"file://{clip}"), first_frame_index=3 * EPOCH)
        mgr.add_stream(StreamSpec("z", f"file://{clip}"))
        assert mgr.first_frame_index("a") == 3 * EPOCH and mgr.first_frame_index("z") == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and min(mgr.stats(s).sessions for s in "az") < 3:  # type: ignore[union-attr]
            got += mgr.next_batch(2, 0.05)
            for sid, indices in mgr.take_dropped().items():
                dropped[sid] += indices
            time.sleep(0.002)
    for sid, indices in mgr.take_dropped().items():
        dropped[sid] += indices
    for sid, first in (("a", 3 * EPOCH), ("z", 0)):
        delivered = [m.frame_index for it in got if it.source_id == sid for m in it.metas]
        assert delivered and dropped[sid], (sid, delivered, dropped[sid])  # read again after each end of file
        assert delivered == sorted(set(delivered)), sid
        assert not set(delivered) & set(dropped[sid]) and len(set(dropped[sid])) == len(dropped[sid]), sid
        upto = max(delivered) + 1  # later frames may still be queued, or dropped after the last take
        assert sorted(delivered + [i for i in dropped[sid] if i < upto]) == list(range(first, upto)), sid
        assert upto - first > 20  # past the clip's first read: the reconnect went on counting


def _meta(sid: str, i: int) -> FrameMeta:
    return FrameMeta(sid, "x", i, i * 3000, (1, 90000), 8, 8)


def test_a_sources_own_numbers_and_drops_are_shifted_and_bad_first_indices_refused() -> None:
    made: dict[str, PushSource] = {}

    def factory(spec: StreamSpec, emit: Any) -> PushSource:
        made[spec.id] = PushSource(spec, emit)
        return made[spec.id]

    cfg = parse_live_config({"http": {"enabled": False}, "log_interval_s": 0, "batch": {"queue_size": 8}})
    with StreamManager(cfg, mode="frames", source_factory=factory) as mgr:
        mgr.add_stream(StreamSpec("a", "rtsp://h/a"), first_frame_index=EPOCH)
        made["a"].emit(LiveFrame(_meta("a", 0), None))  # type: ignore[arg-type]
        made["a"].emit(GopBuffer("a", b"", "h264", "h264", (_meta("a", 1), _meta("a", 2))))
        made["a"].own_drops = [3, 4]
        assert mgr.take_dropped() == {"a": [EPOCH + 3, EPOCH + 4]}
        items = mgr.next_batch(8, 0.0)
        assert [m.frame_index for it in items for m in it.metas] == [EPOCH, EPOCH + 1, EPOCH + 2]
        assert items[0].metas[0].pts == 0 and items[1].metas[1].pts == 6000  # only the index moves
        for bad in (-1, FRAME_INDEX_LIMIT):
            with pytest.raises(ConfigError) as e:
                mgr.add_stream(StreamSpec("b", "rtsp://h/b"), first_frame_index=bad)
            assert e.value.key == "first_frame_index"
        assert "b" not in mgr.stream_ids()
        assert mgr.remove_stream("a")
        assert mgr.first_frame_index("a") == EPOCH  # (its frames in flight still number from it)
