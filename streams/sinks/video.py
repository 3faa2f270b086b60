"""Annotated-video sink: re-decodes each source file and writes it back with boxes drawn.

``type: video`` writes ``<path>/<source_id>.annotated.mp4`` per file source (or exactly
``path`` when it ends in a video extension and there is one source), encoded on the CPU
(``libx264`` by default: H100/H200 have no NVENC) with the source's time base, frame rate
and per-frame timestamps (shifted so the video starts at 0). Boxes get one colour per
class (:func:`color_for_class`), optionally the label and confidence, and every frame
shows its ``frame_index`` in the top-left corner. A segmentation model's masks are filled
with their class colour, blended in at ``mask_alpha`` under the boxes; a pose model's
keypoints are dots (those with a visibility score of at least ``keypoint_threshold``), with
the COCO skeleton's limbs between them for 17 keypoints, in Ultralytics' pose colours.

How frames are matched: for each source the sink opens the source file with PyAV and
decodes it sequentially, in lockstep with the results (decoded frame *i* is
``frame_index`` *i*; the pts is checked too when the result carries one). Results
arrive in order per source, possibly interleaved across sources. When a result for
frame *k* arrives the decoder advances to *k*; frames passed over without a result
(a frame stride, dropped frames) are written un-annotated with ``unmatched: copy`` (the
default) or left out with ``unmatched: skip`` (the output keeps the source timestamps,
so playback timing stays right). The video ends at the last frame that had a result: a
job stopped early gives a shorter video. A source is finalised as soon as its last
frame is written; everything still open is finalised on ``__exit__``, also when an
exception is propagating, so the MP4 is always playable.

Memory: per source being written, one decoded frame, the decoder and the encoder
(x264's lookahead: ``preset: veryfast`` keeps it to ~10 frames). Nothing else is held.

Tracks and analytics: a detection with a track id is labelled ``#id`` and, with
``trail`` > 0, leaves a trail of its last ``trail`` anchor points (the analytics anchor,
bottom centre by default). With an ``analytics:`` section in the job (handed over by
:func:`pipelines.graph.open_sinks` through :meth:`VideoSink.use_analytics`) each source's
zones are outlined with their current occupancy and total entries, and its lines drawn
with an arrow towards their ``in`` side and their running ``in``/``out`` counts; the
counts are kept from the frames' events (:class:`~streams.events.Event`), so the video
shows what the event records say, frame by frame.

Only file sources can be annotated: results from ``rtsp://`` (or any other network
URI) sources are ignored after one warning per source.

Usage::

    sinks:
      - type: video
        path: out/annotated          # or out/a.annotated.mp4 with a single source
        crf: 23                      # x264 quality: lower = better/bigger; null = encoder default
        draw_labels: true
        trail: 20                    # anchor points per track trail (0: none)
        masks: true                  # segmentation masks filled with the class colour ...
        mask_alpha: 0.4              # ... at this opacity, in (0, 1]
        keypoints: true              # pose keypoints (visibility >= keypoint_threshold) and limbs
        keypoint_threshold: 0.5

    with SINKS.create(SINKS.parse({"type": "video", "path": "out"}, key="sinks[0]")) as sink:
        sink.write(results)          # Sequence[FrameResult]

    # or directly
    with VideoSink("out", crf=20) as sink:
        sink.write(results)
    sink.outputs                     # {"a": Path("out/a.annotated.mp4"), ...}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import av
import numpy as np
import numpy.typing as npt

from streams.analytics_config import ANCHOR_FRACTIONS, AnalyticsConfig, SourceGeometry
from streams.detections import Detections, InstanceMask
from streams.errors import ConfigError, SinkError
from streams.frames import FrameResult
from streams.sinks import SINKS

log = logging.getLogger(__name__)

#: Extensions that make ``path`` a single output file rather than a folder.
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm"})

#: One colour per class id (modulo), saturated so they survive 4:2:0 chroma subsampling.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49),
    (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
    (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236),
    (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
)

#: Colours of the analytics drawing: lines (with their counts) and zones.
LINE_COLOUR = (255, 255, 0)
ZONE_COLOUR = (0, 255, 255)

#: ``overlay(draw, line_width, font)``: draws under the boxes (:func:`draw_detections`).
Overlay = Callable[[Any, int, Any], None]

#: The 19 limbs Ultralytics draws between the 17 COCO keypoints (0-based: nose, eyes, ears,
#: shoulders, elbows, wrists, hips, knees, ankles; left before right).
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
# Ultralytics' pose colours as its (BGR) images show them: face green, arms blue, legs
# orange, the limbs joining them magenta.
_FACE, _ARM, _LEG, _BODY = (0, 255, 0), (0, 128, 255), (255, 153, 51), (255, 51, 255)
#: Colour of each limb of :data:`COCO_SKELETON`.
COCO_LIMB_COLOURS: tuple[tuple[int, int, int], ...] = (_LEG,) * 4 + (_BODY,) * 3 + (_ARM,) * 5 + (_FACE,) * 7
#: Colour of each of the 17 COCO keypoints.
COCO_KEYPOINT_COLOURS: tuple[tuple[int, int, int], ...] = (_FACE,) * 5 + (_ARM,) * 6 + (_LEG,) * 6

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NETWORK_HINT = "only file sources can be annotated"


def color_for_class(class_id: int) -> tuple[int, int, int]:
    """The RGB colour boxes of ``class_id`` are drawn in."""
    return PALETTE[int(class_id) % len(PALETTE)]


def is_file_uri(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs; False for ``rtsp://`` and other network URIs."""
    scheme = urlsplit(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def _file_path(uri: str) -> Path:
    parts = urlsplit(uri)
    return Path(parts.path) if parts.scheme == "file" else Path(uri)


def _to_rgb(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def _load_font(size: int) -> Any:
    try:
        from PIL import ImageFont
    except ImportError as e:
        raise SinkError("the video sink needs Pillow to draw: pip install pillow") from e
    try:
        return ImageFont.load_default(size=size)  # FreeType font (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # fixed-size bitmap font


def draw_detections(
    rgb: npt.NDArray[np.uint8],
    detections: Detections,
    frame_index: int | None = None,
    *,
    draw_labels: bool = True,
    line_width: int | None = None,
    font: Any = None,
    overlay: Overlay | None = None,
    draw_masks: bool = True,
    mask_alpha: float = 0.4,
    draw_keypoints: bool = True,
    keypoint_threshold: float = 0.5,
) -> npt.NDArray[np.uint8]:
    """Draw ``detections`` (boxes and keypoints in ``rgb``'s pixels) on an ``uint8[H, W, 3]`` RGB image.

    Returns a new array. A segmentation model's masks come first: each filled with its
    class colour blended in at ``mask_alpha`` (a mask is placed by its own ``frame_hw``,
    so it is scaled to ``rgb`` when the frame was another size). ``overlay(draw,
    line_width, font)`` draws next (zones, lines, trails: :class:`_Overlay`), then the
    boxes, clipped to the image, with their labels above (inside the box when there is no
    room; ``#<track id>`` first for a tracked detection; a cascade's attributes after it: a
    classifier's label, a secondary detector's children counted by label, their boxes drawn
    half as thick in the parent's colour), then a pose model's keypoints:
    a dot at each keypoint whose visibility score is at least ``keypoint_threshold``
    (every one of an ``[N, K, 2]`` array) and, for the 17 COCO keypoints, the
    :data:`COCO_SKELETON` limbs between visible ones, in Ultralytics' pose colours
    (:data:`COCO_KEYPOINT_COLOURS`, :data:`COCO_LIMB_COLOURS`; other layouts: dots in the
    class colour). ``frame_index`` is written in the top-left corner, over everything.

    Usage::

        out = draw_detections(frame.to_ndarray(format="rgb24"), dets, frame_index=7)
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    lw = line_width or max(2, round(min(h, w) / 240))
    if font is None:
        font = _load_font(max(10, round(h / 36)))
    if draw_masks and detections.masks is not None and len(detections):
        rgb = rgb.copy()  # blended in place: never the caller's array
        _blend_masks(rgb, detections.masks, detections.class_id, mask_alpha)
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    draw = ImageDraw.Draw(image)
    if overlay is not None:
        overlay(draw, lw, font)
    boxes = np.round(detections.xyxy).astype(np.int64)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
    labels = detections.labels
    tids = [-1] * len(detections) if detections.track_id is None else detections.track_id.tolist()
    attrs = detections.attributes or ({},) * len(detections)  # a cascade's results: "striped", ...
    for (x1, y1, x2, y2), conf, cid, label, tid, attr in zip(
        boxes.tolist(), detections.confidence.tolist(), detections.class_id.tolist(), labels, tids, attrs,
        strict=True,
    ):
        if x2 < x1 or y2 < y1:
            continue
        colour = color_for_class(cid)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=lw)
        for v in attr.values():  # a secondary detector's boxes, thinner, in their parent's colour
            for child in _children(v):
                cx1, cy1, cx2, cy2 = (round(c) for c in child["box"])
                if cx2 >= cx1 and cy2 >= cy1:
                    draw.rectangle((cx1, cy1, cx2, cy2), outline=colour, width=max(1, lw // 2))
        if draw_labels:
            text = f"#{tid} {label} {conf:.2f}" if tid >= 0 else f"{label} {conf:.2f}"
            if attr:
                text += "".join(_attribute_text(v) for v in attr.values())
            _label(draw, (x1, y1), text, colour, font, above=True, fallback_y=y1 + lw)
    if draw_keypoints and detections.keypoints is not None and len(detections):
        _draw_keypoints(draw, detections.keypoints, detections.class_id, keypoint_threshold, lw)
    if frame_index is not None:
        text = f"#{frame_index}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.rectangle((0, 0, right - left + 6, bottom - top + 6), fill=(0, 0, 0))
        draw.text((3 - left, 3 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _children(value: Any) -> list[dict[str, Any]]:
    """A secondary detector's attribute (``[{"label", "score", "box"}, ...]``), else ``[]``."""
    if isinstance(value, list) and value and all(isinstance(c, dict) and "box" in c for c in value):
        return value
    return []


def _attribute_text(value: Any) -> str:
    """What a detection's label shows of one attribute: a classifier's label (``[label,
    score]``), a detector's children counted by label (``2 plate``; nothing for none)."""
    if isinstance(value, list) and (not value or isinstance(value[0], dict)):
        counts: dict[str, int] = {}
        for child in value:
            counts[str(child.get("label"))] = counts.get(str(child.get("label")), 0) + 1
        return "".join(f" {n} {lab}" for lab, n in counts.items())
    if isinstance(value, (list, tuple)) and value:
        return f" {value[0]}"
    return f" {value}"


def _scaled_attributes(attrs: tuple[dict[str, Any], ...], sx: float, sy: float) -> tuple[dict[str, Any], ...]:
    """``attrs`` with every secondary detector's child box scaled by ``(sx, sy)``."""
    def scaled(v: Any) -> Any:
        kids = _children(v)
        if not kids:
            return v
        return [{**c, "box": [c["box"][0] * sx, c["box"][1] * sy, c["box"][2] * sx, c["box"][3] * sy]} for c in kids]
    return tuple({k: scaled(v) for k, v in a.items()} for a in attrs)


def _blend_masks(rgb: npt.NDArray[np.uint8], masks: Sequence[InstanceMask],
                 class_id: npt.NDArray[np.int64], alpha: float) -> None:
    """Blend each mask's class colour into ``rgb`` (in place) at ``alpha``.

    Only the pixels of each mask's bitmap region are touched; a mask made for a frame of
    another size is mapped to ``rgb`` by nearest neighbour (an image pixel is in the mask
    when the frame pixel under its centre is).
    """
    h, w = rgb.shape[:2]
    for mask, cid in zip(masks, class_id.tolist(), strict=True):
        bh, bw = mask.bitmap.shape
        if bh == 0 or bw == 0:
            continue
        fh, fw = mask.frame_hw
        if (fh, fw) == (h, w):
            x0, y0, x1, y1 = mask.x, mask.y, mask.x + bw, mask.y + bh
            bitmap = mask.bitmap
        else:
            sx, sy = w / fw, h / fh
            x0, x1 = (max(0, min(w, math.ceil(v * sx - 0.5))) for v in (mask.x, mask.x + bw))
            y0, y1 = (max(0, min(h, math.ceil(v * sy - 0.5))) for v in (mask.y, mask.y + bh))
            if x1 <= x0 or y1 <= y0:
                continue
            cols = np.clip(((np.arange(x0, x1) + 0.5) / sx).astype(np.int64) - mask.x, 0, bw - 1)
            rows = np.clip(((np.arange(y0, y1) + 0.5) / sy).astype(np.int64) - mask.y, 0, bh - 1)
            bitmap = mask.bitmap[np.ix_(rows, cols)]
        region = rgb[y0:y1, x0:x1]
        inside = region[bitmap].astype(np.float32)
        tint = np.asarray(color_for_class(cid), np.float32) * alpha
        region[bitmap] = (inside * (1.0 - alpha) + tint + 0.5).astype(np.uint8)


def _draw_keypoints(draw: Any, keypoints: npt.NDArray[np.float32], class_id: npt.NDArray[np.int64],
                    threshold: float, lw: int) -> None:
    """Dots at the visible keypoints and, for COCO's 17, the skeleton's limbs between them
    (drawn first, the dots over them); see :func:`draw_detections`."""
    xy = keypoints[..., :2]
    visible = np.isfinite(xy).all(axis=-1)
    if keypoints.shape[2] == 3:
        visible &= keypoints[..., 2] >= threshold
    coco = keypoints.shape[1] == len(COCO_KEYPOINT_COLOURS)
    radius = lw + 1
    rows = cast(list[list[bool]], visible.tolist())
    for points, shown, cid in zip(xy.tolist(), rows, class_id.tolist(), strict=True):
        if coco:
            for (a, b), colour in zip(COCO_SKELETON, COCO_LIMB_COLOURS, strict=True):
                if shown[a] and shown[b]:
                    draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=lw)
        for k, ((x, y), show) in enumerate(zip(points, shown, strict=True)):
            if show:
                colour = COCO_KEYPOINT_COLOURS[k] if coco else color_for_class(cid)
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def _label(draw: Any, at: tuple[float, float], text: str, colour: tuple[int, int, int], font: Any,
           above: bool = False, fallback_y: float | None = None) -> None:
    """``text`` on a box of ``colour`` with its top-left corner at ``at`` (``above``: the
    box ends at ``at``'s row; at ``fallback_y`` instead when that leaves the image)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x, y = round(at[0]), round(at[1])
    if above:
        y = y - th
        if y < 0 and fallback_y is not None:
            y = round(fallback_y)
    draw.rectangle((x, y, x + tw, y + th), fill=colour)
    dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font)


class _Overlay:
    """One source's analytics drawing: its zones and lines (resolved at the first result),
    the running counts kept from the results' events, and each track's recent anchors.

    All points are in the results' (source) pixels; :meth:`draw` scales them to the
    decoded frame.
    """

    def __init__(self, source_id: str, analytics: AnalyticsConfig | None, trail: int) -> None:
        self.source_id = source_id
        self.analytics = analytics
        self.geometry: SourceGeometry | None = None
        self.fractions = ANCHOR_FRACTIONS[analytics.anchor if analytics is not None else "bottom_center"]
        self.trail = trail
        self.crossings: dict[str, Counter[str]] = {}  # line -> direction -> count
        self.occupancy: Counter[str] = Counter()      # zone -> tracks inside now
        self.entered: Counter[str] = Counter()        # zone -> entries so far
        self.trails: dict[int, deque[tuple[float, float]]] = {}
        self._last_seen: dict[int, int] = {}
        self._geometry_failed = False

    def update(self, result: FrameResult) -> None:
        """Take in one result of this source (in frame order): geometry, events, anchors."""
        meta = result.frame
        if self.analytics is not None and not self._geometry_failed and (
                self.geometry is None or (self.geometry.width, self.geometry.height) != (meta.width, meta.height)):
            try:
                self.geometry = self.analytics.resolve(self.source_id, meta.width, meta.height)
            except ConfigError as e:  # the analytics stage refuses it first; alone, draw no geometry
                self._geometry_failed = True
                log.warning("video sink: source '%s': zones and lines not drawn: %s", self.source_id, e)
        for ev in result.events:
            if ev.kind == "line_cross":
                self.crossings.setdefault(str(ev.data.get("line")), Counter())[str(ev.data.get("direction"))] += 1
            elif ev.kind == "zone_enter":
                self.occupancy[str(ev.data.get("zone"))] += 1
                self.entered[str(ev.data.get("zone"))] += 1
            elif ev.kind == "zone_exit":
                self.occupancy[str(ev.data.get("zone"))] -= 1
        dets = result.detections
        if self.trail <= 0 or dets.track_id is None:
            return
        fx, fy = self.fractions
        b = dets.xyxy.astype(np.float64)
        xs, ys = (b[:, 0] + fx * (b[:, 2] - b[:, 0])).tolist(), (b[:, 1] + fy * (b[:, 3] - b[:, 1])).tolist()
        for tid, x, y in zip(dets.track_id.tolist(), xs, ys, strict=True):
            if tid >= 0:
                self.trails.setdefault(tid, deque(maxlen=self.trail)).append((x, y))
                self._last_seen[tid] = meta.frame_index
        for tid in [t for t, seen in self._last_seen.items() if meta.frame_index - seen > self.trail]:
            del self._last_seen[tid], self.trails[tid]

    def draw(self, draw: Any, scale: tuple[float, float], lw: int, font: Any) -> None:
        sx, sy = scale
        for points in self.trails.values():
            if len(points) > 1:
                draw.line([(x * sx, y * sy) for x, y in points], fill=(255, 255, 255), width=max(2, lw // 2))
        if self.geometry is None:
            return
        for zone in self.geometry.zones:
            pts = [(x * sx, y * sy) for x, y in zone.polygon.tolist()]
            draw.line([*pts, pts[0]], fill=ZONE_COLOUR, width=lw)
            corner = min(pts, key=lambda p: (p[1], p[0]))
            _label(draw, corner, f"{zone.name}: {self.occupancy[zone.name]} (total {self.entered[zone.name]})",
                   ZONE_COLOUR, font)
        for line in self.geometry.lines:
            (ax, ay), (bx, by) = (line.a * (sx, sy)).tolist(), (line.b * (sx, sy)).tolist()
            draw.line([(ax, ay), (bx, by)], fill=LINE_COLOUR, width=lw)
            length = math.hypot(bx - ax, by - ay) or 1.0
            nx, ny = -(by - ay) / length, (bx - ax) / length  # towards the right-hand ("in") side
            mx, my = (ax + bx) / 2, (ay + by) / 2
            tip = (mx + 6 * lw * nx, my + 6 * lw * ny)
            draw.line([(mx, my), tip], fill=LINE_COLOUR, width=lw)
            draw.polygon([tip, (tip[0] - 3 * lw * (nx - ny), tip[1] - 3 * lw * (ny + nx)),
                          (tip[0] - 3 * lw * (nx + ny), tip[1] - 3 * lw * (ny - nx))], fill=LINE_COLOUR)
            counts = self.crossings.get(line.name, Counter())
            _label(draw, (mx - 6 * lw * nx + 2, my - 6 * lw * ny),
                   f"{line.name} in {counts['in']} out {counts['out']}", LINE_COLOUR, font)


@dataclass(frozen=True)
class VideoSinkConfig:
    """``type: video``: annotated copies of the file sources.

    Attributes:
        path: output folder (``<path>/<source_id>.annotated.mp4``), or an output file
            (ends in .mp4/.mkv/.mov/.avi/.webm) when the job has a single source.
        codec: FFmpeg encoder name, CPU encoders only (``libx264``, ``libx265``, ``mpeg4``).
        crf: constant rate factor passed to the encoder (x264/x265: 0-51, lower is
            better); ``null`` for encoders without one.
        preset: encoder speed preset (x264/x265); ``null`` for encoders without one.
        draw_labels: draw "label confidence" above every box.
        unmatched: frames without a result are written un-annotated (``copy``) or
            left out (``skip``).
        line_width: box outline width in pixels; ``null`` scales with the frame size.
        threads: decoder and encoder threads per source (0 = FFmpeg's choice).
        trail: how many recent anchor points of each track are drawn as its trail (0: none).
        masks: fill a segmentation model's masks with their class colour.
        mask_alpha: opacity of that fill, in (0, 1] (1: the class colour replaces the pixels).
        keypoints: draw a pose model's keypoints (and the COCO skeleton's limbs for 17).
        keypoint_threshold: least visibility score of a keypoint that is drawn, in [0, 1].
    """

    path: str
    codec: str = "libx264"
    crf: int | None = 23
    preset: str | None = "veryfast"
    draw_labels: bool = True
    unmatched: Literal["copy", "skip"] = "copy"
    line_width: int | None = None
    threads: int = 2
    trail: int = 20
    masks: bool = True
    mask_alpha: float = 0.4
    keypoints: bool = True
    keypoint_threshold: float = 0.5

    def validate(self, key: str) -> None:
        if self.crf is not None and not 0 <= self.crf <= 63:
            raise ConfigError(f"{key}.crf", f"expected 0..51 (x264), got {self.crf}")
        if self.line_width is not None and self.line_width < 1:
            raise ConfigError(f"{key}.line_width", f"expected >= 1, got {self.line_width}")
        if self.threads < 0:
            raise ConfigError(f"{key}.threads", f"expected >= 0, got {self.threads}")
        if not 0 <= self.trail <= 1000:
            raise ConfigError(f"{key}.trail", f"expected 0..1000 points, got {self.trail}")
        if not 0 < self.mask_alpha <= 1:  # NaN too
            raise ConfigError(f"{key}.mask_alpha", f"expected an opacity in (0, 1], got {self.mask_alpha}")
        if not 0 <= self.keypoint_threshold <= 1:
            raise ConfigError(f"{key}.keypoint_threshold",
                              f"expected a visibility score in [0, 1], got {self.keypoint_threshold}")
        try:
            av.codec.Codec(self.codec, "w")
        except Exception as e:  # UnknownCodecError and friends
            raise ConfigError(f"{key}.codec", f"unknown encoder '{self.codec}' ({e})") from e


class _SourceWriter:
    """Decodes one source file in lockstep with its results and encodes the annotated copy."""

    def __init__(self, source_id: str, uri: str, out_path: Path, cfg: VideoSinkConfig,
                 font_cache: dict[int, Any], analytics: AnalyticsConfig | None = None) -> None:
        self.source_id = source_id
        self.overlay = _Overlay(source_id, analytics, cfg.trail)
        self.uri = uri
        self.out_path = out_path
        self.cfg = cfg
        self._fonts = font_cache
        self.finished = False
        self.frames_written = 0
        self._position = 0  # frame_index of the next frame the decoder yields
        self._pending: av.VideoFrame | None = None
        self._eof = False
        self._late = 0
        self._pts_mismatch = 0
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self._out: Any = None
        self._ostream: Any = None
        path = _file_path(uri)
        try:
            self._in = av.open(str(path))
        except (av.error.FFmpegError, OSError) as e:
            raise SinkError(f"video sink: cannot open source '{source_id}' ({uri}) to "
                            f"annotate it: {getattr(e, 'strerror', None) or e}") from e
        try:
            if not self._in.streams.video:
                raise SinkError(f"video sink: source '{source_id}' ({uri}) has no video stream")
            self._istream = self._in.streams.video[0]
            self._istream.thread_type = "AUTO"
            self._istream.codec_context.thread_count = cfg.threads
            tb = self._istream.time_base
            self.time_base: Fraction = Fraction(tb) if tb else Fraction(1, 90000)
            rate = self._istream.average_rate or self._istream.guessed_rate
            self.fps: Fraction = Fraction(rate) if rate else Fraction(25)
            self._step = max(1, round(1 / (self.fps * self.time_base)))
            self._frames: Iterator[av.VideoFrame] = self._in.decode(self._istream)
        except BaseException:
            self._in.close()
            raise

    # -- decoding ---------------------------------------------------------------------
    def _next_frame(self) -> av.VideoFrame | None:
        """The frame at ``self._position`` (None at the end of the source)."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._eof:
            return None
        try:
            return next(self._frames)
        except StopIteration:
            self._eof = True
        except av.error.FFmpegError as e:
            log.warning("video sink: decoding %s stopped at frame %d (%s); its annotated video "
                        "ends there", self.uri, self._position, e)
            self._eof = True
        return None

    def _at_end(self) -> bool:
        """Decode one frame ahead; True when the source has no frame at ``self._position``."""
        if self._pending is None:
            self._pending = self._next_frame()
        return self._pending is None

    # -- encoding ---------------------------------------------------------------------
    def _open_output(self, width: int, height: int) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._out = av.open(str(self.out_path), "w")
            stream = self._out.add_stream(self.cfg.codec, rate=self.fps)
            stream.width = width - width % 2  # 4:2:0 needs even sizes
            stream.height = height - height % 2
            stream.pix_fmt = "yuv420p"
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            stream.codec_context.thread_count = self.cfg.threads
            options: dict[str, str] = {}
            if self.cfg.crf is not None:
                options["crf"] = str(self.cfg.crf)
            if self.cfg.preset is not None:
                options["preset"] = self.cfg.preset
            stream.options = options
            self._ostream = stream
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self._close_output()
            raise SinkError(f"video sink: cannot open {self.out_path} for writing: "
                            f"{getattr(e, 'strerror', None) or e}") from e
        log.info("video sink: annotating %s -> %s (%dx%d, %s fps, %s)", self.uri, self.out_path,
                 width, height, float(self.fps), self.cfg.codec)

    def _encode(self, frame: av.VideoFrame, src_pts: int | None) -> None:
        if self._out is None:
            self._open_output(frame.width, frame.height)
        if src_pts is not None and self._first_pts is None:
            self._first_pts = src_pts
        pts = None if src_pts is None or self._first_pts is None else src_pts - self._first_pts
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + self._step  # keep it monotonic
        frame.pts = pts
        frame.time_base = self.time_base
        self._last_pts = pts
        try:
            for packet in self._ostream.encode(frame):
                self._out.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            raise SinkError(f"video sink: cannot write {self.out_path}: {e}") from e
        self.frames_written += 1

    # -- results ----------------------------------------------------------------------
    def add(self, result: FrameResult) -> None:
        """Advance the decoder to ``result``'s frame, annotate it and encode it."""
        meta = result.frame
        index = meta.frame_index
        if self.finished or index < self._position:
            self._late += 1
            if self._late == 1:
                log.warning("video sink: source '%s': result for frame %d arrived after frame %d "
                            "was written (out of order, duplicated or past the end); ignored",
                            self.source_id, index, self._position - 1)
            return
        while self._position < index:  # frames without a result
            frame = self._next_frame()
            if frame is None:
                break
            if self.cfg.unmatched == "copy":
                rgb = _to_rgb(frame)
                self._encode(self._annotate(rgb, Detections.empty(), self._position, None),
                             frame.pts)
            self._position += 1
        frame = self._next_frame()
        if frame is None:
            log.warning("video sink: source '%s': result for frame %d but %s has only %d frames; "
                        "ignored", self.source_id, index, self.uri, self._position)
            self._late += 1
            self.close()
            return
        self._check_pts(meta.pts, meta.time_base, frame)
        self.overlay.update(result)
        rgb = _to_rgb(frame)
        self._encode(self._annotate(rgb, result.detections, index, (meta.width, meta.height)),
                     frame.pts)
        self._position += 1
        if self._at_end():
            self.close()

    def _annotate(self, rgb: npt.NDArray[np.uint8], dets: Detections, index: int,
                  meta_size: tuple[int, int] | None) -> av.VideoFrame:
        h, w = rgb.shape[:2]
        if meta_size is not None and meta_size != (w, h) and len(dets):
            sx, sy = w / meta_size[0], h / meta_size[1]
            kp = dets.keypoints  # masks carry their frame size: draw_detections maps them
            dets = dataclasses.replace(
                dets, xyxy=dets.xyxy * np.array([sx, sy] * 2, np.float32),
                keypoints=None if kp is None else kp * np.array([sx, sy, 1.0][:kp.shape[2]], np.float32),
                attributes=None if dets.attributes is None else _scaled_attributes(dets.attributes, sx, sy))
        size = max(10, round(h / 36))
        if size not in self._fonts:
            self._fonts[size] = _load_font(size)
        geometry = self.overlay.geometry
        xy_scale = (1.0, 1.0) if geometry is None else (w / geometry.width, h / geometry.height)

        def overlay(draw: Any, lw: int, font: Any) -> None:
            self.overlay.draw(draw, xy_scale, lw, font)

        cfg = self.cfg
        drawn = draw_detections(rgb, dets, index, draw_labels=cfg.draw_labels, line_width=cfg.line_width,
                                font=self._fonts[size], overlay=overlay, draw_masks=cfg.masks,
                                mask_alpha=cfg.mask_alpha, draw_keypoints=cfg.keypoints,
                                keypoint_threshold=cfg.keypoint_threshold)
        return av.VideoFrame.from_ndarray(drawn, format="rgb24")

    def _check_pts(self, pts: int | None, time_base: tuple[int, int],
                   frame: av.VideoFrame) -> None:
        if pts is None or frame.pts is None:
            return
        tb = Fraction(*time_base)
        if tb == self.time_base:
            same = pts == frame.pts
        else:
            same = abs(pts * tb - frame.pts * self.time_base) * self.fps < Fraction(1, 2)
        if not same:
            self._pts_mismatch += 1
            if self._pts_mismatch == 1:
                log.warning("video sink: source '%s': frame %d has pts %d (%s) in the results but "
                            "pts %d (%s) when decoded here; boxes may be drawn on the wrong frames",
                            self.source_id, self._position, pts, tb, frame.pts, self.time_base)

    # -- closing ----------------------------------------------------------------------
    def _close_output(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except (av.error.FFmpegError, OSError) as e:
                log.error("video sink: finalising %s failed: %s", self.out_path, e)

    def close(self) -> None:
        """Flush the encoder and finalise the file (idempotent; never raises for FFmpeg errors)."""
        if self.finished:
            return
        self.finished = True
        self._pending = None
        try:
            if self._out is not None:
                try:
                    for packet in self._ostream.encode(None):
                        self._out.mux(packet)
                except (av.error.FFmpegError, OSError) as e:
                    log.error("video sink: flushing the encoder of %s failed: %s",
                              self.out_path, e)
                self._close_output()
                log.info("video sink: wrote %s (%d frames)", self.out_path, self.frames_written)
        finally:
            self._frames = iter(())  # drop the decoder and the encoder
            self._ostream = None
            self._in.close()
        if self._late:
            log.warning("video sink: source '%s': %d result(s) could not be placed (see above)",
                        self.source_id, self._late)
        if self._pts_mismatch:
            log.warning("video sink: source '%s': %d frame(s) had a different pts than decoded "
                        "here", self.source_id, self._pts_mismatch)


def _output_name(source_id: str) -> Path:
    parts = [_UNSAFE.sub("_", p).strip(".") or "_" for p in source_id.split("/") if p]
    if not parts:
        parts = ["_"]
    return Path(*parts[:-1], parts[-1] + ".annotated.mp4")


class VideoSink:
    """Writes an annotated copy of every file source; see the module docstring."""

    def __init__(self, path: str | Path, codec: str = "libx264", crf: int | None = 23,
                 preset: str | None = "veryfast", draw_labels: bool = True,
                 unmatched: Literal["copy", "skip"] = "copy", line_width: int | None = None,
                 threads: int = 2, trail: int = 20, analytics: AnalyticsConfig | None = None,
                 masks: bool = True, mask_alpha: float = 0.4, keypoints: bool = True,
                 keypoint_threshold: float = 0.5) -> None:
        self.config = VideoSinkConfig(str(path), codec, crf, preset, draw_labels, unmatched,
                                      line_width, threads, trail, masks, mask_alpha, keypoints,
                                      keypoint_threshold)
        self.config.validate("video")  # what the config file would be refused for, before any work
        self.analytics = analytics
        self.path = Path(path).expanduser()
        self._single_file = self.path.suffix.lower() in VIDEO_SUFFIXES
        self._writers: dict[str, _SourceWriter] = {}
        self._ignored: set[str] = set()
        self._fonts: dict[int, Any] = {}
        self._entered = False
        #: source id -> output file, for every source that got a writer.
        self.outputs: dict[str, Path] = {}

    def use_analytics(self, config: AnalyticsConfig) -> None:
        """Draw ``config``'s zones and lines with their running counts (the job calls this
        before entering the sink when its config has an ``analytics:`` section)."""
        if self._writers:
            raise SinkError("video sink: use_analytics() must come before the first write()")
        self.analytics = config

    def __enter__(self) -> VideoSink:
        _load_font(12)  # fail now, not at the first frame, when Pillow is missing
        self._entered = True
        return self

    def _writer(self, result: FrameResult) -> _SourceWriter | None:
        meta = result.frame
        sid = meta.source_id
        writer = self._writers.get(sid)
        if writer is not None or sid in self._ignored:
            return writer
        if not is_file_uri(meta.uri):
            self._ignored.add(sid)
            log.warning("video sink: source '%s' (%s) is not a file; %s, its results are ignored",
                        sid, meta.uri, _NETWORK_HINT)
            return None
        if self._single_file:
            if self.outputs:
                raise SinkError(f"video sink: path {self.path} is a single file but results of a "
                                f"second source '{sid}' arrived; set path to a folder")
            out = self.path
        else:
            out = self.path / _output_name(sid)
        writer = _SourceWriter(sid, meta.uri, out, self.config, self._fonts, self.analytics)
        self._writers[sid] = writer
        self.outputs[sid] = out
        return writer

    def write(self, results: Sequence[FrameResult]) -> None:
        """Annotate and encode ``results`` (in order per source; sources may interleave)."""
        if not self._entered:
            raise SinkError(f"video sink {self.path}: write() called outside 'with'")
        for result in results:
            writer = self._writer(result)
            if writer is not None:
                writer.add(result)

    def close(self) -> None:
        """Finalise every open output (also called by ``__exit__``)."""
        errors: list[BaseException] = []
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception as e:  # close the others first
                errors.append(e)
        self._entered = False
        if errors:
            raise SinkError(f"video sink: closing failed: {errors[0]}") from errors[0]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except SinkError:
            if exc is None:
                raise
            log.exception("video sink: closing after an error failed")


@SINKS.register("video", VideoSinkConfig)
def _video(config: VideoSinkConfig) -> VideoSink:
    return VideoSink(config.path, config.codec, config.crf, config.preset, config.draw_labels,
                     config.unmatched, config.line_width, config.threads, config.trail,
                     masks=config.masks, mask_alpha=config.mask_alpha, keypoints=config.keypoints,
                     keypoint_threshold=config.keypoint_threshold)
