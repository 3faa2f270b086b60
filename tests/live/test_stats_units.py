"""The runner's latency sample (:class:`streams.live.stats.Reservoir`): bounded memory over
any number of values, quantiles of the whole run."""

from __future__ import annotations

import pytest

from streams.live.stats import Reservoir


def test_reservoir_is_exact_until_full_then_a_bounded_uniform_sample() -> None:
    r = Reservoir(capacity=1000, seed=1)
    assert len(r) == 0 and r.quantile(0.5) is None
    for v in range(10):
        r.append(float(v))
    assert len(r) == 10 and r.quantile(0.5) == pytest.approx(4.5) and r.quantile(1.0) == 9.0
    for v in range(10, 200_000):
        r.append(float(v))
    assert r.count == 200_000 and len(r) == 1000
    assert r._values.nbytes == 1000 * 8  # grew by doubling to the capacity, not beyond
    # a uniform sample of 0..199999: its quantiles are the run's, within a few percent
    assert r.quantile(0.5) == pytest.approx(100_000, rel=0.08)
    assert r.quantile(0.95) == pytest.approx(190_000, rel=0.03)
    with pytest.raises(ValueError):
        Reservoir(0)


def test_a_short_stream_keeps_a_small_sample() -> None:
    r = Reservoir()
    for v in range(100):
        r.append(float(v))
    assert r._values.nbytes == 128 * 8 and r._rng is None  # a churned camera's summary stays small
