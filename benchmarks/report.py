"""Benchmark results -> ``bench.json`` (raw figures), ``bench.md`` (tables) and ``bench.png`` (chart).

Per codec the report gives every measurement (fps, frames, seconds, NVDEC/GPU/CPU
utilisation) and the ratios the issue sets targets for:

* ``e2e / min(decode ceiling, engine ceiling) >= 0.90`` (:data:`TARGET_CEILING`),
* ``e2e / (PyAV + torch FP32) >= 10`` (:data:`TARGET_BASELINE`),

plus ``e2e`` over each other baseline (no target), and the steady end-to-end rate (records
between 10 % and 90 % of the frames: without the job's start-up and tail) over the ceiling,
also without a target. The job's fixed cost, its seconds beyond what its frames take at the
steady rate (the readers' start, the sessions' uneven finish), is reported in seconds: a job
of ``T`` seconds at the steady rate ``S`` makes ``S x T / (T + fixed)``, so the ratio of a
shorter or longer job can be judged from one run. A ratio whose inputs were not measured
is ``None`` ("n/a"), and so is its pass/fail.

Usage::

    paths = write_report(results, Path("bench-out"))    # {"json": ..., "md": ..., "png": ...}
    summary = summarize(results)["h264"]                # CodecSummary
    python -m benchmarks.report bench-out/bench.json    # re-render md/png from a JSON file
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.results import BASELINES, LABELS, NAMES, BenchResults, Measurement

log = logging.getLogger(__name__)

TARGET_CEILING = 0.90
TARGET_BASELINE = 10.0
CODEC_TITLES = {"h264": "H.264", "hevc": "HEVC"}


@dataclass(frozen=True)
class CodecSummary:
    """The figures and ratios of one codec's section."""

    codec: str
    e2e_fps: float | None
    decode_fps: float | None
    engine_fps: float | None
    ceiling_fps: float | None  # min(decode, engine)
    ratio_ceiling: float | None  # e2e / ceiling
    pass_ceiling: bool | None
    ratio_baseline: float | None  # e2e / pyav_fp32
    pass_baseline: bool | None
    ratios: dict[str, float | None] = field(default_factory=dict)  # e2e / each baseline
    steady_fps: float | None = None  # e2e between 10 % and 90 % of the frames
    ratio_ceiling_steady: float | None = None  # steady / ceiling (no target)
    fixed_seconds: float | None = None  # e2e seconds beyond frames / steady_fps (start-up + tail)
    e2e_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fps(m: Measurement | None) -> float | None:
    return m.fps if m is not None and m.ok and m.fps else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_codec(results: BenchResults, codec: str) -> CodecSummary:
    """Ratios and pass/fail of ``codec`` (see the module docstring)."""
    e2e_m = results.get("e2e", codec)
    e2e = _fps(e2e_m)
    run = e2e_m if e2e is not None else None  # the end-to-end measurement, when it made a rate
    steady = run.extra.get("steady_fps") if run is not None else None
    decode = _fps(results.get("decode", codec))
    engine = _fps(results.get("engine", codec))
    ceiling = min(decode, engine) if decode is not None and engine is not None else None
    r_ceiling = _ratio(e2e, ceiling)
    ratios = {b: _ratio(e2e, _fps(results.get(b, codec))) for b in BASELINES}
    r_base = ratios["pyav_fp32"]
    fixed = run.seconds - run.frames / steady if run is not None and steady else None
    return CodecSummary(
        codec=codec, e2e_fps=e2e, decode_fps=decode, engine_fps=engine, ceiling_fps=ceiling,
        ratio_ceiling=r_ceiling, pass_ceiling=None if r_ceiling is None else r_ceiling >= TARGET_CEILING,
        ratio_baseline=r_base, pass_baseline=None if r_base is None else r_base >= TARGET_BASELINE,
        ratios=ratios, steady_fps=steady, ratio_ceiling_steady=_ratio(steady, ceiling),
        fixed_seconds=fixed, e2e_seconds=run.seconds if run is not None else None,
    )


def summarize(results: BenchResults) -> dict[str, CodecSummary]:
    return {c: summarize_codec(results, c) for c in results.codecs}


def targets_met(results: BenchResults) -> bool:
    """Every codec passes both targets (an unmeasured target does not pass)."""
    return all(s.pass_ceiling is True and s.pass_baseline is True for s in summarize(results).values())


# ---------------------------------------------------------------------------------------
# JSON


def to_json(results: BenchResults) -> dict[str, Any]:
    doc = results.to_dict()
    doc["summary"] = {c: s.to_dict() for c, s in summarize(results).items()}
    doc["targets"] = {"e2e_over_ceiling": TARGET_CEILING, "e2e_over_pyav_fp32": TARGET_BASELINE}
    return doc


