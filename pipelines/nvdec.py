"""A persistent NVDEC decode session per live stream, through the driver's NVDECODE API.

DALI's video decoders take self-contained buffers and build a decoder per buffer: one GOP
per buffer caps the whole GPU far below NVDEC's rate, whatever the number of pipelines
(figures in ``docs/live.md``). A camera needs a decoder that
keeps its state from packet to packet, as DeepStream's ``nvv4l2decoder`` does. This module
drives NVDEC directly with ``ctypes`` (``libnvcuvid.so.1`` and ``libcuda.so.1`` ship with the
NVIDIA driver; nothing to build or install):

* the parser (``cuvidCreateVideoParser``) takes Annex-B packets as they arrive and calls
  back to create the decoder, decode pictures and hand out pictures in display order;
* the decoder scales in hardware to the letterbox size (``ulTargetWidth/Height``), so a
  1080p frame leaves NVDEC as a 640x360 NV12 surface: no full-size RGB frame is ever made.
  A job with a cascade needs the source pixels (its crops): its sessions decode at full size
  instead (the even source size, :func:`full_size_target`), for streams up to
  ``live.max_source_size``, and the model input is scaled in torch
  (:func:`operators.color.nv12_resize`);
* each displayed surface is copied (``cuMemcpy2DAsync``) into a torch tensor
  ``uint8[h * 3 // 2, w]`` (NV12) on the session's CUDA stream and handed out (and
  unmapped) at the next display, when the copy is done; its pts is the smallest pts fed and
  not yet displayed (display order is pts order).
  :func:`operators.color.nv12_letterbox` turns a batch of them into model input.

Latency is three frames (two of display delay, so mapping a picture never waits for NVDEC,
and one because a picture is handed out once its copy is done), not one GOP.

Usage::

    dec = NvdecSession("h264", target=(640, 360), device_id=0)
    for frame in dec.decode(annexb_packet, pts=pkt.pts):     # DecodedSurface
        frame.nv12.shape            # (540, 640) uint8 on cuda:0
    dec.close()
    make = nvdec_decoder_factory(0, (640, 640), max_source=(1920, 1080))   # full-size frames
"""

from __future__ import annotations

import ctypes as C
import heapq
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from streams.errors import DecodeError, MissingDependencyError

log = logging.getLogger(__name__)

BLOCK_FRAMES = 32  # frames per torch allocation of a session without an allocator (scaled frames)

CODECS = {"mpeg1video": 0, "mpeg2video": 1, "mpeg4": 2, "vc1": 3, "h264": 4, "mjpeg": 5, "hevc": 8,
          "vp8": 9, "vp9": 10, "av1": 11}
DISPLAY_DELAY = 2
_PKT_ENDOFSTREAM = 0x01
_PKT_TIMESTAMP = 0x02


class _VideoFormat(C.Structure):  # CUVIDEOFORMAT
    _fields_ = [
        ("codec", C.c_int), ("frame_rate_num", C.c_uint), ("frame_rate_den", C.c_uint),
        ("progressive_sequence", C.c_ubyte), ("bit_depth_luma_minus8", C.c_ubyte),
        ("bit_depth_chroma_minus8", C.c_ubyte), ("min_num_decode_surfaces", C.c_ubyte),
        ("coded_width", C.c_uint), ("coded_height", C.c_uint),
        ("left", C.c_int), ("top", C.c_int), ("right", C.c_int), ("bottom", C.c_int),
        ("chroma_format", C.c_int), ("bitrate", C.c_uint), ("dar_x", C.c_int), ("dar_y", C.c_int),
        ("video_signal_bits", C.c_ubyte), ("color_primaries", C.c_ubyte),
        ("transfer_characteristics", C.c_ubyte), ("matrix_coefficients", C.c_ubyte),
        ("seqhdr_data_length", C.c_uint),
    ]


class _DispInfo(C.Structure):  # CUVIDPARSERDISPINFO
    _fields_ = [("picture_index", C.c_int), ("progressive_frame", C.c_int), ("top_field_first", C.c_int),
                ("repeat_first_field", C.c_int), ("timestamp", C.c_longlong)]


