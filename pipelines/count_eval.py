"""Line and zone counts of a job against the exact counts of tracking ground truth.

The truth is the ``"tracking"`` entry of a clip's ``.gt.json``
(:mod:`streams.synthetic.counting`: the analytics stage's rules applied to the objects'
exact paths). What the job counted comes from the analytics stage's report (the job
summary's ``stages["AnalyticsStage"]``: :func:`counts_from_report`) or from its event
records (``line_cross``/``zone_enter``/``zone_exit``, in a JSONL file or on
``FrameResult.events``: :func:`counts_from_events`). Both give, per source::

    {"line_counts": {"line": {"in": {"circle": 2}, "out": {}}},
     "zone_counts": {"zone": {"enters": {"square": 1}, "exits": {"square": 1}}},
     "zone_visits": [{"zone": "zone", "track_id": 7, "class": "square", "enter_frame": 31,
                      "exit_frame": 76, "dwell_s": 1.5}, ...]}

:func:`compare_counts` lists every count (per source, line and direction, or zone and
enters/exits, and class) as got vs. truth, and per zone the dwell times' mean absolute
error in seconds. Dwells are compared visit by visit: a job's visit is paired with a true
visit of the same zone and class whose enter and end times (enter + dwell) are both
within ``max_offset_s`` (closest first); visits left without a partner are counted, not guessed.

Usage::

    got = counts_from_report(summary.stages["AnalyticsStage"])
    report = compare_counts(got, load_ground_truth_dir("clips/"))
    report.exact, report.to_markdown()
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.events import Event

SourceCounts = dict[str, Any]


@dataclass(frozen=True)
class CountRow:
    """One count: ``kind`` is ``line`` (``key`` ``in``/``out``) or ``zone`` (``enters``/``exits``)."""

    source: str
    kind: str
    name: str
    key: str
    class_name: str
    got: int
    truth: int


@dataclass(frozen=True)
class DwellRow:
    """One zone's dwell times: ``paired`` visits (job vs. truth), their mean absolute error
    (``None`` when none paired), and the visits of either side left unpaired."""

    source: str
    zone: str
    paired: int
    mae_s: float | None
    unpaired_truth: int
    unpaired_got: int


@dataclass(frozen=True)
class CountsReport:
    """Result of :func:`compare_counts`. ``exact``: every count equals the truth."""

    counts: list[CountRow]
    dwells: list[DwellRow]

    @property
    def exact(self) -> bool:
        return all(r.got == r.truth for r in self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "counts": [asdict(r) for r in self.counts],
                "dwells": [asdict(d) for d in self.dwells]}

    def to_markdown(self) -> str:
        """Two tables: every count (got vs. truth) and each zone's dwell error."""
        lines = ["| source | line / zone | direction / event | class | got | truth | |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.source} | {r.kind} {r.name} | {r.key} | {r.class_name} | {r.got} | {r.truth} | "
                  f"{'ok' if r.got == r.truth else 'DIFF'} |" for r in self.counts]
        if not self.counts:
            lines.append("| (no lines or zones) | | | | | | |")
        if self.dwells:
            lines += ["", "| source | zone | visits paired | dwell MAE (s) | unpaired truth / got |",
                      "|---|---|---|---|---|"]
            lines += [f"| {d.source} | {d.zone} | {d.paired} | {'n/a' if d.mae_s is None else f'{d.mae_s:.3f}'} | "
                      f"{d.unpaired_truth} / {d.unpaired_got} |" for d in self.dwells]
        return "\n".join(lines) + "\n"


