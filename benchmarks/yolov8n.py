"""A YOLOv8n-architecture detector in plain torch, for benchmarking (no Ultralytics).

The layout of Ultralytics' ``yolov8n.yaml`` (width 0.25, depth 0.33, ``nc=80``): a
Conv(BN, SiLU)/C2f/SPPF backbone, a PAN neck and the decoupled detect head with DFL
(``reg_max=16``) at strides 8/16/32: 3,157,200 parameters (3,151,904 once BN is folded),
8.7 GFLOPs at 640x640. The building blocks are the bundled detector's
(:mod:`engines.detector.model`), which follow Ultralytics' definitions.

In eval mode ``forward`` returns Ultralytics' export layout ``[B, 4 + nc, A]`` (``A=8400``
at 640x640): rows 0-3 are cx, cy, w, h in input pixels, then sigmoid class scores, which
Fovea's ``yolov8`` postprocess reads unchanged. Anchor points are buffers (they follow
``.half()`` and ``.to(device)``) for ``input_size``; other sizes compute them on the fly.

Weights are random (the cost is the same as trained weights): :func:`calibrate` makes the
outputs realistic for postprocessing (activations normalised on real frames, about
``candidates_per_frame`` scores above the confidence threshold per frame).

Usage::

    model = build_yolov8n(seed=0)                    # eval mode, fp32, CPU
    calibrate(model, frames)                          # frames: float32[B, 3, 640, 640] in [0, 1]
    fuse(model)                                       # fold BN into the convolutions
    preds = model(x)                                  # [B, 84, 8400]
    path = export_torchscript(model, "yolov8n.pt")    # for engines.factory (model.path)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.detector.model import SPPF, C2f, ConvBNAct

__all__ = ["DFL", "Detect", "YOLOv8n", "build_yolov8n", "calibrate", "export_program", "export_torchscript", "fuse"]

STRIDES: tuple[int, int, int] = (8, 16, 32)
REG_MAX = 16
NUM_PARAMS = 3_157_200  # Ultralytics' "YOLOv8n summary: 225 layers, 3157200 parameters"
COMMON_CLASSES = (0, 2, 7)  # COCO person, car, truck


def _make_anchors(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], dtype: torch.dtype, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points ``[2, A]`` (cell centres in grid units) and strides ``[1, A]``."""
    points, strides_out = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        sx = torch.arange(w, dtype=dtype, device=device) + 0.5
        sy = torch.arange(h, dtype=dtype, device=device) + 0.5
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), 0).reshape(2, -1))
        strides_out.append(torch.full((1, h * w), float(s), dtype=dtype, device=device))
    return torch.cat(points, 1), torch.cat(strides_out, 1)


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``c1`` bins, expectation by a fixed conv."""

    def __init__(self, c1: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """YOLOv8's decoupled head: per level a box branch (4 x ``reg_max`` bins) and a class branch."""

    anchors: torch.Tensor  # [2, A] buffers for the input size given at construction
    stride_t: torch.Tensor  # [1, A]

    def __init__(
        self,
        nc: int = 80,
        ch: Sequence[int] = (64, 128, 256),
        input_size: tuple[int, int] = (640, 640),
        strides: Sequence[int] = STRIDES,
        reg_max: int = REG_MAX,
    ) -> None:
        super().__init__()
        self.nc = nc
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        self.strides = tuple(strides)
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(ConvBNAct(x, c2, 3), ConvBNAct(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(ConvBNAct(x, c3, 3), ConvBNAct(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch
        )
        self.dfl = DFL(reg_max)
        h, w = input_size
        anchors, stride_t = _make_anchors([(h // s, w // s) for s in self.strides], self.strides, torch.float32)
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("stride_t", stride_t, persistent=False)
        self._init_bias(input_size)

    def _init_bias(self, input_size: tuple[int, int]) -> None:
        """Ultralytics' prior: box logits 1.0, class logits for ~5 objects per image."""
        for box, cls, s in zip(self.cv2, self.cv3, self.strides, strict=True):
            assert isinstance(box, nn.Sequential) and isinstance(cls, nn.Sequential)
            box_out, cls_out = box[-1], cls[-1]
            assert isinstance(box_out, nn.Conv2d) and isinstance(cls_out, nn.Conv2d)
            assert box_out.bias is not None and cls_out.bias is not None
            nn.init.constant_(box_out.bias, 1.0)
            nn.init.constant_(cls_out.bias, math.log(5 / self.nc / (max(input_size) / s) ** 2))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Eval: ``[B, 4 + nc, A]`` (a transposed view of a contiguous ``[B, A, 4 + nc]``).

        The decode works anchor-major (``[B, h*w, C]``), which is a free view of the
        channels-last maps the FP16 engine runs on: no strided layout copies of the
        ``[B, 144, A]`` map (Ultralytics' flatten/cat/transpose costs 18 % of the GPU's time
        on an H200 at batch 64). Same values as Ultralytics' head (tested against it).
        """
        if self.training:
            return [torch.cat((self.cv2[i](f), self.cv3[i](f)), 1) for i, f in enumerate(feats)]
        b = feats[0].shape[0]
        sizes = [(int(f.shape[2]), int(f.shape[3])) for f in feats]
        anchors, stride_t = self.anchors, self.stride_t
        if anchors.shape[1] != sum(h * w for h, w in sizes):  # not the size the buffers were made for
            anchors, stride_t = _make_anchors(sizes, self.strides, feats[0].dtype, feats[0].device)
        proj = self.dfl.conv.weight.view(self.reg_max)  # 0, 1, ..., reg_max - 1 (a parameter: follows .half())
        outs, start = [], 0
        for i, f in enumerate(feats):
            n = sizes[i][0] * sizes[i][1]
            box = self.cv2[i](f).permute(0, 2, 3, 1).reshape(b, n, 4, self.reg_max)  # a view if channels-last
            cls = self.cv3[i](f).permute(0, 2, 3, 1).reshape(b, n, self.nc)
            dist = box.softmax(-1) @ proj  # DFL expectation: [B, n, 4] (l, t, r, b) in grid units
            lt, rb = dist.split(2, -1)
            pts = anchors[:, start:start + n].t()  # [n, 2]
            s = stride_t[:, start:start + n].t()  # [n, 1]
            x1y1, x2y2 = pts - lt, pts + rb
            dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), -1) * s  # cx, cy, w, h in pixels
            outs.append(torch.cat((dbox, cls.sigmoid()), -1))
            start += n
        return torch.cat(outs, 1).transpose(1, 2)


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class YOLOv8n(nn.Module):
    """YOLOv8 at a width/depth multiple (default: the ``n`` scale); see the module docstring."""

    def __init__(
        self,
        nc: int = 80,
        input_size: tuple[int, int] = (640, 640),
        width: float = 0.25,
        depth: float = 0.33,
        max_channels: int = 1024,
    ) -> None:
        super().__init__()
        if input_size[0] % 32 or input_size[1] % 32:
            raise ValueError(f"YOLOv8n: input size must be a multiple of 32, got {input_size}")

        def ch(c: int) -> int:
            return _make_divisible(min(c, max_channels) * width)

        def n(k: int) -> int:
            return max(round(k * depth), 1)

        c1, c2, c3, c4, c5 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        self.input_size = input_size
        # backbone (yolov8.yaml layers 0-9)
        self.stem = ConvBNAct(3, c1, 3, 2)
        self.stage2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), C2f(c2, c2, n(3), True))
        self.stage3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), C2f(c3, c3, n(6), True))  # P3/8
        self.stage4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), C2f(c4, c4, n(6), True))  # P4/16
        self.stage5 = nn.Sequential(ConvBNAct(c4, c5, 3, 2), C2f(c5, c5, n(3), True), SPPF(c5))  # P5/32
        # PAN neck (layers 10-21)
        self.up4 = C2f(c5 + c4, c4, n(3), False)
        self.up3 = C2f(c4 + c3, c3, n(3), False)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.pan4 = C2f(c3 + c4, c4, n(3), False)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.pan5 = C2f(c4 + c5, c5, n(3), False)
        self.detect = Detect(nc, (c3, c4, c5), input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Eval: ``[B, 4 + nc, A]``; training: the raw per-level maps ``[B, 4*16 + nc, h, w]``."""
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        n4 = self.up4(torch.cat((F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4), 1))
        o3 = self.up3(torch.cat((F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3), 1))
        o4 = self.pan4(torch.cat((self.down3(o3), n4), 1))
        o5 = self.pan5(torch.cat((self.down4(o4), p5), 1))
        return self.detect([o3, o4, o5])


def build_yolov8n(nc: int = 80, input_size: tuple[int, int] = (640, 640), seed: int = 0) -> YOLOv8n:
    """A randomly initialised :class:`YOLOv8n` (deterministic for ``seed``), eval mode, CPU fp32.

    The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLOv8n(nc, input_size)
    return model.eval()


def _bn_modules(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def calibrate(
    model: YOLOv8n,
    images: torch.Tensor,
    candidates_per_frame: float = 40.0,
    conf_threshold: float = 0.25,
    classes: Sequence[int] = COMMON_CLASSES,
) -> None:
    """Make a randomly initialised model's outputs realistic for postprocessing.

    BatchNorm statistics are set from ``images`` (float ``[B, 3, H, W]`` in [0, 1], e.g.
    letterboxed video frames), so activations have unit scale and vary with the content.
    Then the class biases are set so that about ``candidates_per_frame`` (anchor, class)
    scores per frame exceed ``conf_threshold`` on ``images``, all of them in ``classes``
    (a street scene: people, cars, trucks), so NMS merges neighbouring candidates as with a
    trained detector (about 15 detections per frame survive). Leaves the model in eval mode.
    """
    bns = _bn_modules(model)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
    model.train()
    try:
        model(images)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()
    heads = [seq[-1] for seq in model.detect.cv3 if isinstance(seq, nn.Sequential)]
    keep = torch.tensor(sorted(set(classes)), dtype=torch.int64)
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv2d) and mod.bias is not None
        captured.append((out - mod.bias.view(1, -1, 1, 1)).index_select(1, keep).flatten())

    hooks = [head.register_forward_hook(hook) for head in heads]
    try:
        model(images)
    finally:
        for handle in hooks:
            handle.remove()
    logits = torch.cat(captured)
    k = max(1, min(logits.numel(), round(candidates_per_frame * images.shape[0])))
    kth = torch.topk(logits, k).values[-1].item()
    bias = math.log(conf_threshold / (1 - conf_threshold)) - kth + 1e-4
    for head in heads:
        assert isinstance(head, nn.Conv2d) and head.bias is not None
        head.bias.fill_(bias - 50.0)  # other classes: never above the threshold
        head.bias[keep] = bias


@torch.no_grad()
def fuse(model: nn.Module) -> nn.Module:
    """Fold every ``conv`` + ``bn`` pair (modules with both attributes) into one conv, in place.

    For inference only (eval-mode statistics). Returns ``model``.
    """
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                          conv.padding, conv.dilation, conv.groups, bias=True,  # type: ignore[arg-type]
                          padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        assert fused.bias is not None
        fused.bias.copy_((b0 - bn.running_mean) * scale + bn.bias)
        m.conv = fused
        m.bn = nn.Identity()
    return model


def export_torchscript(model: nn.Module, path: str | Path, input_size: tuple[int, int] | None = None) -> Path:
    """Trace ``model`` (eval, CPU fp32) and save it as TorchScript for ``model.path``.

    The trace keeps the batch dimension dynamic but fixes the input size (``input_size``,
    default ``model.input_size``); ``.half()``/``.to()`` on the loaded module also convert
    the anchor buffers, so the torch engine's FP16 path works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    h, w = (int(size[0]), int(size[1])) if size is not None else (640, 640)
    model = model.eval().cpu().float()
    example = torch.zeros(1, 3, h, w)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the anchor-size branch is fixed by design
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what engines.factory loads
        traced = torch.jit.trace(model, example, check_trace=False)
    tmp = path.with_name(path.name + ".tmp")
    traced.save(str(tmp))
    tmp.replace(path)
    return path


def export_program(model: nn.Module, path: str | Path, input_size: tuple[int, int] | None = None,
                   max_batch: int = 1024) -> Path:
    """Export ``model`` (eval, CPU fp32) with ``torch.export`` and save it as ``.pt2`` for ``model.path``.

    The batch dimension stays dynamic (1..``max_batch``); the input size is fixed
    (``input_size``, default ``model.input_size``). Unlike TorchScript, the loaded module
    is a plain ``GraphModule`` that the torch engine can ``torch.compile``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    h, w = (int(size[0]), int(size[1])) if size is not None else (640, 640)
    model = model.eval().cpu().float()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        # an example batch of 2: a batch of 1 would be specialised as a constant
        program = torch.export.export(model, (torch.zeros(2, 3, h, w),), dynamic_shapes=({0: batch},))
    tmp = path.with_name(path.name + ".tmp")
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return path