class _Packet(C.Structure):  # CUVIDSOURCEDATAPACKET
    _fields_ = [("flags", C.c_ulong), ("payload_size", C.c_ulong), ("payload", C.c_void_p),
                ("timestamp", C.c_longlong)]


_SEQ_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(_VideoFormat))
_DEC_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p)
_DISP_CB = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(_DispInfo))


class _ParserParams(C.Structure):  # CUVIDPARSERPARAMS
    _fields_ = [
        ("CodecType", C.c_int), ("ulMaxNumDecodeSurfaces", C.c_uint), ("ulClockRate", C.c_uint),
        ("ulErrorThreshold", C.c_uint), ("ulMaxDisplayDelay", C.c_uint), ("bAnnexb_reserved", C.c_uint),
        ("uReserved1", C.c_uint * 4), ("pUserData", C.c_void_p),
        ("pfnSequenceCallback", _SEQ_CB), ("pfnDecodePicture", _DEC_CB), ("pfnDisplayPicture", _DISP_CB),
        ("pfnGetOperatingPoint", C.c_void_p), ("pvReserved2", C.c_void_p * 6), ("pExtVideoInfo", C.c_void_p),
    ]


class _Rect(C.Structure):
    _fields_ = [("left", C.c_short), ("top", C.c_short), ("right", C.c_short), ("bottom", C.c_short)]


class _CreateInfo(C.Structure):  # CUVIDDECODECREATEINFO
    _fields_ = [
        ("ulWidth", C.c_ulong), ("ulHeight", C.c_ulong), ("ulNumDecodeSurfaces", C.c_ulong),
        ("CodecType", C.c_int), ("ChromaFormat", C.c_int), ("ulCreationFlags", C.c_ulong),
        ("bitDepthMinus8", C.c_ulong), ("ulIntraDecodeOnly", C.c_ulong), ("ulMaxWidth", C.c_ulong),
        ("ulMaxHeight", C.c_ulong), ("Reserved1", C.c_ulong), ("display_area", _Rect),
        ("OutputFormat", C.c_int), ("DeinterlaceMode", C.c_int), ("ulTargetWidth", C.c_ulong),
        ("ulTargetHeight", C.c_ulong), ("ulNumOutputSurfaces", C.c_ulong), ("vidLock", C.c_void_p),
        ("target_rect", _Rect), ("enableHistogram", C.c_ulong), ("Reserved2", C.c_ulong * 4),
    ]


class _ProcParams(C.Structure):  # CUVIDPROCPARAMS
    _fields_ = [
        ("progressive_frame", C.c_int), ("second_field", C.c_int), ("top_field_first", C.c_int),
        ("unpaired_field", C.c_int), ("reserved_flags", C.c_uint), ("reserved_zero", C.c_uint),
        ("raw_input_dptr", C.c_ulonglong), ("raw_input_pitch", C.c_uint), ("raw_input_format", C.c_uint),
        ("raw_output_dptr", C.c_ulonglong), ("raw_output_pitch", C.c_uint), ("Reserved1", C.c_uint),
        ("output_stream", C.c_void_p), ("Reserved", C.c_uint * 46), ("histogram_dptr", C.c_void_p),
        ("Reserved2", C.c_void_p * 1),
    ]


class _Memcpy2D(C.Structure):  # CUDA_MEMCPY2D
    _fields_ = [
        ("srcXInBytes", C.c_size_t), ("srcY", C.c_size_t), ("srcMemoryType", C.c_int), ("srcHost", C.c_void_p),
        ("srcDevice", C.c_ulonglong), ("srcArray", C.c_void_p), ("srcPitch", C.c_size_t),
        ("dstXInBytes", C.c_size_t), ("dstY", C.c_size_t), ("dstMemoryType", C.c_int), ("dstHost", C.c_void_p),
        ("dstDevice", C.c_ulonglong), ("dstArray", C.c_void_p), ("dstPitch", C.c_size_t),
        ("WidthInBytes", C.c_size_t), ("Height", C.c_size_t),
    ]