def write_json(results: BenchResults, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(results), indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------
# Markdown


def _num(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}x"


def _pair(mean: float | None, peak: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.0f} / {_num(peak)}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def _note(m: Measurement) -> str:
    x = m.extra
    if m.skipped:
        return f"skipped: {m.skipped}"
    if m.error:
        return f"error: {m.error[:160]}"
    if m.name == "decode":
        sweep = ", ".join(f"{s['sessions']}: {s['fps']:,.0f}" for s in x.get("sweep", []))
        return f"best of sessions sweep ({sweep})"
    if m.name == "source":
        return f"{x.get('sessions')} sessions, batch {x.get('batch')}, {x.get('dtype')} {x.get('layout')}"
    if m.name == "engine":
        by = ", ".join(f"{k} stream(s): {v:,.0f}" for k, v in x.get("fps_by_streams", {}).items())
        return (f"{x.get('engine')} {x.get('precision')}, batch {x.get('batch')}, graphs {x.get('cuda_graphs')}; "
                f"{by}; + postprocess: {x.get('with_postprocess_fps', 0):,.0f}")
    if m.name == "e2e":
        ok = "all frames in JSONL" if x.get("frames_ok") else (
            f"FRAME MISMATCH: {x.get('jsonl_records')} records, {x.get('expected_frames')} expected")
        graphs = "; CUDA graphs disabled" if x.get("cuda_graphs_disabled") else ""
        steady = f", steady {x['steady_fps']:,.0f} fps" if x.get("steady_fps") else ""
        spans = ""
        if x.get("session_first_batch_s") and x.get("session_finished_s"):
            (a, b), (c, d) = x["session_first_batch_s"], x["session_finished_s"]
            spans = f"; sessions' first batches after {a:.2f}-{b:.2f} s, finished after {c:.2f}-{d:.2f} s"
        return (f"{x.get('sessions')} sessions, {x.get('files')} files, batch {x.get('batch')}, "
                f"{x.get('detections_per_frame')} det/frame{steady}{spans}; {ok}{graphs}")
    return f"batch {x.get('batch')}, {x.get('detections_per_frame')} det/frame"


def _section(results: BenchResults, codec: str) -> list[str]:
    title = CODEC_TITLES.get(codec, codec)
    clips = results.clips.get(codec, [])
    work = results.workload.get(codec, {})
    lines = [f"## {title}", ""]
    if clips:
        c0 = clips[0]
        gops = sorted({round(float(c["gop"])) for c in clips})
        rate = sum(float(c["bitrate_kbps"]) for c in clips) / len(clips) / 1000
        bfr = "with B-frames" if any(c.get("reordered") for c in clips) else "no B-frames"
        lines.append(f"Inputs: {len(clips)} clips, {c0['width']}x{c0['height']}, "
                     f"{sum(int(c['frames']) for c in clips):,} frames, GOP {'/'.join(map(str, gops))}, {bfr}, "
                     f"{rate:.1f} Mb/s mean; workload: looped x{work.get('loops', 1)} = "
                     f"{int(work.get('frames', 0)):,} frames.")
        lines.append("")
    lines += ["| measurement | fps | frames | s | NVDEC % mean / max | GPU % mean / max | CPU % mean / max | notes |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in NAMES:
        m = results.get(name, codec)
        if m is None:
            continue
        u = m.util
        label = f"**{LABELS[name]}**" if name == "e2e" else LABELS[name]
        fps = _num(m.fps) if m.ok else ("skipped" if m.skipped else "error")
        lines.append(
            f"| {label} | {fps} | {m.frames:,} | {m.seconds:.1f} | "
            f"{_pair(u.nvdec_util_mean, u.nvdec_util_max) if u else 'n/a'} | "
            f"{_pair(u.gpu_util_mean, u.gpu_util_max) if u else 'n/a'} | "
            f"{_pair(u.cpu_util_mean, u.cpu_util_max) if u else 'n/a'} | {_note(m)} |"
        )
    s = summarize_codec(results, codec)
    lines += ["", "| ratio | value | target | result |", "|---|---:|---:|---|",
              f"| end to end / min(decode ceiling, engine ceiling) | {_num(s.ratio_ceiling, 3)} | "
              f">= {TARGET_CEILING:.2f} | {_verdict(s.pass_ceiling)} |",
              f"| steady end to end (10-90 % of the frames: no start-up, no tail) / min(ceilings) | "
              f"{_num(s.ratio_ceiling_steady, 3)} | | |",
              f"| the job's start-up and tail: seconds beyond its frames at the steady rate (of "
              f"{_num(s.e2e_seconds, 1)} s) | {_num(s.fixed_seconds, 2)} | | |",
              f"| end to end / PyAV + torch FP32 | {_times(s.ratio_baseline)} | >= {TARGET_BASELINE:.0f}x | "
              f"{_verdict(s.pass_baseline)} |"]
    for b in BASELINES[1:]:
        lines.append(f"| end to end / {LABELS[b].removeprefix('Baseline: ')} | {_times(s.ratios.get(b))} | | |")
    lines.append("")
    return lines


def to_markdown(results: BenchResults) -> str:
    env, cfg = results.environment, results.config
    gpu = env.get("gpu_name") or "no GPU"
    drv = f", driver {env['driver']}" if env.get("driver") else ""
    commit = (env.get("commit") or "unknown")[:12] + (" (dirty)" if env.get("dirty") else "")
    lines = [
        "# Fovea throughput benchmark", "",
        f"- {gpu}{drv}, CUDA {env.get('cuda_driver') or env.get('torch_cuda') or 'n/a'}; "
        f"{env.get('cpu_count')} CPU cores; torch {env.get('torch')}, DALI {env.get('dali')}, PyAV {env.get('pyav')}",
        f"- commit {commit}, {env.get('date')}; `{env.get('command', '')}`",
        f"- model: {cfg.get('model_description', cfg.get('model'))}; batch {cfg.get('batch')}, "
        f"{cfg.get('precision')} on {cfg.get('device')}; {cfg.get('seconds')} s per ceiling and baseline"
        + (f", end-to-end workload sized for {cfg['job_seconds']} s" if cfg.get("job_seconds") else "")
        + (" (quick)" if cfg.get("quick") else ""),
        "- utilisation columns: mean / max of 0.2 s NVML samples (n/a without NVML); CPU is the whole machine",
        "",
    ]
    for codec in results.codecs:
        lines += _section(results, codec)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# PNG


def to_png(results: BenchResults, path: Path) -> Path | None:
    """A bar chart of fps per measurement, one panel per codec; ``None`` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    codecs = results.codecs
    fig = Figure(figsize=(11, 1.0 + 3.2 * max(1, len(codecs))))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(codecs)), 1, squeeze=False)[:, 0]
    colors = {"decode": "#4c72b0", "source": "#64b5cd", "engine": "#8172b2", "e2e": "#2ca02c"}
    for ax, codec in zip(axes, codecs, strict=False):
        rows = [(LABELS[n], m) for n in NAMES if (m := results.get(n, codec)) is not None]
        labels = [label for label, _ in rows]
        values = [m.fps if m.ok and m.fps else 0.0 for _, m in rows]
        ys = list(range(len(rows)))[::-1]
        ax.barh(ys, values, color=[colors.get(m.name, "#c44e52") for _, m in rows])
        ax.set_yticks(ys, labels, fontsize=8)
        top = max([*values, 1.0])
        for y, (_, m), v in zip(ys, rows, values, strict=True):
            text = f"{v:,.0f}" if m.ok else ("skipped" if m.skipped else "error")
            ax.text(v + top * 0.01, y, text, va="center", fontsize=8)
        s = summarize_codec(results, codec)
        if s.ceiling_fps:
            ax.axvline(s.ceiling_fps * TARGET_CEILING, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel("frames per second")
        ratio = "n/a" if s.ratio_ceiling is None else f"{s.ratio_ceiling:.2f}"
        base = _times(s.ratio_baseline)
        ax.set_title(f"{CODEC_TITLES.get(codec, codec)}: end to end / ceiling {ratio} (target "
                     f"{TARGET_CEILING:.2f}, dashed), / PyAV+FP32 {base} (target {TARGET_BASELINE:.0f}x)", fontsize=9)
    gpu = results.environment.get("gpu_name") or "CPU"
    fig.suptitle(f"Fovea throughput — {gpu}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=110)
    return path


def write_report(results: BenchResults, out_dir: Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and (with matplotlib) ``bench.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(results, out_dir / "bench.json")}
    md = out_dir / "bench.md"
    md.write_text(to_markdown(results) + "\n")
    paths["md"] = md
    png = to_png(results, out_dir / "bench.png")
    if png is not None:
        paths["png"] = png
    return paths


def load(path: Path) -> BenchResults:
    return BenchResults.from_dict(json.loads(Path(path).read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.report bench.json [--out DIR]``: re-render the Markdown and the chart."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path, help="folder for bench.md/bench.png (default: the JSON's folder)")
    args = p.parse_args(argv)
    results = load(args.json)
    out = args.out or args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(to_markdown(results) + "\n")
    to_png(results, out / "bench.png")
    sys.stdout.write(to_markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
