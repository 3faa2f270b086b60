"""Per-frame candidates and greedy NMS in fixed shapes: a batch's postprocess without waits.

The exact path (:func:`operators.output_decoding.decode_yolov8` + :func:`operators.nms.batched_nms`)
sizes its tensors by the data, so the host waits for the GPU several times per batch (the
confidence filter's ``nonzero``, NMS convergence checks). Here no shape depends on the data:

1. :func:`top_candidates_yolov8` / :func:`top_candidates_yolov5` keep, for every frame, its
   ``capacity`` best candidates (score ``> conf_threshold``; decreasing score, ties by the
   lower anchor index, the exact path's order) as ``[B, K]`` tensors, and count how many
   candidates each frame had;
2. :func:`frame_nms` runs greedy NMS on each frame's row: a candidate is suppressed by a
   higher-ranked kept candidate of the same class (any class with ``class_agnostic``)
   whose IoU with it is strictly above the threshold. IoU is computed with the operations
   of :func:`operators.boxes.box_iou` in the same order, each rounded once, so the decisions
   are those of the exact path, bit for bit.

A frame whose ``num_candidates`` exceeds ``capacity`` lost candidates in step 1: its result is not
exact, and :func:`operators.postprocess.postprocess` sends such frames to the exact path.

On CUDA with Triton, :func:`frame_nms` is one kernel launch: one program per frame walks
its candidates in rank order and, for each one still kept, suppresses the lower-ranked
ones it overlaps (``O(count * K)`` work per frame, ``count`` iterations). Elsewhere (the
CPU, CUDA without Triton) a torch loop over ranks does the same, vectorized over frames.

Usage::

    cands = top_candidates_yolov8(pred, conf_threshold=0.25, capacity=512)   # pred [B, 84, 8400]
    keep = frame_nms(cands.boxes, cands.class_id, cands.num_candidates, iou_threshold=0.45)
    # keep: bool[B, K]; frame b is exact iff cands.num_candidates[b] <= K
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any, Literal, NamedTuple

import torch

from operators.boxes import cxcywh_to_xyxy
from operators.output_decoding import yolov5_best_class, yolov8_best_class
from streams.errors import ShapeError

__all__ = [
    "FrameCandidates",
    "NmsImpl",
    "frame_nms",
    "frame_nms_torch",
    "top_candidates_yolov5",
    "top_candidates_yolov8",
    "triton_available",
    "triton_problem",
]

logger = logging.getLogger(__name__)

NmsImpl = Literal["auto", "triton", "torch"]

_INVALID_KEY = torch.iinfo(torch.int64).min


class FrameCandidates(NamedTuple):
    """The ``K`` best candidates of every frame of a batch, in fixed shapes.

    Row ``b`` holds frame ``b``'s candidates by decreasing score (ties: lower anchor index
    first). Slots ``>= min(num_candidates[b], K)`` are empty: their values are unspecified.

    Attributes:
        boxes: ``float32[B, K, 4]`` xyxy in model-input pixels.
        scores: ``float32[B, K]``.
        class_id: ``int64[B, K]``.
        num_candidates: ``int64[B]`` candidates the frame had above the threshold (may
            exceed ``K``).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_id: torch.Tensor
    num_candidates: torch.Tensor


