"""The fuzz corpus of tests/pipelines/test_fuzz_files.py through the GPU path: NVDEC via
DALI's reader decodes H.264, HEVC and VP9, where a damaged file can fail a reader shared by
several files, hang it, or (a size change) decode garbage without an error.

Same corpus (seed ``FOVEA_FUZZ_SEED``, default 31), same hostile files, same promises: no
crash, no hang, every damaged file that can be told damaged reported with its frames,
exit code 1, and the good files' records identical to a clean GPU run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pipelines.fuzz_corpus import DEFAULT_CASES, DEFAULT_SEED, KINDS
from tests.pipelines.fuzz_job import CorpusRun, check, outcome_table, run_corpus

pytestmark = pytest.mark.gpu

SEED = int(os.environ.get("FOVEA_FUZZ_SEED", DEFAULT_SEED))
CASES = int(os.environ.get("FOVEA_FUZZ_CASES", DEFAULT_CASES))
STALL_S = 5.0
HANG_S = 300.0  # model load and CUDA warm-up included


@pytest.fixture(scope="module")
def gpu_corpus(tmp_path_factory: pytest.TempPathFactory, bright_model: Path) -> CorpusRun:
    return run_corpus(tmp_path_factory.mktemp("fuzz_gpu"), bright_model, "cuda", SEED, CASES, STALL_S, HANG_S)


def test_the_corpus_went_through_nvdec(gpu_corpus: CorpusRun) -> None:
    decoders = gpu_corpus.run.summary.decoders
    assert decoders.get("dali-gpu", 0) >= 150 and set(decoders) <= {"dali-gpu", "pyav"}, decoders


def test_one_gpu_job_over_the_corpus_keeps_every_promise(gpu_corpus: CorpusRun) -> None:
    problems = check(gpu_corpus.run, gpu_corpus.cases, gpu_corpus.clean, gpu_corpus.folders, gpu_corpus.seed)
    assert not problems, "\n".join([*problems[:40], outcome_table(gpu_corpus.run, gpu_corpus.cases)])


def test_the_gpu_job_reports_damage_of_every_kind_and_the_hostile_files(gpu_corpus: CorpusRun) -> None:
    reasons = {Path(f.name).name: f.reason for f in gpu_corpus.run.summary.failures}
    kinds = {c.kind for c in gpu_corpus.cases if c.name in reasons}
    assert kinds == set(KINDS) | {"growing", "stall"}
    [stall] = [c for c in gpu_corpus.cases if c.kind == "stall"]
    assert "decoding stalled" in reasons[stall.name]
    for c in gpu_corpus.cases:
        if c.kind == "growing" and c.base != "h264.mp4":
            assert "changed while it was read" in reasons[c.name], (c.name, reasons[c.name])
