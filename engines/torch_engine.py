"""The torch engine: CUDA FP16 (channels_last, CUDA graphs) or CPU FP32.

Runs any ``nn.Module`` whose forward maps an image batch ``[N, 3, H, W]`` to one tensor
or a tuple of tensors (YOLO-style raw outputs). Entering the engine runs the model once
on a blank batch of one; a model that fails there (it takes no such images) or returns
something else is an EngineError naming the model (``source``).

CUDA graphs and zero copy
    A CUDA graph reads its input from the address it was captured with, and a capture
    must not overlap other threads' CUDA work (DALI's decoders, other sessions): that
    fails the capture or DALI's work (cudaErrorStreamCaptureIsolation). So a
    job captures before any decoding starts: :meth:`TorchEngine.capture_graphs` records
    one graph per inference stream, each reading its own static input buffer, and
    :meth:`TorchEngine.close_captures` forbids captures from then on. A batch on one of
    those streams is then copied into that stream's buffer (one device-to-device copy,
    small next to the inference itself) and the graph replayed: a few host calls per
    batch instead of hundreds of kernel launches, which leaves the GIL to the decode
    threads. A smaller batch (a live job's partial batch) is copied into the buffer's
    first rows and the whole graph replayed; its outputs are those rows (the other rows'
    work is wasted, which costs less than running eagerly). A model that takes several
    input sizes (a dynamic-shape export, whose files a job letterboxes into rectangles of
    several shapes) gets one graph per stream and size (:meth:`TorchEngine.capture_graphs`
    with ``sizes``), each with its own input buffer, in the stream's memory pool.
    Larger batches, or shapes without a graph, run eagerly on the caller's buffer (logged
    once). The TensorRT engine needs no graphs and binds DALI's buffer in place.

    Without :meth:`close_captures` (tests, single-threaded use) the engine captures on
    demand, one graph per (stream, input address, shape, strides), reading that buffer in
    place; graphs of one stream share a memory pool (their replays are ordered on that
    stream). If addresses keep changing (more misses than ``graph_cache_size``), it logs
    that once and runs eagerly.

torch.compile
    With ``compile_mode`` (``"default"`` or ``"max-autotune-no-cudagraphs"``: the engine
    captures its own graphs), the graphs :meth:`TorchEngine.capture_graphs` records run
    inductor's fused kernels: fewer, larger kernels and fewer round trips through GPU
    memory than the eager model (about one kernel per op), so the engine runs faster
    (max-autotune a little faster still, for a longer compile; figures in
    benchmarks/RESULTS.md). Compiling takes seconds to minutes (inductor caches it on
    disk); batches of other shapes run the uncompiled model eagerly.

Usage::

    with TorchEngine(model, device="cuda:0", precision="fp16", input_size=(640, 640)) as e:
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        e.capture_graphs(64, streams)       # before any decoder runs
        e.capture_graphs(64, streams, [(384, 640)])  # other input sizes too (a dynamic-shape model)
        e.close_captures("DALI decodes from here on")
        out = e.infer({"images": batch}, stream=streams[0].cuda_stream)   # batch: [64, 3, 640, 640]
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch

from engines._messages import describe
from engines.base import Layout, TensorSpec
from streams.errors import EngineError, ShapeError

log = logging.getLogger(__name__)


class Gate:
    """Many concurrent users of the GPU, or one CUDA graph capture with none.

    Capturing while another thread runs CUDA work of the model or of postprocessing
    (cuDNN, synchronising copies) can invalidate the capture or fail that thread's work.
    Callers wrap all their GPU work in :meth:`shared` (re-entrant per thread); a capture
    runs in :meth:`exclusive`, which waits until no other thread is inside and holds new
    ones back until it is done. Captures happen only during warm-up (a new input buffer),
    so the steady state never waits.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._capturing = False
        self._local = threading.local()

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        depth = self._depth()
        if depth == 0:
            with self._cond:
                while self._capturing:
                    self._cond.wait()
                self._active += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Sole use of the GPU; gives up the caller's own :meth:`shared` slot meanwhile."""
        held = self._depth() > 0
        with self._cond:
            if held:
                self._active -= 1
                self._cond.notify_all()
            while self._capturing or self._active > 0:
                self._cond.wait()
            self._capturing = True
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                if held:
                    self._active += 1
                self._cond.notify_all()