def analytics_section(ground_truth: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ``analytics:`` section (raw, as in a job YAML) that counts on each source the
    lines and zones of its ground truth, in pixels with the truth's hysteresis; ``None``
    when no source's ground truth has any."""
    sources: dict[str, Any] = {}
    for sid, gt in ground_truth.items():
        truth = gt.get("tracking") or {}
        entry = {
            "lines": [{"name": ln["name"], "points": [ln["start"], ln["end"]], "min_distance": ln["min_distance"]}
                      for ln in truth.get("lines", [])],
            "zones": [{"name": z["name"], "points": z["polygon"], "min_distance": z["min_distance"]}
                      for z in truth.get("zones", [])],
        }
        if entry["lines"] or entry["zones"]:
            sources[sid] = {k: v for k, v in entry.items() if v}
    return {"anchor": "bottom_center", "sources": sources} if sources else None


def load_events_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The event records (``{"event": ...}``) of a JSONL file, in file order."""
    out = []
    with open(Path(path).expanduser(), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                if isinstance(record, dict) and "event" in record:
                    out.append(record)
    return out


def counts_from_report(report: Mapping[str, Any]) -> dict[str, SourceCounts]:
    """Per source, the counts and visits of an analytics stage's report (``AnalyticsStage.report()``)."""
    out: dict[str, SourceCounts] = {}
    for sid, rep in report.get("sources", {}).items():
        out[sid] = {
            "line_counts": {name: {d: dict(c.get(d, {})) for d in ("in", "out")} for name, c in rep["lines"].items()},
            "zone_counts": {name: {k: dict(z.get(k, {})) for k in ("enters", "exits")}
                            for name, z in rep["zones"].items()},
            "zone_visits": [{"zone": name, **v} for name, z in rep["zones"].items() for v in z.get("dwells", [])],
        }
    return out


def counts_from_events(events: Iterable[Mapping[str, Any] | Event]) -> dict[str, SourceCounts]:
    """Per source, the counts and visits that a job's events add up to (records or :class:`Event`)."""
    out: dict[str, SourceCounts] = {}
    entered: dict[tuple[str, str, int], int] = {}  # (source, zone, track) -> enter frame
    for ev in events:
        e = ev.to_record() if isinstance(ev, Event) else ev
        sid = str(e["source"])
        counts = out.setdefault(sid, {"line_counts": {}, "zone_counts": {}, "zone_visits": []})
        cls = str(e.get("class", ""))
        if e["event"] == "line_cross":
            per = counts["line_counts"].setdefault(e["line"], {"in": {}, "out": {}})[e["direction"]]
            per[cls] = per.get(cls, 0) + 1
        elif e["event"] in ("zone_enter", "zone_exit"):
            key = "enters" if e["event"] == "zone_enter" else "exits"
            per = counts["zone_counts"].setdefault(e["zone"], {"enters": {}, "exits": {}})[key]
            per[cls] = per.get(cls, 0) + 1
            ident = (sid, str(e["zone"]), int(e["track_id"]))
            if key == "enters":
                entered[ident] = int(e["frame_index"])
            elif ident in entered:
                counts["zone_visits"].append({"zone": e["zone"], "track_id": e["track_id"], "class": cls,
                                              "enter_frame": entered.pop(ident), "exit_frame": e["frame_index"],
                                              "dwell_s": e.get("dwell_s"), "reason": e.get("reason")})
    return out


def _rows(source: str, kind: str, got: Mapping[str, Any], truth: Mapping[str, Any],
          keys: Sequence[str]) -> list[CountRow]:
    """One row per name, key and class present on either side."""
    rows = []
    for name in sorted(set(got) | set(truth)):
        for key in keys:
            g, t = got.get(name, {}).get(key, {}), truth.get(name, {}).get(key, {})
            for cls in sorted(set(g) | set(t)):
                rows.append(CountRow(source, kind, name, key, cls, int(g.get(cls, 0)), int(t.get(cls, 0))))
    return rows


def _pair_dwells(source: str, zone: str, got: list[Mapping[str, Any]], truth: list[Mapping[str, Any]], fps: float,
                 max_offset_s: float) -> DwellRow:
    """Pair visits closest first (same class, enter and exit each within ``max_offset_s``)."""
    candidates = []
    for i, g in enumerate(got):
        for j, t in enumerate(truth):
            if g["class"] != t["class"]:
                continue
            g_in, t_in = g["enter_frame"] / fps, t["enter_frame"] / fps
            d_in = abs(g_in - t_in)
            # the ends: enter + dwell (a lost track's dwell runs to when it was last seen)
            d_out = abs(g_in + float(g["dwell_s"]) - t_in - float(t["dwell_s"]))
            if max(d_in, d_out) <= max_offset_s:
                candidates.append((d_in + d_out, i, j))
    used_g: set[int] = set()
    used_t: set[int] = set()
    errors = []
    for _, i, j in sorted(candidates):
        if i not in used_g and j not in used_t:
            used_g.add(i)
            used_t.add(j)
            errors.append(abs(float(got[i]["dwell_s"]) - float(truth[j]["dwell_s"])))
    mae = sum(errors) / len(errors) if errors else None
    return DwellRow(source, zone, len(errors), mae, len(truth) - len(used_t), len(got) - len(used_g))


def compare_counts(got: Mapping[str, SourceCounts], ground_truth: Mapping[str, Mapping[str, Any]],
                   max_offset_s: float = 1.0) -> CountsReport:
    """Every line and zone count of ``got`` against the ground truth's ``"tracking"``, and
    the dwell error per zone (module docstring). Sources without ``"tracking"`` are skipped."""
    counts: list[CountRow] = []
    dwells: list[DwellRow] = []
    for source, gt in ground_truth.items():
        truth = gt.get("tracking")
        if not truth:
            continue
        g = got.get(source, {})
        counts += _rows(source, "line", g.get("line_counts", {}), truth["line_counts"], ("in", "out"))
        counts += _rows(source, "zone", g.get("zone_counts", {}), truth["zone_counts"], ("enters", "exits"))
        fps = float(truth.get("fps") or gt.get("fps") or 30.0)
        for zone in truth["zone_counts"]:
            got_visits = [v for v in g.get("zone_visits", []) if v["zone"] == zone and v.get("dwell_s") is not None
                          and math.isfinite(float(v["dwell_s"]))]
            true_visits = [v for v in truth["zone_visits"] if v["zone"] == zone]
            dwells.append(_pair_dwells(source, zone, got_visits, true_visits, fps, max_offset_s))
    return CountsReport(counts, dwells)
