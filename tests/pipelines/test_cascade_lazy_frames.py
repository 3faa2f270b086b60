"""CascadeStage.cut on a live batch's list of frames, one a row: the live GPU path's full-size
NV12 frames (:class:`pipelines.live_decode.Nv12SourceFrame`) become RGB only for the rows a
crop is cut from, and give the crops the RGB frames would give. CPU tensors: no GPU needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

import pipelines.cascade as cascade
from pipelines.cascade import CascadeStage
from pipelines.live_decode import Nv12SourceFrame
from streams.cascade_config import SecondaryConfig
from streams.detections import Detections
from streams.frames import FrameMeta, FrameResult
from streams.synthetic import CLASS_COLORS, CLASS_NAMES
from tests.pipelines.test_cascade import COLOURS, _Colour


class _Counted(Nv12SourceFrame):
    """Counts its conversions to RGB."""

    __slots__ = ("calls",)

    def __init__(self, nv12: Any, standard: int) -> None:
        super().__init__(nv12, standard)
        self.calls = 0

    def rgb(self) -> Any:
        self.calls += 1
        return super().rgb()


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lazy") / "colour.ts"
    torch.jit.save(torch.jit.script(_Colour()), str(path))
    return path


def _stage(model: Path) -> CascadeStage:
    stage = CascadeStage([SecondaryConfig(name="colour", model=str(model), labels=list(COLOURS),
                                          input_size=[24, 24], min_size=6)])
    stage.load("cpu", CLASS_NAMES)
    return stage


def _frame(w: int, h: int, squares: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
    """NV12 of a grey frame with a square of each class's colour at each box."""
    rgb = np.full((h, w, 3), 114, np.uint8)
    for cls, (x1, y1, x2, y2) in squares:
        rgb[y1:y2, x1:x2] = CLASS_COLORS[cls]
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="nv12").to_ndarray()


def _result(sid: str, w: int, h: int, dets: list[tuple[int, tuple[int, int, int, int]]]) -> FrameResult:
    boxes = np.array([b for _, b in dets], np.float32).reshape(-1, 4)
    d = Detections(boxes, np.full(len(dets), 0.9, np.float32), np.array([c for c, _ in dets], np.int64), CLASS_NAMES)
    return FrameResult(FrameMeta(sid, sid, 0, 0, (1, 30), w, h), d)


# the batch: frame 1 has no result (a padding row); frames 2 and 4 have nothing to crop
_TINY = (1, (40, 30, 44, 34))  # 4 px: smaller than min_size 6
_ROWS = [
    ("a", 64, 48, [(0, (8, 8, 24, 24)), _TINY]),  # frame 0: one crop, one too small
    ("pad", 64, 48, [(1, (10, 10, 30, 30))]),       # frame 1: no result for it
    ("b", 64, 48, []),                              # frame 2: no detection
    ("c", 32, 32, [(2, (4, 4, 28, 28))]),           # frame 3: another shape
    ("d", 64, 48, [_TINY]),                         # frame 4: only a too small one
    ("e", 64, 48, [(3, (30, 10, 60, 40))]),         # frame 5
]


def _batch() -> tuple[list[np.ndarray], list[int], list[FrameResult]]:
    nv12 = [_frame(w, h, dets) for _, w, h, dets in _ROWS]
    rows = [0, 2, 3, 4, 5]
    return nv12, rows, [_result(_ROWS[i][0], _ROWS[i][1], _ROWS[i][2], _ROWS[i][3]) for i in rows]


def test_only_rows_with_a_chosen_detection_become_rgb_and_their_crops_match(colour_model: Path) -> None:
    nv12, rows, results = _batch()
    lazy = [_Counted(torch.from_numpy(f), 601) for f in nv12]
    stage = _stage(colour_model)
    stage.cut(lazy, rows, results)
    assert [f.calls for f in lazy] == [1, 0, 0, 1, 0, 1]  # a, c, e; not the padding row, b or d
    assert lazy[0].shape == (48, 64, 3) and lazy[3].shape == (32, 32, 3)
    # the same crops as from the RGB frames (the existing path, NumPy arrays one a row)
    from operators.color import nv12_to_rgb_reference

    ref = _stage(colour_model)
    ref.cut([nv12_to_rgb_reference(f) for f in nv12], rows, results)
    assert set(stage._pending) == set(ref._pending) == {(r.frame.source_id, 0) for r in results}
    crops = 0
    for key, cuts in stage._pending.items():
        for got, want in zip(cuts, ref._pending[key], strict=True):
            assert (got is None) == (want is None), key
            if got is not None and want is not None:
                assert got.rows.tolist() == want.rows.tolist()
                assert torch.allclose(got.crops, want.crops, atol=1 / 255 + 1e-6), key
                crops += got.rows.size
    assert crops == 3
    # bookkeeping for every row: entries without crops, the too-small detections counted
    assert stage._pending[("b", 0)] == [None] and stage._pending[("d", 0)] == [None]
    assert stage.report()["models"]["colour"]["too_small"] == 2
    assert stage.report()["peak_crop_bytes"] == 3 * 3 * 24 * 24 * 4
    # and the crops classify as their squares' colours; rows without crops pass through
    out = dict(stage.process_many([(r.frame.source_id, [r]) for r in results]))
    a_attrs = out["a"][0].detections.attributes
    assert a_attrs is not None and a_attrs[0]["colour"][0] == COLOURS[0] and a_attrs[1] == {}  # (the tiny one)
    assert out["c"][0].detections.attributes[0]["colour"][0] == COLOURS[2]  # type: ignore[index]
    assert out["e"][0].detections.attributes[0]["colour"][0] == COLOURS[3]  # type: ignore[index]
    assert out["b"][0].detections.attributes is None and out["d"][0].detections.attributes is None
    assert stage._pending == {} and stage._pending_bytes == 0
    assert stage.report()["models"]["colour"]["classified"] == 3


def test_rows_are_stacked_a_few_at_a_time(colour_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nv12, rows, results = _batch()
    whole = _stage(colour_model)
    whole.cut([Nv12SourceFrame(torch.from_numpy(f), 709) for f in nv12], rows, results)
    monkeypatch.setattr(cascade, "_STACK_ROWS", 1)
    one = _stage(colour_model)
    one.cut([Nv12SourceFrame(torch.from_numpy(f), 709) for f in nv12], rows, results)
    for key, cuts in whole._pending.items():
        for a, b in zip(cuts, one._pending[key], strict=True):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert torch.equal(a.crops, b.crops), key


def test_a_batch_with_nothing_to_crop_reads_no_frame(colour_model: Path) -> None:
    nv12, _, _ = _batch()
    lazy = [_Counted(torch.from_numpy(f), 601) for f in nv12]
    results = [_result("b", 64, 48, []), _result("d", 64, 48, [_TINY])]
    stage = _stage(colour_model)
    stage.cut(lazy, [2, 4], results)
    assert [f.calls for f in lazy] == [0] * 6
    assert set(stage._pending) == {("b", 0), ("d", 0)}
    assert stage.report()["models"]["colour"]["too_small"] == 1 and stage.report()["peak_crop_bytes"] == 0
