"""Tracking accuracy against ground truth with identities: MOTA, IDF1 and HOTA.

The metrics are computed by roboflow's ``trackers`` package (``trackers.eval``, installed
with the ``tracking`` extra, which also runs the tracker stage): its CLEAR (MOTA), Identity
(IDF1) and HOTA code is written to reproduce TrackEval, the reference implementation used
by the MOTChallenge benchmarks. Nothing of the metrics is re-implemented here; this module
only turns Fovea's records and the ground truth into the per-frame inputs those functions
take (ids per frame and a similarity matrix per frame) and combines the sources with the
package's own aggregation.

* **Ground truth** is a clip's ``.gt.json`` with ``track_ids`` in every frame (scenes made
  with ``SceneSpec(identities=True)``, e.g. :func:`streams.synthetic.tracking_scene`).
* **Tracker output** is every detection with a track id ``>= 0`` (JSONL records of a job
  with a ``tracker:`` section, ``(frame_index, Detections)`` pairs or
  :class:`~streams.frames.FrameResult`); a detection with ``-1`` (no confirmed track) is
  not part of the tracker's output, as in the MOT files such benchmarks read.
* **Matching**: the similarity of a ground-truth box and a tracked box is their IoU when
  their classes agree (by id or by name, as in :func:`pipelines.evaluation.evaluate`) and
  0 otherwise. CLEAR and Identity match at IoU >= ``iou_threshold`` (0.5, as TrackEval);
  HOTA averages over its own IoU thresholds 0.05 .. 0.95.
* **Sources** are sequences: each is evaluated on its own, then combined with
  ``aggregate_*_metrics`` (counts summed; HOTA combined as TrackEval combines sequences).

Usage::

    gt = load_ground_truth_dir("clips/")                       # with track_ids
    report = tracking_metrics(load_predictions_jsonl("out/detections.jsonl"), gt)
    report.mota, report.idf1, report.hota, report.id_switches
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pipelines.evaluation import FrameMismatchError, check_frames, class_indices
from streams.detections import Detections
from streams.frames import FrameResult

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Tracks:
    """One source's boxes per frame: ``xyxy float64[N, 4]``, class index, track id."""

    boxes: list[FloatArray]
    cls: list[IntArray]
    ids: list[IntArray]