def _rank_keys(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``int64[B, N]`` keys whose descending order is (score desc, anchor index asc).

    The float32 bits are mapped to integers of the same order (negative floats have their
    magnitude bits flipped); the low 32 bits hold ``N - 1 - anchor``. Invalid entries get
    the smallest int64, below every valid key.
    """
    n = scores.shape[1]
    bits = (scores + 0.0).view(torch.int32)  # + 0.0: -0.0 becomes +0.0, equal scores equal keys
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    tiebreak = torch.arange(n - 1, -1, -1, device=scores.device, dtype=torch.int64)
    keys = ordered * (1 << 32) + tiebreak
    return torch.where(valid, keys, torch.full_like(keys, _INVALID_KEY))


def _top(best: torch.Tensor, valid: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index [B, K], count [B])``: the best ``K = min(capacity, N)`` anchors of each row."""
    if capacity < 1:
        raise ValueError(f"top_candidates: capacity must be >= 1, got {capacity}")
    k = min(capacity, best.shape[1])
    index = _rank_keys(best, valid).topk(k, dim=1, largest=True, sorted=True).indices
    return index, valid.sum(dim=1)


def top_candidates_yolov8(pred: torch.Tensor, conf_threshold: float, capacity: int) -> FrameCandidates:
    """The ``capacity`` best candidates of each frame of a YOLOv8 output ``Tensor[B, 4+nc, N]``.

    Each anchor is a candidate for its best class (ties: the lowest class id) when that
    score is ``> conf_threshold``: :func:`operators.output_decoding.yolov8_best_class`, as in
    :func:`operators.output_decoding.decode_yolov8`.

    Usage::

        cands = top_candidates_yolov8(out["output0"], 0.25, capacity=512)
    """
    best, best_cls, ok = yolov8_best_class(pred, conf_threshold, "top_candidates_yolov8")
    index, count = _top(best, ok, capacity)
    xywh = pred[:, :4, :].gather(2, index[:, None, :].expand(-1, 4, -1))  # [B, 4, K]
    boxes = cxcywh_to_xyxy(xywh.to(torch.float32).transpose(1, 2))
    return FrameCandidates(
        boxes.contiguous(), best.gather(1, index), best_cls.gather(1, index), count
    )


def top_candidates_yolov5(pred: torch.Tensor, conf_threshold: float, capacity: int) -> FrameCandidates:
    """The ``capacity`` best candidates of each frame of a YOLOv5 output ``Tensor[B, N, 5+nc]``.

    Score and filter are those of :func:`operators.output_decoding.decode_yolov5`
    (:func:`operators.output_decoding.yolov5_best_class`).

    Usage::

        cands = top_candidates_yolov5(out["output0"], 0.25, capacity=512)
    """
    best, best_cls, ok = yolov5_best_class(pred, conf_threshold, "top_candidates_yolov5")
    index, count = _top(best, ok, capacity)
    boxes = cxcywh_to_xyxy(pred[..., :4].gather(1, index[..., None].expand(-1, -1, 4)).to(torch.float32))
    return FrameCandidates(boxes.contiguous(), best.gather(1, index), best_cls.gather(1, index), count)


def frame_nms(
    boxes: torch.Tensor,
    class_id: torch.Tensor,
    count: torch.Tensor,
    iou_threshold: float,
    class_agnostic: bool = False,
    impl: NmsImpl = "auto",
) -> torch.Tensor:
    """Greedy NMS on every frame's ranked candidates.

    Args:
        boxes: ``float32[B, K, 4]`` xyxy, each row ranked (best first).
        class_id: ``int[B, K]``.
        count: ``int[B]``: slots ``>= count[b]`` of row ``b`` are empty (``count`` may
            exceed ``K``: the row is then full).
        iou_threshold: suppress when IoU > this.
        class_agnostic: candidates of different classes suppress each other.
        impl: ``"triton"`` (CUDA tensors, Triton installed), ``"torch"``, or ``"auto"``
            (Triton where it can run, torch otherwise).

    Returns:
        ``bool[B, K]``: whether each slot is a kept detection (empty slots: False).

    Usage::

        keep = frame_nms(cands.boxes, cands.class_id, cands.num_candidates, 0.45)
    """
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ShapeError(f"frame_nms(boxes): expected shape (B, K, 4), got {tuple(boxes.shape)}")
    b, k = boxes.shape[0], boxes.shape[1]
    if tuple(class_id.shape) != (b, k):
        raise ShapeError(f"frame_nms(class_id): expected shape ({b}, {k}), got {tuple(class_id.shape)}")
    if tuple(count.shape) != (b,):
        raise ShapeError(f"frame_nms(count): expected shape ({b},), got {tuple(count.shape)}")
    if impl == "auto":
        impl = "triton" if boxes.is_cuda and triton_available() else "torch"
    if impl == "triton":
        if not boxes.is_cuda:
            raise ValueError("frame_nms(impl='triton'): needs CUDA tensors")
        if not triton_available():
            raise ImportError("frame_nms(impl='triton'): the 'triton' package is not importable")
        return _frame_nms_triton(boxes, class_id, count, float(iou_threshold), class_agnostic)
    if impl != "torch":
        raise ValueError(f"frame_nms: impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    return frame_nms_torch(boxes, class_id, count, iou_threshold, class_agnostic)


def frame_nms_torch(
    boxes: torch.Tensor,
    class_id: torch.Tensor,
    count: torch.Tensor,
    iou_threshold: float,
    class_agnostic: bool = False,
) -> torch.Tensor:
    """:func:`frame_nms` as a torch loop over ranks, vectorized over frames (any device).

    It reads ``count`` on the host (one synchronization on CUDA); meant for the CPU.
    """
    bsz, k = boxes.shape[0], boxes.shape[1]
    rank = torch.arange(k, device=boxes.device)
    alive = rank[None, :] < count[:, None]
    steps = int(torch.clamp(count, max=k).max()) if bsz else 0
    x1, y1, x2, y2 = boxes.to(torch.float32).unbind(dim=2)  # [B, K] each
    area = (x2 - x1) * (y2 - y1)
    for i in range(steps):
        # IoU(candidate j, candidate i) as operators.boxes.box_iou computes it
        w = (torch.minimum(x2, x2[:, i : i + 1]) - torch.maximum(x1, x1[:, i : i + 1])).clamp(min=0)
        h = (torch.minimum(y2, y2[:, i : i + 1]) - torch.maximum(y1, y1[:, i : i + 1])).clamp(min=0)
        inter = w * h
        union = area + area[:, i : i + 1] - inter
        iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
        hit = (iou > iou_threshold) & (rank[None, :] > i) & alive[:, i : i + 1]
        if not class_agnostic:
            hit &= class_id == class_id[:, i : i + 1]
        alive &= ~hit
    return alive


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it ships with CUDA builds of torch)."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


@functools.cache
def triton_problem(device: str) -> str | None:
    """Why the Triton kernel cannot serve ``device`` (``None``: it can). Checked once per device.

    Compiles the kernel (Triton needs a C compiler for its launcher and a GPU it supports)
    and compares its decisions with the torch loop's on a small batch with overlaps.
    Usage::

        if (why := triton_problem("cuda:0")) is not None:
            log.warning("fused NMS off: %s", why)
    """
    if not triton_available():
        return "the 'triton' package is not importable"
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(4, 64, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 20 + torch.rand(4, 64, 2, generator=g) * 60], dim=2)
    classes = torch.randint(0, 3, (4, 64), generator=g)
    count = torch.tensor([64, 0, 17, 80])
    expected = frame_nms_torch(boxes, classes, count, 0.45)
    try:
        got = _frame_nms_triton(boxes.to(dev), classes.to(dev), count.to(dev), 0.45, False).cpu()
    except Exception as e:  # compiler missing, unsupported GPU, ...: the reason is logged by the caller
        return f"the Triton kernel failed to build or run on {device}: {type(e).__name__}: {e}"
    if not torch.equal(got, expected):
        return f"the Triton kernel disagreed with the torch loop on {device}"
    return None