_MEMORYTYPE_DEVICE = 2


class _Driver:
    """``libcuda`` and ``libnvcuvid`` with typed entry points (loaded once per process, on first use)."""

    _lock = threading.Lock()
    _inst: _Driver | None = None

    def __init__(self) -> None:
        try:
            # CDLL calls release the GIL; PyDLL calls keep it. Short, non-blocking calls go
            # through PyDLL: with a hundred stream threads, every GIL hand-over costs more
            # than the call itself. Calls that can wait (decode, map, synchronise) release it.
            self.cuda = C.CDLL("libcuda.so.1")
            self.cuvid = C.CDLL("libnvcuvid.so.1")
            self.cuda_held = C.PyDLL("libcuda.so.1")
            self.cuvid_held = C.PyDLL("libnvcuvid.so.1")
        except OSError as e:
            raise MissingDependencyError(
                "libnvcuvid", "NVDEC decoding of live streams",
                "an NVIDIA driver with NVDEC (libnvcuvid.so.1, part of the driver package)") from e
        v, cu = self.cuvid, self.cuda
        vp, pp = C.c_void_p, C.POINTER
        held_v, held_cu = self.cuvid_held, self.cuda_held
        # argument types on the handle each function is called through
        v.cuvidCreateVideoParser.argtypes = [pp(vp), pp(_ParserParams)]
        v.cuvidDestroyVideoParser.argtypes = [vp]
        v.cuvidCreateDecoder.argtypes = [pp(vp), pp(_CreateInfo)]
        v.cuvidDestroyDecoder.argtypes = [vp]
        v.cuvidDecodePicture.argtypes = [vp, vp]
        held_v.cuvidParseVideoData.argtypes = [vp, pp(_Packet)]
        held_v.cuvidMapVideoFrame64.argtypes = [vp, C.c_int, pp(C.c_ulonglong), pp(C.c_uint), pp(_ProcParams)]
        for lib in (v, held_v):
            lib.cuvidUnmapVideoFrame64.argtypes = [vp, C.c_ulonglong]
        cu.cuInit.argtypes = [C.c_uint]
        cu.cuDeviceGet.argtypes = [pp(C.c_int), C.c_int]
        cu.cuDevicePrimaryCtxRetain.argtypes = [pp(vp), C.c_int]
        cu.cuGetErrorName.argtypes = [C.c_int, pp(C.c_char_p)]
        cu.cuEventCreate.argtypes = [pp(vp), C.c_uint]
        cu.cuEventDestroy_v2.argtypes = [vp]
        held_cu.cuCtxPushCurrent_v2.argtypes = [vp]
        held_cu.cuCtxPopCurrent_v2.argtypes = [pp(vp)]
        held_cu.cuMemcpy2DAsync_v2.argtypes = [pp(_Memcpy2D), vp]
        held_cu.cuEventRecord.argtypes = [vp, vp]
        held_cu.cuEventSynchronize.argtypes = [vp]
        self.check(cu.cuInit(0), "cuInit")
        self._contexts: dict[int, int] = {}

    @classmethod
    def get(cls) -> _Driver:
        with cls._lock:
            if cls._inst is None:
                cls._inst = cls()
            return cls._inst

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            name = C.c_char_p()
            self.cuda.cuGetErrorName(rc, C.byref(name))
            raise DecodeError("nvdec", f"{what} failed: {(name.value or b'?').decode()} ({rc})")

    def primary_context(self, device_id: int) -> int:
        """The device's primary context (the one torch and DALI use)."""
        with self._lock:
            ctx = self._contexts.get(device_id)
            if ctx is None:
                dev = C.c_int()
                self.check(self.cuda.cuDeviceGet(C.byref(dev), device_id), "cuDeviceGet")
                handle = C.c_void_p()
                self.check(self.cuda.cuDevicePrimaryCtxRetain(C.byref(handle), dev), "cuDevicePrimaryCtxRetain")
                ctx = self._contexts[device_id] = int(handle.value or 0)
            return ctx


