"""Tracking bookkeeping: a source's clock (frame rate, times, silences) and its track book."""

from __future__ import annotations

import numpy as np
import pytest

from operators.tracking import FALLBACK_FPS, SourceClock, TrackBook
from streams.frames import FrameMeta


def _meta(i: int, pts: int | None, arrival: float | None = None, time_base: tuple[int, int] = (1, 90000)
          ) -> FrameMeta:
    return FrameMeta("cam", "cam", i, pts, time_base, 640, 480, arrival)


def test_the_frame_rate_is_measured_from_pts() -> None:
    clock = SourceClock()
    assert not clock.learn_rate([_meta(0, 0)])  # one frame does not tell it
    assert clock.fps is None
    assert clock.learn_rate([_meta(0, 0), _meta(1, 3003)])  # 29.97 fps
    assert clock.fps == pytest.approx(30000 / 1001)


def test_the_frame_rate_counts_frames_missing_between_two_pts() -> None:
    clock = SourceClock()
    assert clock.learn_rate([_meta(0, 0), _meta(5, 5 * 3600)])  # 25 fps, four frames never came
    assert clock.fps == pytest.approx(25.0)


@pytest.mark.parametrize("metas", [[_meta(0, None), _meta(1, None)], [_meta(0, 100), _meta(1, 100)]])
def test_frames_that_do_not_tell_the_rate_fall_back(metas: list[FrameMeta]) -> None:
    clock = SourceClock()
    assert clock.learn_rate(metas)
    assert clock.fps == FALLBACK_FPS


def test_forcing_the_rate_of_a_lone_frame() -> None:
    clock = SourceClock()
    assert clock.learn_rate([_meta(0, 0)], force=True) and clock.fps == FALLBACK_FPS


def test_times_are_pts_seconds_and_silences_the_time_between_frames() -> None:
    clock = SourceClock()
    clock.learn_rate([_meta(0, 0), _meta(1, 3600)])
    assert clock.advance(_meta(0, 0)) == (0.0, 0.0)
    assert clock.advance(_meta(1, 3600)) == pytest.approx((0.04, 0.04))
    assert clock.advance(_meta(11, 11 * 3600)) == pytest.approx((0.44, 0.4))  # ten frames skipped


def test_frames_without_pts_or_with_a_repeated_pts_still_move_forward() -> None:
    clock = SourceClock()
    clock.learn_rate([_meta(0, 0), _meta(1, 3600)])
    clock.advance(_meta(0, 0))
    assert clock.advance(_meta(1, 0)) == pytest.approx((0.04, 0.04))  # repeated pts
    assert clock.advance(_meta(3, None)) == pytest.approx((0.12, 0.08))  # index / fps


def test_a_live_source_silence_is_seen_in_arrival_times_when_pts_continue() -> None:
    clock = SourceClock()
    clock.learn_rate([_meta(0, 0), _meta(1, 3600)])
    clock.advance(_meta(0, 0, arrival=1000.0))
    t, silence = clock.advance(_meta(1, 3600, arrival=1007.5))  # reconnected: pts one step on
    assert t == pytest.approx(0.04) and silence == pytest.approx(7.5)


def _observe(book: TrackBook, i: int, ids: list[int], classes: list[int]) -> None:
    book.observe(_meta(i, i * 3600), np.array(ids, np.int64), np.array(classes, np.int64), ("car", "bus"))


def test_a_track_summary_has_its_majority_class_first_and_last_frames_and_frames_seen() -> None:
    book = TrackBook(keep=10)
    _observe(book, 3, [-1, 7], [0, 1])
    _observe(book, 4, [7], [0])
    _observe(book, 6, [7, -1], [1, 0])
    assert book.active == {7} and book.next_id == 8
    assert book.end([7, 9], "done") == [7]
    report = book.report()
    assert report["tracks"] == [{"track_id": 7, "class": "bus", "first_frame": 3, "last_frame": 6,
                                 "first_pts_s": 0.12, "last_pts_s": 0.24, "frames": 3, "end": "done"}]
    assert (report["tracks_total"], report["tracks_left_out"]) == (1, 0)


def test_the_book_keeps_the_most_recent_ended_tracks_and_counts_the_rest() -> None:
    book = TrackBook(keep=2)
    for tid in range(5):
        _observe(book, tid, [tid], [0])
        book.end([tid], "lost")
    _observe(book, 9, [5], [0])
    report = book.report()
    assert [t["track_id"] for t in report["tracks"]] == [3, 4, 5]
    assert (report["tracks_total"], report["tracks_left_out"]) == (6, 3)
    assert [t["end"] for t in report["tracks"]] == ["lost", "lost", None]