@functools.cache
def _triton_kernel() -> Any:
    """Compile-on-first-use Triton kernel: one program per frame (built lazily: no import-time work)."""
    triton: Any = importlib.import_module("triton")
    tl: Any = importlib.import_module("triton.language")

    # Triton reads the annotations: only constexpr ones may appear (no typing names)
    @triton.jit
    def greedy_nms(boxes_ptr, cls_ptr, count_ptr, keep_ptr, k, iou_threshold,
                   AGNOSTIC: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        lanes = tl.arange(0, BLOCK)
        n = tl.minimum(tl.load(count_ptr + row), k).to(tl.int32)
        valid = lanes < n
        base = boxes_ptr + row * k * 4
        x1 = tl.load(base + lanes * 4 + 0, mask=valid, other=0.0)
        y1 = tl.load(base + lanes * 4 + 1, mask=valid, other=0.0)
        x2 = tl.load(base + lanes * 4 + 2, mask=valid, other=0.0)
        y2 = tl.load(base + lanes * 4 + 3, mask=valid, other=0.0)
        cls = tl.load(cls_ptr + row * k + lanes, mask=valid, other=-1)
        area = (x2 - x1) * (y2 - y1)
        alive = valid.to(tl.int32)
        for i in range(0, n):
            kept_i = tl.sum(tl.where(lanes == i, alive, 0), axis=0)
            if kept_i > 0:
                bx1 = tl.load(base + i * 4 + 0)
                by1 = tl.load(base + i * 4 + 1)
                bx2 = tl.load(base + i * 4 + 2)
                by2 = tl.load(base + i * 4 + 3)
                w = tl.maximum(tl.minimum(x2, bx2) - tl.maximum(x1, bx1), 0.0)
                h = tl.maximum(tl.minimum(y2, by2) - tl.maximum(y1, by1), 0.0)
                inter = w * h
                union = area + (bx2 - bx1) * (by2 - by1) - inter
                iou = tl.where(union > 0, tl.math.div_rn(inter, union), 0.0)
                hit = (iou > iou_threshold) & (lanes > i)
                if not AGNOSTIC:
                    hit = hit & (cls == tl.load(cls_ptr + row * k + i))
                alive = tl.where(hit, 0, alive)
        tl.store(keep_ptr + row * k + lanes, alive.to(tl.int8), mask=lanes < k)

    return greedy_nms


def _frame_nms_triton(
    boxes: torch.Tensor, class_id: torch.Tensor, count: torch.Tensor, iou_threshold: float,
    class_agnostic: bool,
) -> torch.Tensor:
    triton: Any = importlib.import_module("triton")
    bsz, k = boxes.shape[0], boxes.shape[1]
    keep = torch.empty((bsz, k), dtype=torch.int8, device=boxes.device)
    if bsz == 0 or k == 0:
        return keep.bool()
    block = max(16, triton.next_power_of_2(k))
    # enable_fp_fusion=False: no fused multiply-adds, every operation rounded once as in
    # operators.boxes.box_iou (an FMA would move IoUs near the threshold by an ulp)
    _triton_kernel()[(bsz,)](
        boxes.to(torch.float32).contiguous(), class_id.to(torch.int64).contiguous(),
        count.to(torch.int64).contiguous(), keep, k, iou_threshold,
        AGNOSTIC=class_agnostic, BLOCK=block, num_warps=4 if block <= 1024 else 8,
        enable_fp_fusion=False,
    )
    return keep.view(torch.bool)