class _Graph:
    """A captured CUDA graph with its static outputs (and its static input, if it owns one)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, outputs: tuple[torch.Tensor, ...],
                 static_input: torch.Tensor | None = None) -> None:
        self.graph = graph
        self.outputs = outputs
        self.input = static_input


class TorchEngine:
    """Runs a torch module; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        precision: str = "fp32",
        input_size: tuple[int, int] = (640, 640),
        input_name: str = "images",
        output_names: tuple[str, ...] | None = None,
        cuda_graphs: bool = True,
        max_batch_size: int | None = None,
        graph_cache_size: int = 16,
        compile_mode: str | None = None,
        source: str | None = None,
        other_sizes: bool = False,
    ) -> None:
        self._source = source or f"the {type(model).__name__} model"  # names the model in errors
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"device {device!r} requested but torch sees no CUDA GPU")
        on_cuda = self._device.type == "cuda"
        if precision == "int8":
            raise EngineError("the torch engine runs fp32 or fp16; int8 needs engine: tensorrt")
        self._dtype = torch.float16 if (on_cuda and precision == "fp16") else torch.float32
        if not on_cuda and precision == "fp16":
            log.info("torch engine on the CPU runs in fp32 (fp16 is for CUDA)")
        self._model = model
        self._input_name = input_name
        self._input_size = input_size
        self._other_sizes = other_sizes  # a dynamic-shape model: batches of other (H, W) run too
        self._output_names = output_names
        self._use_graphs = cuda_graphs and on_cuda
        self._compile_mode = compile_mode if on_cuda else None
        self._compiled: Any = None  # torch.compile'd model: what capture_graphs records
        self._max_batch = max_batch_size
        self._graph_cache_size = graph_cache_size
        self._graphs: dict[int, OrderedDict[tuple[Any, ...], _Graph]] = {}
        self._pools: dict[int, Any] = {}
        self._misses: dict[int, int] = {}  # captures per stream
        # (stream handle, h, w) → graph reading its own input buffer
        self._static: dict[tuple[int, int, int], _Graph] = {}
        self._captures_closed: str | None = None  # why on-demand captures are off
        self._eager_noted = False
        self._lock = threading.Lock()  # graph caches are shared by the callers' threads
        self.gate = Gate()  # held shared by infer and by callers (running()); exclusive to capture
        self._outputs: tuple[TensorSpec, ...] = ()
        self._entered = False

    # -- Engine properties --------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The image input: ``(None, 3, h, w)`` at ``input_size``, ``(None, 3, None, None)``
        for a model built with ``other_sizes``."""
        h, w = (None, None) if self._other_sizes else self._input_size
        return (TensorSpec(self._input_name, (None, 3, h, w), self.input_dtype),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def device(self) -> str:
        return str(self._device) if self._device.index is not None or self._device.type == "cpu" \
            else f"cuda:{torch.cuda.current_device()}"

    @property
    def input_layout(self) -> Layout:
        return "NHWC" if self._device.type == "cuda" else "NCHW"

    @property
    def input_dtype(self) -> str:
        return "float16" if self._dtype == torch.float16 else "float32"

    @property
    def max_batch_size(self) -> int | None:
        return self._max_batch

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> TorchEngine:
        m = eval_mode(self._model).to(self._device)
        if self._device.type == "cuda":
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
        if self._dtype == torch.float16:
            m = m.half()
        self._model = m
        if self._compile_mode is not None:
            # compiled lazily, on the first batch of capture_graphs (one shape: dynamic=False)
            self._compiled = torch.compile(m, mode=self._compile_mode, dynamic=False)
        self._entered = True
        # one small eager run names and shapes the outputs
        h, w = self._input_size
        probe = torch.zeros((1, 3, h, w), dtype=self._dtype, device=self._device)
        if self._device.type == "cuda":
            probe = probe.to(memory_format=torch.channels_last)
        try:
            outs = self._forward(probe)
        except EngineError:
            raise
        except Exception as e:  # the model's own error: it does not take such a batch
            raise EngineError(f"{self._source}: the model fails on an image batch {list(probe.shape)} "
                              f"({describe(e)}); Fovea feeds it [N, 3, H, W] images of "
                              "model.input_size") from e
        names = self._output_names or tuple(f"output{i}" for i in range(len(outs)))
        if len(names) != len(outs):
            raise EngineError(f"{self._source}: the model returns {len(outs)} outputs but {len(names)} names "
                              "were given")
        self._output_names = names
        self._outputs = tuple(
            TensorSpec(n, (None, *o.shape[1:]), str(o.dtype).removeprefix("torch."))
            for n, o in zip(names, outs, strict=True)
        )
        log.info("torch engine on %s (%s, graphs=%s): outputs %s", self.device, self.input_dtype,
                 self._use_graphs, [(s.name, s.shape) for s in self._outputs])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._graphs.clear()
        self._static.clear()
        self._pools.clear()
        self._compiled = None
        self._entered = False

    @property
    def cuda_graphs_active(self) -> bool:
        """Whether inference replays CUDA graphs now (off on the CPU, or once disabled)."""
        return self._use_graphs

    def capture_graphs(self, batch: int, streams: Sequence[torch.cuda.Stream],
                       sizes: Sequence[tuple[int, int]] | None = None) -> int:
        """Capture one graph per stream and input size ``(h, w)`` in ``sizes`` (default: the
        model's input size; others need a model built with ``other_sizes``) for ``batch``
        frames, each with its own input buffer.

        Call before other threads use CUDA (see the module docstring). Afterwards
        :meth:`infer` on one of ``streams`` with a ``[batch, 3, H, W]`` input copies it
        into that stream's buffer of its size and replays the graph. Graphs of one stream
        share its memory pool; their replays are ordered on that stream. Returns the number
        of graphs captured (0 with graphs off or on the CPU).
        """
        if sizes is None:
            sizes = [self._input_size]
        if not self._entered:
            raise EngineError("TorchEngine.capture_graphs called outside 'with'")
        other = [tuple(hw) for hw in sizes if tuple(hw) != tuple(self._input_size)]
        if other and not self._other_sizes:
            raise ShapeError(f"{self._input_name}: the model takes {list(self._input_size)} images only, not "
                             f"{[list(hw) for hw in other]}")
        if not self._use_graphs:
            return 0
        if self._max_batch is not None and batch > self._max_batch:
            raise ShapeError(f"{self._input_name}: batch {batch} exceeds max_batch_size {self._max_batch}")
        captured = 0
        for h, w in sizes:
            for s in streams:
                x = torch.zeros((batch, 3, h, w), dtype=self._dtype, device=self._device)
                x = x.contiguous(memory_format=torch.channels_last)
                try:
                    # cuDNN benchmarks its algorithms for these shapes; the graph keeps the fastest
                    with self.gate.exclusive(), torch.backends.cudnn.flags(enabled=True, benchmark=True,
                                                                             benchmark_limit=0):
                        torch.cuda.synchronize(self._device)
                        t = time.monotonic()
                        g = self._capture(x, s, compiled=self._compiled is not None)
                        if self._compiled is not None and s is streams[0]:
                            log.info("torch.compile (mode %s) and capture for batch %d at %dx%d took %.1f s",
                                     self._compile_mode, batch, w, h, time.monotonic() - t)
                except (RuntimeError, getattr(torch, "AcceleratorError", RuntimeError)) as e:
                    self._capture_failed(e)
                    return 0
                with self._lock:
                    self._static[(s.cuda_stream, h, w)] = _Graph(g.graph, g.outputs, x)
                captured += 1
        torch.cuda.synchronize(self._device)
        log.info("captured %d CUDA graph(s) for batches of %d at %s (w x h)", captured, batch,
                 ", ".join(f"{w}x{h}" for h, w in sizes))
        return captured

    def close_captures(self, reason: str) -> None:
        """No captures from now on: graphs already captured keep replaying, other batches run eagerly."""
        self._captures_closed = reason
        log.info("CUDA graph captures closed (%d captured): %s", len(self._static), reason)

    def running(self) -> contextlib.AbstractContextManager[None]:
        """The gate's shared section (see :class:`Gate`): a capture waits until no caller is
        inside, so the caller's own GPU work on the outputs (postprocess) never overlaps one."""
        return self.gate.shared()

    # -- hot path -----------------------------------------------------------------------
    def infer(
        self, inputs: Mapping[str, torch.Tensor], stream: int | None = None
    ) -> dict[str, torch.Tensor]:
        if not self._entered:
            raise EngineError("TorchEngine.infer called outside 'with'")
        x = inputs.get(self._input_name)
        if x is None:
            raise EngineError(f"missing input {self._input_name!r}; got {sorted(inputs)}")
        self._check(x)
        if self._device.type != "cuda":
            with torch.inference_mode():
                outs = self._forward(x)
        else:
            s = torch.cuda.ExternalStream(stream, device=self._device) if stream \
                else torch.cuda.current_stream(self._device)
            with torch.cuda.stream(s), self.gate.shared():
                outs = self._replay(x, s) if self._use_graphs else self._eager(x)
        assert self._output_names is not None
        return dict(zip(self._output_names, outs, strict=True))

    def _check(self, x: torch.Tensor) -> None:
        h, w = self._input_size
        if x.dim() != 4 or x.shape[1] != 3 or (tuple(x.shape[2:]) != (h, w) and not self._other_sizes):
            want = "H, W" if self._other_sizes else f"{h}, {w}"
            raise ShapeError(f"{self._input_name}: expected shape (N, 3, {want}), got {tuple(x.shape)}")
        if x.dtype != self._dtype:
            raise ShapeError(f"{self._input_name}: expected dtype {self._dtype}, got {x.dtype}")
        if x.device != self._device and not (self._device.index is None and x.device.type == self._device.type):
            raise ShapeError(f"{self._input_name}: expected a tensor on {self._device}, got {x.device}")
        if self._max_batch is not None and x.shape[0] > self._max_batch:
            raise ShapeError(f"{self._input_name}: batch {x.shape[0]} exceeds max_batch_size {self._max_batch}")

    def _forward(self, x: torch.Tensor, compiled: bool = False) -> tuple[torch.Tensor, ...]:
        model = self._compiled if compiled and self._compiled is not None else self._model
        with torch.inference_mode():
            out = model(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
            return tuple(out)
        raise EngineError(f"{self._source}: the model must return a tensor or a tuple of tensors, got "
                          f"{type(out).__name__}")

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._forward(x)

    def _replay(self, x: torch.Tensor, s: torch.cuda.Stream) -> tuple[torch.Tensor, ...]:
        """Replay (capturing first if needed) the graph for this stream and input buffer.

        Thread-safe: each stream has its own cache and pool, and one caller thread per
        stream is assumed (Fovea's decode sessions each own a stream).
        """
        sg = self._static.get((s.cuda_stream, x.shape[2], x.shape[3]))
        if sg is not None and sg.input is not None and x.shape[1:] == sg.input.shape[1:] \
                and x.shape[0] <= sg.input.shape[0]:
            n, full = x.shape[0], sg.input.shape[0]
            if x.data_ptr() != sg.input.data_ptr():
                sg.input[:n].copy_(x)  # ordered on s, like the replay
            sg.graph.replay()
            if n == full:
                return sg.outputs
            # a partial batch: its rows of the batch-first outputs (rows past n hold stale work)
            return tuple(o[:n] if o.dim() > 0 and o.shape[0] == full else o for o in sg.outputs)
        if self._captures_closed is not None:
            if not self._eager_noted:
                self._eager_noted = True
                log.warning("CUDA graphs off for batches of shape %s on stream %#x (captured: %d, for other "
                            "streams or shapes); they run eagerly: %s", tuple(x.shape), s.cuda_stream,
                            len(self._static), self._captures_closed)
            return self._eager(x)
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
        with self._lock:
            cache = self._graphs.setdefault(s.cuda_stream, OrderedDict())
            g = cache.get(key)
        if g is None:
            misses = self._misses[s.cuda_stream] = self._misses.get(s.cuda_stream, 0) + 1
            if misses > 4 * self._graph_cache_size:
                log.warning(
                    "CUDA graphs disabled: input buffers keep changing address (%d captures on one "
                    "stream); running eagerly from now on", misses,
                )
                self._use_graphs = False
                with self._lock:
                    self._graphs.clear()
                return self._eager(x)
            try:
                with self.gate.exclusive():  # no other engine work while capturing
                    torch.cuda.synchronize(self._device)
                    g = self._capture(x, s)
            except (RuntimeError, getattr(torch, "AcceleratorError", RuntimeError)) as e:  # torch>=2.8
                self._capture_failed(e)
                return self._eager(x)
            with self._lock:
                cache[key] = g
                if len(cache) > self._graph_cache_size:
                    cache.popitem(last=False)
        else:
            with self._lock:
                cache.move_to_end(key)
        g.graph.replay()
        return g.outputs

    def _capture_failed(self, e: BaseException) -> None:
        """A capture raised: graphs off for good (logged once, with the reason), eager from now on."""
        log.warning("CUDA graphs disabled: capture failed (%s: %s); running eagerly from now on",
                    type(e).__name__, str(e).splitlines()[0][:200])
        self._use_graphs = False
        with self._lock:
            self._graphs.clear()
            self._static.clear()
        torch.cuda.synchronize(self._device)

    def _capture(self, x: torch.Tensor, s: torch.cuda.Stream, compiled: bool = False) -> _Graph:
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(s)
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream (TorchScript optimizes after 2 runs; compiles)
                self._forward(x, compiled)
        s.wait_stream(side)
        with self._lock:
            pool = self._pools.get(s.cuda_stream)
            if pool is None:
                pool = torch.cuda.graph_pool_handle()
                self._pools[s.cuda_stream] = pool
        graph = torch.cuda.CUDAGraph()
        # relaxed: DALI's and the other sessions' threads keep calling CUDA meanwhile
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="relaxed"):
            outs = self._forward(x, compiled)
        s.wait_stream(side)
        log.debug("captured a CUDA graph for input %#x %s", x.data_ptr(), tuple(x.shape))
        return _Graph(graph, outs)


def eval_mode(model: torch.nn.Module) -> torch.nn.Module:
    """``model.eval()``; a ``torch.export`` module refuses it (it keeps the mode it was exported in)."""
    try:
        return model.eval()
    except NotImplementedError:
        return model
