"""Paired confidence intervals (cifc_bench.evaluation.stats), checked on simulated seeds × units data with a known answer."""

import numpy as np
import pytest

from cifc_bench.evaluation import stats


def simulate(rng, delta=0.1, seeds=3, units=200, seed_sd=0.02, unit_sd=1.0, method_unit_sd=0.3, noise_sd=1.0):
    """Two methods on shared units: a unit effect common to both (some prompts are hard for everyone), a
    method × unit effect, a seed effect per training run and seed × unit noise; mean(a) − mean(b) = delta."""
    common = rng.normal(0, unit_sd, units)
    a = delta + common + rng.normal(0, method_unit_sd, units) + rng.normal(0, seed_sd, (seeds, 1)) + \
        rng.normal(0, noise_sd, (seeds, units))
    b = common + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd, (seeds, units))
    return a, b


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(2026)
    hits = 0
    for k in range(1000):
        a, b = simulate(rng)
        d = stats.paired_difference(a, b, replicates=1000, seed=k)
        hits += d.low <= 0.1 <= d.high
    assert 0.93 <= hits / 1000 <= 0.97, f"coverage {hits / 1000:.3f}"


def test_pairing_gives_a_narrower_interval_than_unpaired_resampling_on_correlated_units():
    a, b = simulate(np.random.default_rng(0), delta=0.3)
    paired, unpaired = stats.paired_difference(a, b), stats.unpaired_difference(a, b)
    assert paired.mean == pytest.approx(unpaired.mean)
    assert (paired.high - paired.low) < 0.7 * (unpaired.high - unpaired.low)
    assert paired.excludes(0.0)


def test_identical_methods_tie_and_a_shifted_one_wins():
    a, _ = simulate(np.random.default_rng(1))
    same = stats.paired_difference(a, a.copy())  # two trainings that happen to agree: a tie, around 0
    assert same.mean == 0.0 and same.low < 0.0 < same.high and not same.excludes(0.0)
    better = stats.paired_difference(a + 0.5, a)
    assert better.excludes(0.0) and better.low > 0
    tables = {"a": a, "a-again": a + 1e-9, "worse": a - 0.5}
    best, ties = stats.indistinguishable_from_best(tables)
    assert best == "a-again" and ties == {"a"}
    record = stats.win_tie_loss(tables)
    assert record["worse"] == {"a": "loss", "a-again": "loss"} and record["a"]["a-again"] == "tie"
    lower = stats.win_tie_loss(tables, higher_is_better=False)
    assert lower["worse"]["a"] == "win"


def test_one_method_interval_shrinks_with_more_seeds_and_units():
    rng = np.random.default_rng(3)
    small = stats.interval(rng.normal(0.5, 1.0, (3, 20)))
    large = stats.interval(rng.normal(0.5, 1.0, (10, 400)))
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_bad_tables_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.interval([[0.1, float("nan")]])
    with pytest.raises(ValueError, match="must share their units, got 3 and 4 columns"):
        stats.paired_difference(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-empty seeds × units table"):
        stats.interval(np.zeros((0, 3)))