@dataclass(frozen=True)
class DecodedSurface:
    """One decoded frame: NV12 ``uint8[h * 3 // 2, w]`` on the GPU (``h, w`` = the target size)."""

    nv12: Any
    pts: int | None
    width: int  # source (coded display) size
    height: int
    matrix: int  # H.273 matrix_coefficients (1 = BT.709; others decoded as BT.601)
    slot: int = -1  # the slot of the allocator's ring it was copied to (-1: no allocator)


# gives a frame buffer ``uint8[h * 3 // 2, w]`` and its slot number for an NV12 frame of
# ``(h, w)``, or ``None`` when none is free (the frame is then dropped; the allocator counts it)
Allocator = Callable[[int, int], "tuple[Any, int] | None"]


class NvdecSession:
    """One stream's NVDEC parser and decoder; see the module docstring.

    Not thread-safe: one thread (the stream's reader) calls :meth:`decode`.

    ``allocator`` (optional) gives the buffer each frame is copied to (e.g. a slot of a ring
    shared with another process, :mod:`pipelines.ingest`); by default frames are views into
    blocks of ``block_frames`` frames allocated by torch (a block is freed with its last
    frame: full-size frames take one each, so that a queued frame pins only itself). A frame
    the allocator has no room for is dropped (the allocator, which knows its stream, counts it).
    ``target`` (w, h), or a function of the source (w, h) giving it, may raise
    :class:`DecodeError` to refuse a stream (before anything is decoded).
    """

    def __init__(self, codec: str, target: tuple[int, int] | Callable[[int, int], tuple[int, int]],
                 device_id: int = 0, surfaces: int = 0, allocator: Allocator | None = None,
                 block_frames: int = BLOCK_FRAMES) -> None:
        if codec not in CODECS:
            raise DecodeError("nvdec", f"codec {codec!r} is not decoded by NVDEC here; "
                              f"supported: {', '.join(sorted(CODECS))}")
        import torch

        self.codec = codec
        self._target = target  # (w, h), or a function of the source (w, h)
        self.target = (0, 0)
        self._pending: list[int] = []  # pts of packets fed and not displayed yet (a min-heap)
        self._copy = _Memcpy2D()
        self._proc = _ProcParams()  # reused for every frame (the hot path is Python)
        self._block: Any = None
        self._block_next = 0
        self._block_frames = max(1, block_frames)
        self._mapped: tuple[Any, Any, DecodedSurface] | None = None  # the picture handed out next
        self._events: list[C.c_void_p] = []
        self._event_next = 0
        self.device_id = device_id
        self._torch = torch
        self._drv = _Driver.get()
        self._ctx = self._drv.primary_context(device_id)
        self._stream = torch.cuda.Stream(device=device_id)
        self._device = torch.device("cuda", device_id)
        self._decoder = C.c_void_p()
        self._fmt: _VideoFormat | None = None
        self._out: list[DecodedSurface] = []
        self._error: BaseException | None = None
        self.frames = 0
        self._allocator = allocator
        # keep the callbacks alive as long as the parser
        self._cbs = (_SEQ_CB(self._on_sequence), _DEC_CB(self._on_decode), _DISP_CB(self._on_display))
        params = _ParserParams()
        params.CodecType = CODECS[codec]
        params.ulMaxNumDecodeSurfaces = surfaces or 20
        params.ulClockRate = 0
        params.ulErrorThreshold = 100
        # pictures are displayed DISPLAY_DELAY packets after they are decoded, so mapping them
        # does not wait for NVDEC (+2 frames of latency, 67 ms at 30 fps)
        params.ulMaxDisplayDelay = DISPLAY_DELAY
        params.pfnSequenceCallback, params.pfnDecodePicture, params.pfnDisplayPicture = self._cbs
        self._parser = C.c_void_p()
        with self._current():
            for _ in range(2):
                ev = C.c_void_p()
                self._drv.check(self._drv.cuda.cuEventCreate(C.byref(ev), 2), "cuEventCreate")  # no timing
                self._events.append(ev)
            self._drv.check(self._drv.cuvid.cuvidCreateVideoParser(C.byref(self._parser), C.byref(params)),
                            "cuvidCreateVideoParser")

    # -- context ------------------------------------------------------------------------
    class _Ctx:
        def __init__(self, s: NvdecSession) -> None:
            self.s = s

        def __enter__(self) -> None:
            self.s._drv.check(self.s._drv.cuda_held.cuCtxPushCurrent_v2(C.c_void_p(self.s._ctx)),
                              "cuCtxPushCurrent")

        def __exit__(self, *exc: object) -> None:
            old = C.c_void_p()
            self.s._drv.cuda_held.cuCtxPopCurrent_v2(C.byref(old))

    def _current(self) -> NvdecSession._Ctx:
        return NvdecSession._Ctx(self)

    # -- public -------------------------------------------------------------------------
    def decode(self, data: bytes, pts: int | None = None) -> list[DecodedSurface]:
        """Feed one Annex-B packet (access unit); returns the frames it completed, in display order."""
        if pts is not None:
            heapq.heappush(self._pending, pts)
        pkt = _Packet()
        pkt.flags = _PKT_TIMESTAMP if pts is not None else 0
        pkt.payload_size = len(data)
        pkt.payload = C.cast(C.c_char_p(data), C.c_void_p)  # the bytes' own buffer: no copy
        pkt.timestamp = pts if pts is not None else 0
        return self._parse(pkt)

    def flush(self) -> list[DecodedSurface]:
        """End of stream: the frames still held by the parser."""
        pkt = _Packet()
        pkt.flags = _PKT_ENDOFSTREAM
        return self._parse(pkt, final=True)

    def close(self) -> None:
        with self._current():
            if self._mapped is not None and self._decoder:
                self._drv.cuvid.cuvidUnmapVideoFrame64(self._decoder, self._mapped[0])
                self._mapped = None
            for ev in self._events:
                self._drv.cuda.cuEventDestroy_v2(ev)
            self._events = []
            if self._parser:
                self._drv.cuvid.cuvidDestroyVideoParser(self._parser)
                self._parser = C.c_void_p()
            if self._decoder:
                self._drv.cuvid.cuvidDestroyDecoder(self._decoder)
                self._decoder = C.c_void_p()

    def __enter__(self) -> NvdecSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _parse(self, pkt: _Packet, final: bool = False) -> list[DecodedSurface]:
        self._out = []
        with self._current():
            # parsing is short CPU work: keep the GIL (the callbacks need it anyway)
            rc = self._drv.cuvid_held.cuvidParseVideoData(self._parser, C.byref(pkt))
            if final and self._error is None:
                self._finish_pending()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        self._drv.check(rc, "cuvidParseVideoData")
        out, self._out = self._out, []
        self.frames += len(out)
        return out

    def _next_buffer(self, h: int, w: int) -> Any:
        """A fresh ``uint8[h * 3 // 2, w]`` frame: a view into a block allocated ``block_frames``
        frames at a time (one allocation instead of 32; a block is freed when its last frame is)."""
        if self._block is None or self._block_next >= self._block.shape[0] or \
                tuple(self._block.shape[1:]) != (h * 3 // 2, w):
            self._block = self._torch.empty((self._block_frames, h * 3 // 2, w), dtype=self._torch.uint8,
                                            device=self._device)
            self._block_next = 0
        frame = self._block[self._block_next]
        self._block_next += 1
        return frame

    # -- parser callbacks (called inside cuvidParseVideoData, on this thread) -------------
    def _on_sequence(self, _user: Any, fmt_p: Any) -> int:
        try:
            fmt = fmt_p.contents
            if self._decoder:
                if self._fmt is not None and (fmt.coded_width, fmt.coded_height) == (
                        self._fmt.coded_width, self._fmt.coded_height):
                    return int(self._fmt.min_num_decode_surfaces) or 1
                self._drv.cuvid.cuvidDestroyDecoder(self._decoder)  # size changed: a new decoder
                self._decoder = C.c_void_p()
            info = _CreateInfo()
            n = max(int(fmt.min_num_decode_surfaces), 1) + 4
            info.ulWidth, info.ulHeight = fmt.coded_width, fmt.coded_height
            info.ulMaxWidth, info.ulMaxHeight = fmt.coded_width, fmt.coded_height
            info.ulNumDecodeSurfaces = n
            info.CodecType = fmt.codec
            info.ChromaFormat = fmt.chroma_format
            info.bitDepthMinus8 = fmt.bit_depth_luma_minus8
            info.display_area = _Rect(fmt.left, fmt.top, fmt.right, fmt.bottom)
            info.OutputFormat = 0  # NV12
            info.DeinterlaceMode = 0 if fmt.progressive_sequence else 2  # weave / adaptive
            src = (fmt.right - fmt.left, fmt.bottom - fmt.top)
            tw, th = self._target(*src) if callable(self._target) else self._target
            self.target = (tw - tw % 2, th - th % 2)  # NVDEC scales to even sizes
            info.ulTargetWidth, info.ulTargetHeight = self.target
            info.ulNumOutputSurfaces = 2
            if fmt.bit_depth_luma_minus8:
                raise DecodeError("nvdec", f"{fmt.bit_depth_luma_minus8 + 8}-bit video is not supported here")
            self._drv.check(self._drv.cuvid.cuvidCreateDecoder(C.byref(self._decoder), C.byref(info)),
                            "cuvidCreateDecoder")
            self._fmt = _VideoFormat.from_buffer_copy(fmt)
            log.debug("NVDEC decoder %dx%d -> %dx%d, %d surfaces", fmt.coded_width, fmt.coded_height,
                      *self.target, n)
            return n
        except BaseException as e:  # never raise through the C caller
            self._fail(e)
            return 0

    def _fail(self, e: BaseException) -> None:
        """Keep the first error of a parse call: it is the reason (a refused stream makes no
        decoder, and the calls after it fail for that)."""
        if self._error is None:
            self._error = e

    def _on_decode(self, _user: Any, pic: Any) -> int:
        try:
            self._drv.check(self._drv.cuvid.cuvidDecodePicture(self._decoder, pic), "cuvidDecodePicture")
            return 1
        except BaseException as e:
            self._fail(e)
            return 0

    def _on_display(self, _user: Any, disp_p: Any) -> int:
        """Map the picture, start its copy, and hand out the *previous* picture, whose copy is
        complete by now: no host wait per frame (one frame of delay instead)."""
        if not disp_p:
            return 1  # end of stream marker
        try:
            disp = disp_p.contents
            proc = self._proc
            proc.progressive_frame = disp.progressive_frame
            proc.top_field_first = disp.top_field_first
            proc.unpaired_field = 1 if disp.repeat_first_field < 0 else 0
            proc.output_stream = self._stream.cuda_stream
            ptr, pitch = C.c_ulonglong(), C.c_uint()
            drv = self._drv
            # decoded DISPLAY_DELAY pictures ago, so mapping does not wait: keep the GIL
            drv.check(drv.cuvid_held.cuvidMapVideoFrame64(self._decoder, disp.picture_index, C.byref(ptr),
                                                           C.byref(pitch), C.byref(proc)), "cuvidMapVideoFrame64")
            try:
                w, h = self.target
                slot = -1
                if self._allocator is None:
                    frame = self._next_buffer(h, w)
                else:
                    got = self._allocator(h, w)
                    if got is None:  # no room: drop this picture (counted), keep decoding
                        drv.cuvid_held.cuvidUnmapVideoFrame64(self._decoder, ptr)
                        if self._pending:
                            heapq.heappop(self._pending)
                        return 1
                    frame, slot = got
                cp = self._copy
                cp.srcMemoryType, cp.srcDevice, cp.srcPitch = _MEMORYTYPE_DEVICE, ptr.value, pitch.value
                cp.dstMemoryType, cp.dstDevice, cp.dstPitch = _MEMORYTYPE_DEVICE, frame.data_ptr(), w
                cp.WidthInBytes, cp.Height = w, h * 3 // 2  # luma rows, then the interleaved chroma rows
                stream = C.c_void_p(self._stream.cuda_stream)
                drv.check(drv.cuda_held.cuMemcpy2DAsync_v2(C.byref(cp), stream), "cuMemcpy2DAsync")
                event = self._events[self._event_next]
                self._event_next ^= 1
                drv.check(drv.cuda_held.cuEventRecord(event, stream), "cuEventRecord")
            except BaseException:
                drv.cuvid_held.cuvidUnmapVideoFrame64(self._decoder, ptr)
                raise
            self._finish_pending()
            fmt = self._fmt
            assert fmt is not None
            pts = heapq.heappop(self._pending) if self._pending else None  # display order = pts order
            surface = DecodedSurface(frame, pts, fmt.right - fmt.left, fmt.bottom - fmt.top,
                                     int(fmt.matrix_coefficients), slot)
            self._mapped = (ptr, event, surface)
            return 1
        except BaseException as e:
            self._fail(e)
            return 0

    def _finish_pending(self) -> None:
        """Wait for the mapped picture's copy (normally long done), unmap it, hand it out."""
        if self._mapped is None:
            return
        ptr, event, surface = self._mapped
        self._mapped = None
        drv = self._drv
        drv.check(drv.cuda_held.cuEventSynchronize(event), "cuEventSynchronize")
        drv.cuvid_held.cuvidUnmapVideoFrame64(self._decoder, ptr)
        self._out.append(surface)


def fits(width: int, height: int, bound: tuple[int, int]) -> bool:
    """Whether a ``width x height`` frame fits ``bound`` (w, h), in either orientation (a
    camera mounted on its side sends 1080x1920)."""
    bw, bh = bound
    return (width <= bw and height <= bh) or (width <= bh and height <= bw)


def full_size_target(src_w: int, src_h: int, max_source: tuple[int, int]) -> tuple[int, int]:
    """The NVDEC target of a full-size session: the source size rounded down to even (NVDEC
    outputs even sizes). Raises :class:`DecodeError` for a source larger than ``max_source``
    (its frames would not fit the buffers sized for it: the stream is refused, not decoded)."""
    if not fits(src_w, src_h, max_source):
        bw, bh = max_source
        raise DecodeError("nvdec", f"the stream's frames are {src_w}x{src_h}, larger than live.max_source_size "
                                   f"{bw}x{bh} (a job with a cascade decodes source-size frames into buffers "
                                   f"of that size); raise live.max_source_size to read it")
    return src_w - src_w % 2, src_h - src_h % 2


def nvdec_decoder_factory(device_id: int, input_size: tuple[int, int],
                          resize: Literal["letterbox", "stretch"] = "letterbox",
                          allocator: Allocator | None = None,
                          max_source: tuple[int, int] | None = None) -> Callable[[str], NvdecSession]:
    """A :data:`streams.live.types.DecoderFactory`: per stream session, an NVDEC session that
    scales frames to their (even) letterbox size for a model input of ``input_size`` (h, w),
    copying them to buffers from ``allocator`` when given.

    With ``max_source`` (w, h) the sessions decode at full size instead (the even source
    size, for the crops of a cascade; frames allocated one at a time without an allocator)
    and refuse a stream larger than it (:func:`full_size_target`)."""
    from operators.boxes import even_letterbox_geometry

    if max_source is not None:
        bound = max_source

        def make_full(codec: str) -> NvdecSession:
            return NvdecSession(codec, lambda sw, sh: full_size_target(sw, sh, bound), device_id=device_id,
                                allocator=allocator, block_frames=1)

        return make_full

    h, w = input_size

    def target(src_w: int, src_h: int) -> tuple[int, int]:
        g = even_letterbox_geometry(src_w, src_h, w, h, resize)
        return g.resized_w, g.resized_h

    def make(codec: str) -> NvdecSession:
        return NvdecSession(codec, target, device_id=device_id, allocator=allocator)

    return make
