"""Intervals and tests for reports, checked against known values and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from harness.errors import PowersteerError
from harness.evaluation.stats import holm, mcnemar_exact, paired_bootstrap, wilson_interval


def test_wilson_interval_matches_published_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_inside_unit_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == pytest.approx(1.0) and 0.8 < low < 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_narrows_with_lower_confidence():
    wide = wilson_interval(8, 10, confidence=0.99)
    narrow = wilson_interval(8, 10, confidence=0.90)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(PowersteerError, match="successes <= n"):
        wilson_interval(11, 10)


def test_mcnemar_counts_discordant_pairs_and_matches_binomial_test():
    # A succeeds on 0-6 and 9, B on 7-9 and 10-11 (prompts 10, 11: A fails, B succeeds).
    a = [True] * 7 + [False, False, True, False, False]
    b = [False] * 7 + [True, True, True, True, True]
    b01, b10, p = mcnemar_exact(a, b)
    assert (b01, b10) == (4, 7)
    assert p == pytest.approx(binomtest(4, 11, 0.5).pvalue)


def test_mcnemar_p_value_by_hand():
    # One discordant pair one way, seven the other: p = 2 * (C(8,0) + C(8,1)) / 2^8.
    a = [False] + [True] * 7 + [True, False]
    b = [True] + [False] * 7 + [True, False]
    assert mcnemar_exact(a, b) == (1, 7, pytest.approx(2 * 9 / 256))


def test_mcnemar_without_discordant_pairs_gives_p_one():
    assert mcnemar_exact([True, False, True], [True, False, True]) == (0, 0, 1.0)


def test_mcnemar_rejects_unpaired_outcomes():
    with pytest.raises(PowersteerError, match="same prompts"):
        mcnemar_exact([True, False], [True])


def test_paired_bootstrap_finds_a_clear_shift():
    rng = np.random.default_rng(1)
    b = rng.normal(size=60)
    a = b + 1.0 + 0.1 * rng.normal(size=60)
    mean_diff, low, high, p = paired_bootstrap(a, b, n_resamples=2000, seed=0)
    assert mean_diff == pytest.approx(float(np.mean(a - b)))
    assert low < mean_diff < high and low > 0.9 and high < 1.1
    assert p == pytest.approx(1 / 2001)


def test_paired_bootstrap_without_difference_is_not_significant():
    a = [0.5, 1.0, -0.3, 2.0]
    mean_diff, low, high, p = paired_bootstrap(a, a, n_resamples=500, seed=0)
    assert (mean_diff, low, high, p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_is_reproducible_from_its_seed():
    a, b = [1.0, 2.0, 0.5, 3.0, 1.5], [0.8, 2.1, 0.1, 2.0, 1.6]
    assert paired_bootstrap(a, b, 300, seed=4) == paired_bootstrap(a, b, 300, seed=4)


def test_holm_matches_hand_worked_example():
    # Sorted: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.04,0.06,0.06,0.06.
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])


def test_holm_caps_at_one_and_keeps_order():
    assert holm([0.5, 0.001, 0.9]) == pytest.approx([1.0, 0.003, 1.0])
    assert holm([]) == []
