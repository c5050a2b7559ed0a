"""Intervals and tests for reports, checked against known values and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, norm

from harness.errors import PowersteerError
from harness.evaluation.stats import (
    bootstrap_minimum_detectable_difference,
    draws_bootstrap,
    holm,
    mcnemar_exact,
    mcnemar_minimum_detectable_difference,
    minimum_detectable_from_standard_error,
    paired_bootstrap,
    wilson_interval,
)


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


# --- minimum detectable differences ----------------------------------------------------------


def _mcnemar_mdd_by_hand(n: int, alpha: float, power: float) -> float:
    """A direct search: the fewest discordant prompts, all one way, whose exact binomial
    test reaches ``alpha``, then the first d on a 1e-4 grid whose chance of at least that
    many discordant prompts out of ``n`` is ``power``."""
    needed = next(k for k in range(1, n + 1) if binomtest(k, k, 0.5).pvalue <= alpha)
    grid = np.linspace(0.0, 1.0, 10_001)
    counts = np.arange(needed, n + 1)[:, None]
    power_on_grid = binom.pmf(counts, n, grid[None, :]).sum(axis=0)
    return float(grid[np.argmax(power_on_grid >= power - 1e-12)])


def test_mcnemar_mdd_at_32_prompts_matches_a_direct_search():
    # 2 / 2^5 = 0.0625 > 0.05 >= 2 / 2^6: six discordant prompts are needed.
    mdd = mcnemar_minimum_detectable_difference(32, 0.05)
    assert mdd == pytest.approx(_mcnemar_mdd_by_hand(32, 0.05, 0.8), abs=1e-3)
    assert mdd == pytest.approx(0.2358, abs=1e-3)
    assert binom.sf(5, 32, mdd) == pytest.approx(0.8, abs=1e-9)
    assert binom.sf(5, 32, mdd - 1e-3) < 0.8


def test_mcnemar_mdd_matches_a_direct_search_at_other_levels():
    for n, alpha, power in [(12, 0.0125, 0.8), (50, 0.005, 0.9), (20, 0.05, 0.5)]:
        expected = _mcnemar_mdd_by_hand(n, alpha, power)
        actual = mcnemar_minimum_detectable_difference(n, alpha, power)
        assert actual == pytest.approx(expected, abs=1e-3), (n, alpha, power)


def test_mcnemar_mdd_rejection_rate_by_simulation():
    # At the mdd, with every discordant prompt going A's way, mcnemar_exact rejects in
    # about 80% of simulated experiments.
    n, alpha = 32, 0.05
    mdd = mcnemar_minimum_detectable_difference(n, alpha)
    rng = np.random.default_rng(0)
    rejected = 0
    trials = 2000
    for _ in range(trials):
        discordant = rng.random(n) < mdd
        rejected += mcnemar_exact(discordant, np.zeros(n, dtype=bool))[2] <= alpha
    assert rejected / trials == pytest.approx(0.8, abs=0.03)


def test_mcnemar_mdd_with_only_just_enough_prompts_is_a_root_of_the_power():
    # With n equal to the discordant prompts needed, all must be discordant: power d^n.
    assert mcnemar_minimum_detectable_difference(6, 0.05) == pytest.approx(0.8 ** (1 / 6))
    # 0.0625 is exactly 2 / 2^5: five prompts reach it, none lost to rounding.
    assert mcnemar_minimum_detectable_difference(5, 0.0625) == pytest.approx(0.8 ** (1 / 5))


def test_mcnemar_mdd_shrinks_as_prompts_grow():
    mdds = [mcnemar_minimum_detectable_difference(n, 0.05) for n in (8, 12, 16, 32, 64, 128)]
    assert all(later < earlier for earlier, later in zip(mdds, mdds[1:], strict=False))


def test_mcnemar_mdd_is_none_when_too_few_prompts_can_reach_the_level():
    # 2 / 2^10 > 0.001: eleven discordant prompts are needed, and four prompts have four.
    assert math.isnan(mcnemar_minimum_detectable_difference(4, 0.001))
    assert math.isnan(mcnemar_minimum_detectable_difference(10, 0.001))
    assert mcnemar_minimum_detectable_difference(11, 0.001) == pytest.approx(0.8 ** (1 / 11))


def test_bootstrap_mdd_is_the_normal_approximation_formula():
    differences = np.random.default_rng(3).normal(0.2, 1.5, size=24)
    expected = (norm.ppf(0.975) + norm.ppf(0.8)) * np.std(differences, ddof=1) / np.sqrt(24)
    assert bootstrap_minimum_detectable_difference(differences, 0.05) == pytest.approx(expected)
    # [1, -1] has sd √2 over √2 prompts, leaving the familiar z_0.975 + z_0.8 = 2.8016.
    assert bootstrap_minimum_detectable_difference([1.0, -1.0], 0.05) == pytest.approx(
        2.8016, abs=1e-4
    )


def test_bootstrap_mdd_needs_two_differences():
    assert math.isnan(bootstrap_minimum_detectable_difference([0.4], 0.05))


def test_minimum_detectable_differences_reject_levels_outside_the_unit_interval():
    with pytest.raises(PowersteerError, match="alpha"):
        mcnemar_minimum_detectable_difference(32, 0.0)
    with pytest.raises(PowersteerError, match="power"):
        bootstrap_minimum_detectable_difference([1.0, 2.0], 0.05, power=1.0)


def test_bootstrap_mdd_rejection_rate_by_simulation():
    # Differences drawn with mean equal to the mdd (computed from the true sd, 1): the
    # paired bootstrap's two-sided test at alpha then rejects in about 80% of simulated
    # experiments. 400 trials give a binomial sd of 0.02; the normal approximation (z for
    # t at n = 32) moves the rate by about 0.02 more, so 0.06 is allowed.
    n, alpha = 32, 0.05
    mdd = (norm.ppf(1 - alpha / 2) + norm.ppf(0.8)) / np.sqrt(n)
    rng = np.random.default_rng(0)
    trials = 400
    rejected = 0
    for trial in range(trials):
        differences = rng.normal(mdd, 1.0, size=n)
        p_value = paired_bootstrap(differences, np.zeros(n), n_resamples=400, seed=trial)[3]
        rejected += p_value <= alpha
    assert rejected / trials == pytest.approx(0.8, abs=0.06)


def test_draws_bootstrap_with_one_draw_is_the_paired_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(0.3, 1.0, size=30)
    pooled = draws_bootstrap(a, [b], n_resamples=2000, seed=4)
    assert pooled[:4] == pytest.approx(paired_bootstrap(a, b, n_resamples=2000, seed=4), abs=1e-12)


def test_draws_bootstrap_counts_the_spread_between_draws():
    # Outcomes that do not vary across prompts, so only the draws' resampling moves the
    # estimate: the mean of 3 draws picked with replacement from {0, 0.3, 0.6} has
    # variance var_pop / 3 = 0.06 / 3, a standard error of 0.1414. The relative error of a
    # bootstrap sd from 20,000 resamples is about 1/sqrt(40,000) = 0.5%; 3% is allowed.
    a = np.full(20, 0.5)
    draws = np.array([[0.0] * 20, [0.3] * 20, [0.6] * 20])
    diff, low, high, _, standard_error = draws_bootstrap(a, draws, n_resamples=20_000)
    assert diff == pytest.approx(0.5 - 0.3)
    assert standard_error == pytest.approx(math.sqrt(0.06 / 3), rel=0.03)
    # Picking the 0.6 draw three times (probability 1/27 > 2.5%) gives 0.5 - 0.6, and the
    # 0.0 draw three times 0.5 - 0.0: the interval's ends.
    assert (low, high) == pytest.approx((-0.1, 0.5))
    # Against the first draw alone a paired test sees no uncertainty at all.
    assert paired_bootstrap(a, draws[0], n_resamples=2000)[1:3] == pytest.approx((0.5, 0.5))


def test_draws_bootstrap_keeps_its_level_where_a_single_draw_does_not():
    # Method A's true mean equals the control's mean over draws (0), but each draw's mean
    # varies (sd 0.3) beside prompt noise (sd 1, 40 prompts). A paired test against one
    # draw sees sd sqrt(2/40) = 0.22 where the truth is sqrt(2/40 + 0.09) = 0.37 and
    # rejects about 24% of the time at 0.05; pooling 8 draws and resampling them keeps
    # the rate near 0.05 (a little above: resampling 8 draws shrinks their variance by
    # 7/8). 300 trials give a binomial sd of about 0.013 at 0.05 and 0.025 at 0.24.
    rng = np.random.default_rng(0)
    n, n_draws, trials = 40, 8, 300
    pooled_rejections = single_rejections = 0
    for trial in range(trials):
        a = rng.normal(0.0, 1.0, size=n)
        draw_means = rng.normal(0.0, 0.3, size=(n_draws, 1))
        draws = draw_means + rng.normal(0.0, 1.0, size=(n_draws, n))
        pooled_rejections += draws_bootstrap(a, draws, n_resamples=500, seed=trial)[3] <= 0.05
        single_rejections += paired_bootstrap(a, draws[0], n_resamples=500, seed=trial)[3] <= 0.05
    assert pooled_rejections / trials <= 0.10
    assert single_rejections / trials >= 0.15


def test_draws_bootstrap_rejects_malformed_draws():
    with pytest.raises(PowersteerError, match="every prompt"):
        draws_bootstrap([1.0, 2.0], [[1.0, 2.0, 3.0]])
    with pytest.raises(PowersteerError, match="shape"):
        draws_bootstrap([1.0, 2.0], [1.0, 2.0])


def test_minimum_detectable_difference_from_a_standard_error():
    # z_0.975 + z_0.8 = 1.95996 + 0.84162 = 2.80158.
    assert minimum_detectable_from_standard_error(0.1, 0.05) == pytest.approx(0.280158, abs=1e-6)
    assert math.isnan(minimum_detectable_from_standard_error(math.nan, 0.05))
