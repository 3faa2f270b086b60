"""``benchmarks.live_sim --cascade`` runs on the NVDEC path; with ``--decode gop`` (whose
batches do not return source frames) it stops at once with the reason, before any clip is
encoded or engine built."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import live_sim


def test_cascade_with_gop_decode_is_refused_before_any_work(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        live_sim.main(["--cascade", "--decode", "gop", "--clips", str(tmp_path / "clips"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--cascade needs --decode gpu" in capsys.readouterr().err
    assert not (tmp_path / "clips").exists()

