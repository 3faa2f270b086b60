"""Damaged and hostile video files through the whole file job, on the CPU (issue 31, item 3).

One ``fovea run`` takes the good base clips, a seeded corpus of damaged ones made from them
(:mod:`tests.pipelines.fuzz_corpus`: flipped bytes, zeroed ranges, dropped packets,
truncations, lying indexes, a size change mid-stream, files that are not video, 0-byte
files) and hostile ones (:mod:`tests.pipelines.fuzz_job`: files still being written, a
decoder that hangs). It must not crash or hang, must report every damaged file that can be
told damaged with its frames decoded and expected, exit 1, and give the good files exactly
the records a clean run gives them.

The seed and case count come from ``FOVEA_FUZZ_SEED`` / ``FOVEA_FUZZ_CASES`` (default 31 /
240). A failure names the case (``0042-flip-h264.mkv``: index 42 of the seed); write the
corpus to look at it with ``python -m tests.pipelines.fuzz_corpus OUT --seed SEED``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pipelines.fuzz_corpus import DEFAULT_CASES, DEFAULT_SEED, KINDS, make_corpus, write_bases
from tests.pipelines.fuzz_job import CorpusRun, check, outcome_table, run_corpus

SEED = int(os.environ.get("FOVEA_FUZZ_SEED", DEFAULT_SEED))
CASES = int(os.environ.get("FOVEA_FUZZ_CASES", DEFAULT_CASES))
STALL_S = 5.0  # decode.stall_timeout_s of the job: the hanging decoder costs this long
HANG_S = 120.0  # a job running longer hangs (it takes ~15 s)


@pytest.fixture(scope="module")
def cpu_corpus(tmp_path_factory: pytest.TempPathFactory, bright_model: Path) -> CorpusRun:
    return run_corpus(tmp_path_factory.mktemp("fuzz"), bright_model, "cpu", SEED, CASES, STALL_S, HANG_S)


def test_the_corpus_is_large_mixed_and_reproducible(tmp_path: Path) -> None:
    bases = write_bases(tmp_path / "good")
    first = make_corpus(tmp_path / "a", bases, SEED, 48)
    again = make_corpus(tmp_path / "b", write_bases(tmp_path / "good2"), SEED, 48)
    for c, d in zip(first, again, strict=True):
        assert c == d, (c, d)
        assert (tmp_path / "a" / c.name).read_bytes() == (tmp_path / "b" / c.name).read_bytes(), c
    assert {c.kind for c in first} == set(KINDS)  # every kind within any 48 cases
    assert CASES >= 200 or "FOVEA_FUZZ_CASES" in os.environ


def test_one_job_over_the_corpus_keeps_every_promise(cpu_corpus: CorpusRun) -> None:
    problems = check(cpu_corpus.run, cpu_corpus.cases, cpu_corpus.clean, cpu_corpus.folders, cpu_corpus.seed)
    assert not problems, "\n".join([*problems[:40], outcome_table(cpu_corpus.run, cpu_corpus.cases)])


def test_the_job_reports_damage_of_every_kind(cpu_corpus: CorpusRun) -> None:
    """Each kind has reported cases, and the cases that must be reported are many (a job
    that reports nothing fails the previous test; this one guards the corpus itself)."""
    failed = {Path(f.name).name for f in cpu_corpus.run.summary.failures}
    kinds = {c.kind for c in cpu_corpus.cases if c.name in failed}
    assert kinds == set(KINDS) | {"growing", "stall"}
    must = [c for c in cpu_corpus.cases if c.must_report]
    assert len(must) >= len(cpu_corpus.cases) // 3


def test_files_still_being_written_are_reported_as_changed(cpu_corpus: CorpusRun) -> None:
    reasons = {Path(f.name).name: f.reason for f in cpu_corpus.run.summary.failures}
    grown = [c for c in cpu_corpus.cases if c.kind == "growing"]
    assert len(grown) == 4
    for c in grown:
        expected = "not a video file or corrupt header" if c.base == "h264.mp4" else "changed while it was read"
        assert expected in reasons[c.name], (c.name, reasons[c.name])  # h264.mp4: its index comes last


def test_a_hanging_decoder_is_ended_by_the_watchdog(cpu_corpus: CorpusRun) -> None:
    reasons = {Path(f.name).name: f.reason for f in cpu_corpus.run.summary.failures}
    [stall] = [c for c in cpu_corpus.cases if c.kind == "stall"]
    assert "decoding stalled" in reasons[stall.name] and "decode.stall_timeout_s" in reasons[stall.name]
