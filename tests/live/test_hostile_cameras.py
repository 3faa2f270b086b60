"""Hostile cameras next to healthy ones: garbage RTP, a resolution change mid-stream, a codec
change mid-stream (no renegotiation), and a camera that announces H.264 but sends HEVC.

Each hostile camera is reported (its last error says what happened) and reconnected, or
quarantined with the reason; the healthy cameras never pause: counted by their frames'
timestamps (the camera's clock), they deliver as many frames in the fault window as in an
equal window before it (within 5 %), with no index missing and no state change. Cameras:
:mod:`tests.servers.hostile_rtsp`, the healthy ones in a server of their own, whose
pre-encoded clips make their frame output exact even on a loaded machine (a live encoder
that falls behind drops frames itself, which would be counted against the job)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from streams.frames import FrameMeta
from streams.live.config import parse_live_config
from streams.live.manager import StreamManager
from streams.live.types import StreamSpec, StreamState, StreamStats
from tests.live.helpers import MetaConsumer, wait_state, wait_until
from tests.servers.helpers import HostileRtspProcess

pytestmark = pytest.mark.slow

HEALTHY = ("ok0", "ok1")
HOSTILE = {
    # first phase until next_phase(), then the next (the last one stays)
    "garbage": "garbage:phases=h264@320x240+garbage+h264@320x240",
    "resize": "resize:phases=h264@320x240+h264@480x272",
    "codec": "codec:phases=h264@320x240+hevc@320x240",
    "liar": "liar:phases=hevc@320x240,announce=h264",
}
PAUSE_S = 3.0  # quarantine pause (short, so the garbage camera's recovery is seen)


def _config() -> Any:
    return parse_live_config({
        "http": {"enabled": False}, "log_interval_s": 0,
        "watchdog": {"stall_s": 3, "open_timeout_s": 3, "undecodable_s": 2},
        "backoff": {"initial_s": 0.2, "max_s": 1},
        "quarantine": {"faults": 3, "window_s": 60, "pause_s": PAUSE_S},
        "batch": {"queue_size": 64, "max_wait_ms": 20},
    })


def _frames_in(metas: list[tuple[FrameMeta, int]], start: int, end: int) -> int:
    return sum(1 for m, _ in metas if m.pts is not None and start <= m.pts < end)


def _pts_at(metas: list[tuple[FrameMeta, int]], t: float) -> int:
    """The pts of the frame that arrived closest to wall time ``t`` (maps the fault window
    onto the camera's clock; the counting itself uses pts only)."""
    m = min((m for m, _ in metas if m.arrival_time is not None and m.pts is not None),
            key=lambda m: abs((m.arrival_time or 0.0) - t))
    assert m.pts is not None
    return m.pts


def _run(hostile_rtsp: Callable[[Sequence[str]], HostileRtspProcess], mgr: StreamManager,
         caplog: pytest.LogCaptureFixture, gpu: bool = False) -> None:
    caplog.set_level(logging.INFO, logger="streams.live")
    good = hostile_rtsp([f"{c}:phases=h264@320x240" for c in HEALTHY])  # one phase: always healthy
    bad = hostile_rtsp(list(HOSTILE.values()))
    consumer = MetaConsumer(mgr)
    consumer.start()
    stats: dict[str, StreamStats] = {}
    try:
        for c in HEALTHY:
            mgr.add_stream(StreamSpec(c, good.url(c)))
        for c in HOSTILE:
            mgr.add_stream(StreamSpec(c, bad.url(c)))
        assert wait_state(mgr, [*HEALTHY, "garbage", "resize", "codec"], StreamState.LIVE, 20), mgr.summary_line()
        time.sleep(8.0)  # the window before the faults
        t_fault = time.time()
        bad.next_phase()  # garbage: garbage; resize: 480x272; codec: HEVC under the H.264 payload type

        def settled() -> bool:
            s = {x.id: x for x in mgr.streams()}
            return (s["resize"].state == StreamState.LIVE and (s["resize"].width, s["resize"].height) == (480, 272)
                    and s["codec"].state == StreamState.LIVE and s["codec"].codec == "hevc"
                    and s["garbage"].quarantines >= 1 and s["liar"].quarantines >= 1)

        assert wait_until(settled, 40), mgr.summary_line()
        t_end = time.time()
        bad.next_phase()  # the garbage camera sends H.264 again: back after its quarantine pause
        assert wait_until(lambda: mgr.stats("garbage").state == StreamState.LIVE  # type: ignore[union-attr]
                          and mgr.stats("garbage").frames > 0, PAUSE_S + 15), mgr.summary_line()  # type: ignore[union-attr]
        recovered_at = mgr.stats("garbage").frames  # type: ignore[union-attr]
        assert wait_until(lambda: mgr.stats("garbage").frames > recovered_at + 15, 10)  # type: ignore[union-attr]
        stats = {s.id: s for s in mgr.streams()}
        histories = {sid: [st for _, st in mgr.source(sid).history()] for sid in stats}  # type: ignore[union-attr]
    finally:
        mgr.stop(5)
        consumer.stop()

    # the healthy cameras: as many frames during the faults as before, none missing, no state change
    for cam in HEALTHY:
        metas = consumer.metas(cam)
        p_fault = _pts_at(metas, t_fault)
        first = min(m.pts for m, _ in metas if m.pts is not None)
        # equal windows on the camera's clock (RTP video: 90 kHz): the fault's, and as long before it
        seconds = min(t_end - t_fault, (p_fault - first) / 90_000 - 0.5)
        assert seconds >= 4.0, (cam, seconds)
        span = int(seconds * 90_000)
        before = _frames_in(metas, p_fault - span, p_fault)
        during = _frames_in(metas, p_fault, p_fault + span)
        assert before >= 0.9 * seconds * 15, (cam, before, seconds)  # the window before was full
        assert abs(during - before) <= 0.05 * before, (cam, before, during)
        indices = [m.frame_index for m, _ in metas]
        assert indices == list(range(len(indices))), f"{cam}: frames missing or out of order"
        assert histories[cam] == [StreamState.CONNECTING, StreamState.LIVE], (cam, histories[cam])
        assert stats[cam].faults == 0 and stats[cam].reconnects == 0 and stats[cam].dropped == 0

    # resize: reported, reconnected, every session one size, indices continuing
    r = stats["resize"]
    reasons = ["resolution changed mid-stream: 320x240 -> 480x272"] + (["GPU decode failed"] if gpu else [])
    assert r.faults >= 1 and any(x in (r.last_error or "") for x in reasons), r  # NVDEC may refuse the new size
    frames = consumer.metas("resize")
    sizes = {s: {(m.width, m.height) for m, ss in frames if ss == s} for s in {ss for _, ss in frames}}
    assert all(len(v) == 1 for v in sizes.values()), sizes
    assert {(320, 240), (480, 272)} == set().union(*sizes.values()), sizes
    assert [m.frame_index for m, _ in frames] == list(range(len(frames)))
    assert StreamState.RECONNECTING in histories["resize"]

    # codec: HEVC under the H.264 payload type was reported; the reconnection found HEVC announced
    c = stats["codec"]
    assert c.faults >= 1 and c.codec == "hevc" and c.state == StreamState.LIVE
    assert any("none decoded" in rec.getMessage() or "no keyframe" in rec.getMessage()
               for rec in caplog.records if "codec" in rec.getMessage())
    assert max(s for _, s in consumer.metas("codec")) >= 1  # frames of a later session came

    # garbage: quarantined with the reason, then back once the camera behaved
    g = stats["garbage"]
    assert g.quarantines >= 1 and g.faults >= 3 and g.state == StreamState.LIVE
    assert StreamState.QUARANTINED in histories["garbage"]
    quarantined = [rec.getMessage() for rec in caplog.records if "quarantined for" in rec.getMessage()]
    assert any("garbage" in m and "3 faults" in m for m in quarantined), quarantined

    # liar: announced H.264, sent HEVC: never a frame, quarantined saying why
    assert stats["liar"].quarantines >= 1 and consumer.metas("liar") == []
    assert any("liar" in m and "announced" in m and "h264" in m for m in quarantined), quarantined


def test_hostile_cameras_cpu(hostile_rtsp: Callable[[Sequence[str]], HostileRtspProcess],
                             caplog: pytest.LogCaptureFixture) -> None:
    mgr = StreamManager(_config(), mode="frames").start()
    _run(hostile_rtsp, mgr, caplog)


@pytest.mark.gpu
def test_hostile_cameras_gpu(hostile_rtsp: Callable[[Sequence[str]], HostileRtspProcess],
                             caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.nvdec import nvdec_decoder_factory

    mgr = StreamManager(_config(), mode="packets",
                        decoder_factory=nvdec_decoder_factory(0, (640, 640), "letterbox")).start()
    _run(hostile_rtsp, mgr, caplog, gpu=True)