@dataclass(frozen=True)
class TrackingReport:
    """Result of :func:`tracking_metrics` (all sources combined; ``per_source`` each).

    ``mota``/``motp``/``id_switches``/... are TrackEval's CLEAR metrics, ``idf1``/``idp``/
    ``idr`` its Identity metrics, ``hota``/``deta``/``assa``/``loca`` its HOTA metrics
    (averaged over IoU thresholds 0.05 .. 0.95), as computed by ``library``.
    """

    mota: float
    motp: float
    idf1: float
    idp: float
    idr: float
    hota: float
    deta: float
    assa: float
    loca: float
    id_switches: int
    true_positives: int
    false_positives: int
    false_negatives: int
    fragmentations: int
    mostly_tracked: int
    mostly_lost: int
    num_gt_objects: int
    num_tracks: int
    num_sources: int
    num_frames: int
    iou_threshold: float
    library: str
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` becomes ``None``)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def to_markdown(self) -> str:
        """A small Markdown table: the headline metrics, then one row per source."""
        lines = [
            "| tracking metric | value |",
            "|---|---|",
            f"| MOTA (IoU {self.iou_threshold:g}) | {self.mota:.3f} |",
            f"| IDF1 (IoU {self.iou_threshold:g}) | {self.idf1:.3f} |",
            f"| HOTA (IoU 0.05..0.95) | {self.hota:.3f} |",
            f"| DetA / AssA / LocA | {self.deta:.3f} / {self.assa:.3f} / {self.loca:.3f} |",
            f"| ID switches / fragmentations | {self.id_switches} / {self.fragmentations} |",
            f"| TP / FP / FN | {self.true_positives} / {self.false_positives} / {self.false_negatives} |",
            f"| objects (mostly tracked / mostly lost) / tracks | {self.num_gt_objects} ({self.mostly_tracked} / "
            f"{self.mostly_lost}) / {self.num_tracks} |",
            f"| sources / frames | {self.num_sources} / {self.num_frames} |",
            f"| computed by | {self.library} |",
        ]
        if len(self.per_source) > 1:
            lines += ["", "| source | MOTA | IDF1 | HOTA | ID switches |", "|---|---|---|---|---|"]
            lines += [f"| {s} | {m['mota']:.3f} | {m['idf1']:.3f} | {m['hota']:.3f} | {int(m['id_switches'])} |"
                      for s, m in self.per_source.items()]
        return "\n".join(lines) + "\n"


def _trackers_eval() -> Any:
    """``trackers.eval``, or an ImportError that names the extra."""
    try:
        import trackers.eval as trackers_eval
    except ImportError as e:
        raise ImportError('tracking metrics need roboflow\'s trackers package (the tracking extra): '
                          'pip install -e ".[tracking]"') from e
    return trackers_eval


def _library() -> str:
    try:
        return f"trackers {version('trackers')} (trackers.eval: TrackEval's CLEAR, Identity, HOTA)"
    except PackageNotFoundError:
        return "trackers (trackers.eval: TrackEval's CLEAR, Identity, HOTA)"


def _gt_tracks(source: str, gt: Mapping[str, Any]) -> tuple[int, _Tracks]:
    """``num_frames`` and the boxes, classes and object ids of every frame."""
    try:
        num_frames = int(gt.get("num_frames", len(gt["frames"])))
        empty = _Tracks([np.zeros((0, 4))] * num_frames, [np.zeros(0, np.int64)] * num_frames,
                        [np.zeros(0, np.int64)] * num_frames)
        for f in gt["frames"]:
            i = int(f["frame_index"])
            if "track_ids" not in f:
                raise ValueError(f"frame {i} has no track_ids (ground truth without identities: write it "
                                 f"with SceneSpec(identities=True), e.g. streams.synthetic.tracking_scene)")
            boxes = np.asarray(f.get("boxes", []), np.float64).reshape(-1, 4)
            cls = np.asarray(f.get("class_ids", [0] * len(boxes)), np.int64).reshape(-1)
            ids = np.asarray(f["track_ids"], np.int64).reshape(-1)
            if not len(boxes) == len(cls) == len(ids):
                raise ValueError(f"frame {i}: {len(boxes)} boxes, {len(cls)} class_ids, {len(ids)} track_ids")
            if not 0 <= i < num_frames:
                raise ValueError(f"frame_index {i} outside 0..{num_frames - 1}")
            empty.boxes[i], empty.cls[i], empty.ids[i] = boxes, cls, ids
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"ground truth of '{source}' cannot be used for tracking metrics: {e}") from e
    return num_frames, empty


def _frame_tracks(item: Any, match_by: str, names: Sequence[str]) -> tuple[int, FloatArray, IntArray, IntArray, bool]:
    """``(frame_index, xyxy, class index, track id, has track ids)`` of one prediction item."""
    if isinstance(item, FrameResult):
        item = (item.frame.frame_index, item.detections)
    if isinstance(item, Mapping):
        dets = item.get("detections") or []
        xyxy = np.array([d["box"] for d in dets], np.float64).reshape(-1, 4)
        cls = class_indices([int(d.get("class_id", -1)) for d in dets],
                            [str(d.get("label", d.get("class_id"))) for d in dets], match_by, names)
        tracked = any("track_id" in d for d in dets)
        ids = np.array([int(d.get("track_id", -1)) for d in dets], np.int64)
        return int(item["frame_index"]), xyxy, cls, ids, tracked
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Detections):
        index, d = item
        cls = class_indices(d.class_id.tolist(), d.labels, match_by, names)
        ids = np.full(len(d), -1, np.int64) if d.track_id is None else d.track_id
        return int(index), d.xyxy.astype(np.float64), cls, ids, d.track_id is not None
    raise TypeError(f"unsupported prediction item {type(item).__name__}: expected a frame record dict, a "
                    f"(frame_index, Detections) pair or a FrameResult")


def _contiguous(ids: list[IntArray]) -> list[IntArray]:
    """Ids renumbered 0 .. K-1 in sorted order (what ``trackers.eval`` expects)."""
    present = [i for i in ids if len(i)]
    unique = np.unique(np.concatenate(present)) if present else np.zeros(0, np.int64)
    return [np.searchsorted(unique, i).astype(np.int64) for i in ids]


def _sequence_metrics(te: Any, gt: _Tracks, pr: _Tracks, iou_threshold: float) -> dict[str, dict[str, Any]]:
    """CLEAR, Identity and HOTA of one source from ``trackers.eval``."""
    sims = []
    for gb, gc, pb, pc in zip(gt.boxes, gt.cls, pr.boxes, pr.cls, strict=True):
        iou = te.box_iou(gb, pb, box_format="xyxy") if len(gb) and len(pb) else np.zeros((len(gb), len(pb)))
        sims.append(np.asarray(iou, np.float64) * (gc[:, None] == pc[None, :]))
    gt_ids, tr_ids = _contiguous(gt.ids), _contiguous(pr.ids)
    return {
        "CLEAR": te.compute_clear_metrics(gt_ids, tr_ids, sims, threshold=iou_threshold),
        "Identity": te.compute_identity_metrics(gt_ids, tr_ids, sims, threshold=iou_threshold),
        "HOTA": te.compute_hota_metrics(gt_ids, tr_ids, sims),
    }


def tracking_metrics(
    predictions: Mapping[str, Sequence[Any]],
    ground_truth: Mapping[str, Mapping[str, Any]],
    iou_threshold: float = 0.5,
    match_by: Literal["class_id", "label"] = "class_id",
) -> TrackingReport:
    """MOTA, IDF1 and HOTA of ``predictions`` against ``ground_truth`` (both keyed by source id).

    Args:
        predictions: per source, one item per frame (a JSONL frame record, a
            ``(frame_index, Detections)`` pair or a ``FrameResult``), with track ids.
        ground_truth: per source, a ground-truth dict with ``track_ids`` in every frame.
        iou_threshold: IoU at which CLEAR and Identity match (HOTA uses its own range).
        match_by: compare classes by id or by name (``label`` vs. ``class_names``).

    Raises:
        FrameMismatchError: a source has no predictions, or not one record per frame.
        ValueError: ground truth without identities, or predictions without any track id
            (a job run without a ``tracker:`` section).
        ImportError: the ``trackers`` package (the ``tracking`` extra) is not installed.
    """
    if not ground_truth:
        raise ValueError("ground truth is empty")
    te = _trackers_eval()
    names = [str(n) for n in next(iter(ground_truth.values())).get("class_names", [])]
    per_seq: dict[str, dict[str, dict[str, Any]]] = {}
    any_tracked = False
    num_frames_total = num_gt = num_tracks = 0
    for source, gt in ground_truth.items():
        num_frames, gt_tracks = _gt_tracks(source, gt)
        if source not in predictions:
            raise FrameMismatchError(source, f"no predictions for this ground-truth source (prediction sources: "
                                             f"{', '.join(sorted(predictions)) or 'none'})")
        parsed = [_frame_tracks(item, match_by, names) for item in predictions[source]]
        check_frames(source, num_frames, [p[0] for p in parsed])
        pr = _Tracks([np.zeros((0, 4))] * num_frames, [np.zeros(0, np.int64)] * num_frames,
                     [np.zeros(0, np.int64)] * num_frames)
        for index, xyxy, cls, ids, tracked in parsed:
            any_tracked = any_tracked or tracked
            keep = (ids >= 0) & (cls >= 0)
            pr.boxes[index], pr.cls[index], pr.ids[index] = xyxy[keep], cls[keep], ids[keep]
        per_seq[source] = _sequence_metrics(te, gt_tracks, pr, iou_threshold)
        num_frames_total += num_frames
        num_gt += len(np.unique(np.concatenate([np.zeros(0, np.int64), *gt_tracks.ids])))
        num_tracks += len(np.unique(np.concatenate([np.zeros(0, np.int64), *pr.ids])))
    if not any_tracked:
        raise ValueError("the predictions have no track ids: run the job with a 'tracker:' section")
    clear = te.aggregate_clear_metrics([m["CLEAR"] for m in per_seq.values()])
    ident = te.aggregate_identity_metrics([m["Identity"] for m in per_seq.values()])
    hota = te.aggregate_hota_metrics([m["HOTA"] for m in per_seq.values()])
    report = TrackingReport(
        mota=float(clear["MOTA"]), motp=float(clear["MOTP"]), idf1=float(ident["IDF1"]), idp=float(ident["IDP"]),
        idr=float(ident["IDR"]), hota=float(hota["HOTA"]), deta=float(hota["DetA"]), assa=float(hota["AssA"]),
        loca=float(hota["LocA"]), id_switches=int(clear["IDSW"]), true_positives=int(clear["CLR_TP"]),
        false_positives=int(clear["CLR_FP"]), false_negatives=int(clear["CLR_FN"]), fragmentations=int(clear["Frag"]),
        mostly_tracked=int(clear["MT"]), mostly_lost=int(clear["ML"]), num_gt_objects=num_gt, num_tracks=num_tracks,
        num_sources=len(per_seq), num_frames=num_frames_total, iou_threshold=iou_threshold, library=_library(),
        per_source={s: {"mota": float(m["CLEAR"]["MOTA"]), "idf1": float(m["Identity"]["IDF1"]),
                        "hota": float(m["HOTA"]["HOTA"]), "id_switches": int(m["CLEAR"]["IDSW"])}
                    for s, m in per_seq.items()},
    )
    log.info("tracking: %d sources, %d frames: MOTA %.4f, IDF1 %.4f, HOTA %.4f, %d ID switches", report.num_sources,
             report.num_frames, report.mota, report.idf1, report.hota, report.id_switches)
    return report
