"""A seeded corpus of damaged and hostile video files, made from good H.264/HEVC/VP9 clips.

Every case is a pure function of ``(seed, index)``: the base clips are encoded
single-threaded (so the same PyAV/FFmpeg build writes the same bytes on any machine) and
each case draws its damage from ``random.Random(f"{seed}:{index}")``, so a failing case is
redone alone from the seed and the index in its file name (``0042-flip-h264.mkv``).

Damage kinds (:data:`KINDS`, dealt out round-robin in proportion to their weights):

=============  ===========================================================================
``flip``       bytes XOR-ed at random offsets in the middle 80 % of the file
``zero``       a range in the middle of the file zeroed
``truncate``   the file cut at a random offset
``drop``       whole packets' bytes cut out of the file (MPEG-TS: whole 188-byte TS packets)
``gap``        packets left out by a remux (a consistent container with frames missing)
``index``      the container's index lies: MP4 chunk offsets/sample sizes/durations, or
               Matroska's duration and cues
``resize``     the frame size changes mid-stream (two encodes remuxed into one stream)
``header``     bytes flipped in the file's first kilobyte (headers, codec setup)
``notvideo``   text, JSON, HTML, random bytes, an archive, an audio-only MP4
``empty``      a 0-byte file
=============  ===========================================================================

``Case.must_report`` says whether the job must report the file (failed or incomplete):
when nothing in it can be demuxed, when it holds frames fewer than its header's count
than rounding allows, or when the damage is one the job must notice (a lying duration, a
size change, not a video). Damage the decoder may conceal (a flipped byte inside a
frame's data) need not be reported, but then every frame must come out.

Write a corpus to look at: ``python -m tests.pipelines.fuzz_corpus OUT --seed 31 --cases 240``.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av

from tests.media import render

DEFAULT_SEED = 31
DEFAULT_CASES = 240


@dataclass(frozen=True)
class Base:
    """A good clip the cases are made from.

    ``counted``: its header announces a frame count (``slack``: how many frames short of it
    a file may hold unnoticed: 0 for MP4's sample table, 2 for a Matroska duration); MPEG-TS
    and fragmented MP4 announce none, so a shorter file cannot be told from a short one.
    """

    name: str
    encoder: str
    width: int
    height: int
    frames: int
    options: dict[str, str]
    container_options: dict[str, str] = field(default_factory=dict)
    counted: bool = True
    slack: int = 0

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def container(self) -> str:
        return {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".ts": "mpegts"}[self.suffix]


_X264 = {"threads": "1", "g": "8", "bf": "2"}
_X265 = {"x265-params": "log-level=error:keyint=8:bframes=2:pools=none:frame-threads=1"}
_VP9 = {"threads": "1", "g": "8", "deadline": "realtime", "cpu-used": "8"}

BASES: tuple[Base, ...] = (
    Base("h264.mp4", "libx264", 160, 120, 24, _X264),
    Base("h264-faststart.mp4", "libx264", 128, 96, 20, _X264, {"movflags": "faststart"}),
    Base("h264.mkv", "libx264", 112, 64, 24, _X264, slack=2),
    Base("h264.ts", "libx264", 96, 72, 24, _X264, counted=False),
    Base("h264-frag.mp4", "libx264", 96, 64, 20, _X264, {"movflags": "frag_keyframe+empty_moov"}, counted=False),
    Base("hevc.mp4", "libx265", 128, 72, 20, _X265),
    Base("hevc.mkv", "libx265", 64, 48, 16, _X265, slack=2),
    Base("vp9.webm", "libvpx-vp9", 96, 64, 20, _VP9, slack=2),
    Base("vp9-b.webm", "libvpx-vp9", 144, 96, 16, _VP9, slack=2),
)
_BASE = {b.name: b for b in BASES}


@dataclass(frozen=True)
class Case:
    """One damaged file: ``name`` in the corpus folder, the damage in words (``detail``:
    offsets and lengths, enough to redo it by hand), and whether the job must report it."""

    index: int
    name: str
    kind: str
    base: str | None
    detail: str
    must_report: bool
    base_frames: int = 0


_BITEXACT = {"fflags": "+bitexact"}  # no random segment ids or muxer versions in the files


def write_base(folder: Path, base: Base) -> Path:
    """Encode ``base`` into ``folder`` (single-threaded, bit-exact: the same bytes on every machine)."""
    return encode(folder / base.name, base.encoder, base.width, base.height, base.frames, base.options,
                  base.container_options)


class _Sequential:
    """A write-only, non-seekable output: the bytes in the order a recorder writes them (no
    header fixed up at the end, e.g. no Matroska duration)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False


def encode(path: Path, encoder: str, width: int, height: int, frames: int, options: dict[str, str],
           container_options: dict[str, str] | None = None, sequential: bool = False) -> Path:
    """:func:`tests.media.write_clip`'s moving square, written reproducibly; ``sequential``:
    as written to a pipe (the container cannot go back to fill in its header)."""
    out = _Sequential() if sequential else None
    fmt = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".ts": "mpegts"}[path.suffix]
    with av.open(out or str(path), "w", format=fmt, options={**_BITEXACT, **(container_options or {})}) as c:
        s = c.add_stream(encoder, rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"flags": "+bitexact", **options}
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(render(i, width, height), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    if out is not None:
        path.write_bytes(b"".join(out.parts))
    return path


def write_bases(folder: Path) -> dict[str, Path]:
    """Every base clip, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {b.name: write_base(folder, b) for b in BASES}


# -- what a file holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Packet:
    pos: int
    size: int
    keyframe: bool


def _packets(path: Path) -> list[_Packet]:
    with av.open(str(path)) as c:
        return [_Packet(int(p.pos), int(p.size), bool(p.is_keyframe))
                for p in c.demux(c.streams.video[0]) if p.size and p.pos is not None and p.pos >= 0]


def held_frames(path: Path) -> int:
    """Packets with a pts PyAV demuxes from ``path`` before the end or the first error (0:
    it does not open, or has no video): what the job's probe counts."""
    n = 0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return 0
            for p in c.demux(c.streams.video[0]):
                if p.size and p.pts is not None:
                    n += 1
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return 0
    return n


def _lost_frames_noticed(path: Path, base: Base) -> bool:
    """Whether the job must notice what ``path`` lost: nothing demuxes, or its header
    (which the damage left alone) announces more frames than it holds beyond rounding."""
    held = held_frames(path)
    return held == 0 or (base.counted and base.frames - held > base.slack)


# -- the damage ----------------------------------------------------------------------------------
Damage = Callable[[bytes, random.Random, Base, Path], tuple[bytes, str, bool | None]]
# returns (new bytes, detail, must_report); None: decide from what the file still holds


def _middle(data: bytes, rng: random.Random) -> int:
    n = len(data)
    return rng.randrange(n // 10, max(n // 10 + 1, n * 9 // 10))


def _flip(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    out = bytearray(data)
    spots = sorted(_middle(data, rng) for _ in range(rng.randint(1, 16)))
    for i in spots:
        out[i] ^= rng.randrange(1, 256)
    return bytes(out), f"{len(spots)} bytes flipped at {spots}", False


def _zero(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    start = _middle(data, rng)
    length = rng.randint(16, max(16, len(data) // 4))
    end = min(len(data), start + length)
    return data[:start] + bytes(end - start) + data[end:], f"bytes {start}-{end} zeroed", False


def _truncate(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    cut = rng.randrange(1, len(data))
    return data[:cut], f"cut at byte {cut} of {len(data)}", None


def _drop(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    if base.container == "mpegts":  # whole TS packets lost, as on a lossy network
        count = len(data) // 188
        lost = sorted(rng.sample(range(3, count), min(count - 3, rng.randint(1, 8))))
        out = b"".join(data[i * 188:(i + 1) * 188] for i in range(count) if i not in set(lost))
        return out, f"TS packets {lost} (188 bytes each) removed", None
    pk = [p for p in _packets(src)[1:] if p.pos + p.size <= len(data)]
    gone = sorted(rng.sample(pk, min(len(pk), rng.randint(1, 4))), key=lambda p: p.pos)
    out, at = bytearray(), 0
    for p in gone:
        out += data[at:p.pos]
        at = max(at, p.pos + p.size)
    out += data[at:]
    return bytes(out), "packet bytes removed: " + ", ".join(f"{p.pos}+{p.size}" for p in gone), None


def _gap(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    """Remux without some packets: the container is consistent, frames are missing; only a
    Matroska duration (kept by the last packet) still tells."""
    import io

    with av.open(str(src)) as ic:
        packets = [p for p in ic.demux(ic.streams.video[0]) if p.size]
        n = len(packets)
        k = rng.randint(1, max(1, n // 4))
        skip = set(rng.sample(range(1, n - 1), min(k, n - 2)))  # keep the first and the last
        buf = io.BytesIO()
        with av.open(buf, "w", format=base.container, options=_BITEXACT) as oc:
            s = oc.add_stream_from_template(ic.streams.video[0])
            for i, p in enumerate(packets):
                if i not in skip:
                    p.stream = s
                    oc.mux(p)
    must = base.container in ("matroska", "webm") and len(skip) > base.slack
    return buf.getvalue(), f"packets {sorted(skip)} of {n} left out (remuxed)", must


# MP4 boxes ---------------------------------------------------------------------------------
_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"moof", b"traf", b"mvex"}


def _mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int, int]]:
    """(type, start, payload start, end) of every box below ``start..end``, depth first."""
    end = len(data) if end is None else end
    out: list[tuple[bytes, int, int, int]] = []
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos:pos + 4], "big")
        typ = data[pos + 4:pos + 8]
        hdr = 8
        if size == 1:
            size, hdr = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < hdr or pos + size > end:
            break
        out.append((typ, pos, pos + hdr, pos + size))
        if typ in _MP4_CONTAINERS:
            out += _mp4_boxes(data, pos + hdr, pos + size)
        pos += size
    return out


def _mp4_box(data: bytes, typ: bytes) -> tuple[int, int] | None:
    for t, _, payload, end in _mp4_boxes(data):
        if t == typ:
            return payload, end
    return None


def _index_mp4(data: bytes, rng: random.Random, base: Base) -> tuple[bytes, str, bool | None]:
    out = bytearray(data)
    stco, stsz, mdhd = _mp4_box(data, b"stco"), _mp4_box(data, b"stsz"), _mp4_box(data, b"mdhd")
    assert stco and stsz and mdhd, f"{base.name}: no sample table"
    n_chunks = int.from_bytes(data[stco[0] + 4:stco[0] + 8], "big")
    sizes_at, n_samples = stsz[0] + 12, int.from_bytes(data[stsz[0] + 8:stsz[0] + 12], "big")
    variant = rng.choice(["offsets-shifted", "offsets-past-end", "sizes-permuted", "size-huge", "duration-x10"])
    if variant == "offsets-shifted":
        chosen = sorted(rng.sample(range(n_chunks), rng.randint(1, n_chunks)))
        delta = rng.choice([-1, 1]) * rng.randint(1, 64)
        for c in chosen:
            at = stco[0] + 8 + 4 * c
            struct.pack_into(">I", out, at, max(0, int.from_bytes(data[at:at + 4], "big") + delta))
        return bytes(out), f"mp4 chunk offsets {chosen} moved by {delta}", None
    if variant == "offsets-past-end":
        k = rng.randint(1, min(3, n_chunks))
        for c in range(n_chunks - k, n_chunks):
            struct.pack_into(">I", out, stco[0] + 8 + 4 * c, len(data) + rng.randint(0, 1 << 20))
        return bytes(out), f"mp4 last {k} of {n_chunks} chunk offsets point past the end", None
    if variant == "sizes-permuted":
        a = rng.randrange(0, n_samples - 1)
        b = rng.randrange(a + 1, min(n_samples, a + 8) + 1)
        sizes = [out[sizes_at + 4 * i:sizes_at + 4 * i + 4] for i in range(a, b)]
        rng.shuffle(sizes)
        for j, s in enumerate(sizes):
            out[sizes_at + 4 * (a + j):sizes_at + 4 * (a + j) + 4] = s
        return bytes(out), f"mp4 sample sizes {a}-{b - 1} permuted", False
    if variant == "size-huge":
        i = rng.randrange(n_samples)
        struct.pack_into(">I", out, sizes_at + 4 * i, rng.randint(1 << 16, 1 << 30))
        return bytes(out), f"mp4 sample {i} size set huge", None
    version = data[mdhd[0]]
    at = mdhd[0] + (24 if version == 1 else 16)
    width = 8 if version == 1 else 4
    value = int.from_bytes(data[at:at + width], "big") * 10
    out[at:at + width] = min(value, (1 << (8 * width)) - 1).to_bytes(width, "big")
    return bytes(out), "mp4 media duration x10 (the sample table still counts the frames)", False


def _ebml_find(data: bytes, element: bytes, start: int = 0) -> int:
    return data.find(element, start)


def _index_mkv(data: bytes, rng: random.Random, base: Base) -> tuple[bytes, str, bool | None]:
    out = bytearray(data)
    info = _ebml_find(data, b"\x15\x49\xa9\x66")
    at = _ebml_find(data, b"\x44\x89", info) if info >= 0 else -1
    cues = data.rfind(b"\x1c\x53\xbb\x6b")
    variant = rng.choice(["duration-up", "duration-down", *(["cues-moved"] if cues >= 0 else [])])
    if variant.startswith("duration"):
        assert at >= 0, f"{base.name}: no Duration element"
        size = data[at + 2] & 0x7F
        fmt = ">d" if size == 8 else ">f"
        (value,) = struct.unpack_from(fmt, data, at + 3)
        factor = rng.uniform(2.0, 6.0) if variant == "duration-up" else 1 / rng.uniform(2.0, 4.0)
        struct.pack_into(fmt, out, at + 3, value * factor)
        return bytes(out), f"matroska duration x{factor:.2f}", variant == "duration-up"
    moved = 0
    delta = rng.randint(1, 4096)
    pos = cues
    while (pos := data.find(b"\xf1", pos + 1)) >= 0 and pos + 2 < len(data):
        size_byte = data[pos + 1]
        if not 0x81 <= size_byte <= 0x88:
            continue
        n = size_byte & 0x7F
        value = int.from_bytes(data[pos + 2:pos + 2 + n], "big") + delta
        if value < 1 << (8 * n):
            out[pos + 2:pos + 2 + n] = value.to_bytes(n, "big")
            moved += 1
    return bytes(out), f"matroska cue cluster positions (+{delta}) in {moved} places", False


def _index(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    if base.container == "mp4" and base.counted:
        return _index_mp4(data, rng, base)
    if base.container in ("matroska", "webm"):
        return _index_mkv(data, rng, base)
    return _flip(data, rng, base, src)  # no index to lie with: plain damage instead


def _header(data: bytes, rng: random.Random, base: Base, src: Path) -> tuple[bytes, str, bool | None]:
    out = bytearray(data)
    spots = sorted({rng.randrange(0, min(1024, len(data))) for _ in range(rng.randint(1, 4))})
    for i in spots:
        out[i] ^= rng.randrange(1, 256)
    return bytes(out), f"header bytes flipped at {spots}", False


DAMAGE: dict[str, Damage] = {
    "flip": _flip, "zero": _zero, "truncate": _truncate, "drop": _drop, "gap": _gap, "index": _index,
    "header": _header,
}
# kind: weight (how many of every 48 cases)
KINDS: dict[str, int] = {"flip": 8, "zero": 6, "truncate": 8, "drop": 6, "gap": 3, "index": 6, "header": 3,
                         "resize": 2, "notvideo": 4, "empty": 2}


def _kind_order() -> list[str]:
    """Kinds interleaved by weight (smooth weighted round-robin): any stretch of cases mixes them."""
    total = sum(KINDS.values())
    credit = dict.fromkeys(KINDS, 0)
    order: list[str] = []
    for _ in range(total):
        for k, w in KINDS.items():
            credit[k] += w
        best = max(credit, key=lambda k: credit[k])
        credit[best] -= total
        order.append(best)
    return order


# -- not a video, and the size change --------------------------------------------------------
def _not_video(rng: random.Random, folder: Path, stem: str) -> tuple[str, bytes, str]:
    variant = rng.choice(["text", "json", "html", "random", "zip", "audio"])
    if variant == "text":
        return f"{stem}.mp4", b"these are meeting notes, not a video\n" * rng.randint(1, 50), "a text file"
    if variant == "json":
        return f"{stem}.mkv", json.dumps({"frames": list(range(rng.randint(1, 99)))}).encode(), "a JSON file"
    if variant == "html":
        return f"{stem}.webm", b"<!doctype html><title>404</title><p>not found</p>\n", "an HTML error page"
    if variant == "random":
        return f"{stem}.ts", rng.randbytes(rng.randint(1, 64 << 10)), "random bytes"
    if variant == "zip":
        return f"{stem}.mov", b"PK\x03\x04" + rng.randbytes(2048), "a ZIP archive"
    import io

    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options=_BITEXACT) as c:
        s = c.add_stream("aac", rate=16000)
        t = np.arange(16000 * 2 // 5, dtype=np.float32) / 16000
        samples = (0.1 * np.sin(2 * np.pi * rng.randint(200, 900) * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return f"{stem}.mp4", buf.getvalue(), "an audio-only MP4 (no video stream)"


_RESIZE = (("h264.ts", "libx264", _X264), ("hevc.ts", "libx265", _X265), ("vp9.webm", "libvpx-vp9", _VP9))


def _resize(rng: random.Random, scratch: Path, stem: str) -> tuple[str, bytes, str, int]:
    name, encoder, opts = rng.choice(_RESIZE)
    suffix = Path(name).suffix
    sizes = rng.sample([(64, 48), (96, 64), (128, 96), (160, 120)], 2)
    counts = [rng.randint(8, 16), rng.randint(8, 16)]
    data = resized_stream(scratch, stem, encoder, suffix, sizes, counts, opts)
    detail = f"{sizes[0][0]}x{sizes[0][1]} for {counts[0]} frames, then {sizes[1][0]}x{sizes[1][1]} for {counts[1]}"
    return f"{stem}{suffix}", data, detail, sum(counts)


def resized_stream(scratch: Path, stem: str, encoder: str, suffix: str, sizes: list[tuple[int, int]],
                   counts: list[int], options: dict[str, str] | None = None) -> bytes:
    """Encodes of ``sizes`` (``counts`` frames each), the later ones' packets muxed after the
    first's into one stream (``suffix`` ``.ts`` or ``.webm``; each part carries its own
    parameter sets, as a camera that changes resolution does)."""
    import io

    opts = options if options is not None else {e: o for _, e, o in _RESIZE}[encoder]
    parts = [encode(scratch / f"{stem}-{i}{suffix}", encoder, w, h, n, opts)
             for i, ((w, h), n) in enumerate(zip(sizes, counts, strict=True))]
    fmt = "mpegts" if suffix == ".ts" else "webm"
    buf = io.BytesIO()
    with av.open(str(parts[0])) as first, av.open(buf, "w", format=fmt, options=_BITEXACT) as out:
        s = out.add_stream_from_template(first.streams.video[0])
        shift = 0
        for part in parts:
            with av.open(str(part)) as ic:
                last = 0
                for p in ic.demux(ic.streams.video[0]):
                    if not p.size or p.pts is None:
                        continue
                    step = p.duration or 1
                    last = max(last, p.pts + step)
                    p.pts += shift
                    if p.dts is not None:
                        p.dts += shift
                    p.stream = s
                    out.mux(p)
                shift += last + 1
    for part in parts:
        part.unlink()
    return buf.getvalue()


# -- the corpus ----------------------------------------------------------------------------------
def make_case(folder: Path, bases: dict[str, Path], seed: int, index: int) -> Case:
    """Write case ``index`` of the corpus ``seed`` into ``folder``."""
    order = _kind_order()
    kind = order[index % len(order)]
    rng = random.Random(f"{seed}:{index}")
    stem = f"{index:04d}-{kind}"
    if kind == "empty":
        name = f"{stem}{rng.choice(['.mp4', '.mkv', '.webm', '.ts'])}"
        (folder / name).write_bytes(b"")
        return Case(index, name, kind, None, "0 bytes", True)
    if kind == "notvideo":
        name, data, detail = _not_video(rng, folder, stem)
        (folder / name).write_bytes(data)
        return Case(index, name, kind, None, detail, True)
    if kind == "resize":
        name, data, detail, frames = _resize(rng, folder, stem)
        (folder / name).write_bytes(data)
        return Case(index, name, kind, None, detail, True, frames)
    base = rng.choice(BASES)
    src = bases[base.name]
    data, detail, must = DAMAGE[kind](src.read_bytes(), rng, base, src)
    name = f"{stem}-{base.name}"
    path = folder / name
    path.write_bytes(data)
    if must is None:
        must = _lost_frames_noticed(path, base)
    return Case(index, name, kind, base.name, detail, must, base.frames)


def make_corpus(folder: Path, bases: dict[str, Path], seed: int = DEFAULT_SEED,
                cases: int = DEFAULT_CASES) -> list[Case]:
    """Cases ``0..cases-1`` of the corpus ``seed``, written into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make_case(folder, bases, seed, i) for i in range(cases)]


def main(argv: list[str] | None = None) -> int:
    """Write the base clips (``OUT/good``) and the corpus (``OUT/bad``) with a manifest."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--cases", type=int, default=DEFAULT_CASES)
    args = p.parse_args(argv)
    bases = write_bases(args.out / "good")
    corpus = make_corpus(args.out / "bad", bases, args.seed, args.cases)
    (args.out / "manifest.json").write_text(json.dumps([asdict(c) for c in corpus], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
