"""Selection, rates and the report's tests, on small results frames built by hand; the
expected selections and p-values are worked out in the comments."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import binom, norm

from harness.evaluation.analysis import comparisons, rate_table, select_cells
from harness.evaluation.cells import UNSTEERED, Cell
from harness.testing.results_frames import cell_rows, results_frame, successes_on

# --- selection ---------------------------------------------------------------------------


def test_incoherent_successes_do_not_count_for_selection():
    # Scale 4 succeeds on all four prompts but breaks the model on three: one coherent
    # success. Scale 1 has two coherent successes and wins.
    rows = results_frame(
        cell_rows("power", 4.0, [True] * 4, [True, False, False, False]),
        cell_rows("power", 1.0, [True, True, False, False]),
    )
    assert select_cells(rows, "success") == {"power": Cell("power", 0, 1, 1.0)}


def test_equal_success_goes_to_the_smaller_scale():
    # Listed first and larger: must lose on the tie, not win on order.
    rows = results_frame(
        cell_rows("power", 8.0, [True, True, False]),
        cell_rows("power", 2.0, [True, False, True]),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 0, 1, 2.0)


def test_equal_success_and_scale_goes_to_the_lower_vector():
    rows = results_frame(
        cell_rows("power", 2.0, [True, False], vector=3),
        cell_rows("power", 2.0, [False, True], vector=1),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 1, 1, 2.0)


def test_equal_success_scale_and_vector_goes_to_the_plus_sign():
    rows = results_frame(
        cell_rows("power", 2.0, [True, False], sign=-1),
        cell_rows("power", 2.0, [False, True], sign=1),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 0, 1, 2.0)


def test_a_higher_rate_beats_every_tie_break():
    # The larger scale, higher vector and minus sign still win with more successes.
    rows = results_frame(
        cell_rows("power", 1.0, [True, False, False], vector=0, sign=1),
        cell_rows("power", 8.0, [True, True, False], vector=5, sign=-1),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 5, -1, 8.0)


def test_each_method_is_selected_on_its_own_cells_and_unsteered_never():
    rows = results_frame(
        cell_rows(UNSTEERED, 0.0, [True, True], vector=-1, sign=0),
        cell_rows("power", 1.0, [True, False]),
        cell_rows("power", 2.0, [False, False]),
        cell_rows("random", 1.0, [False, False]),
        cell_rows("random", 2.0, [False, True]),
    )
    assert select_cells(rows, "success") == {
        "power": Cell("power", 0, 1, 1.0),
        "random": Cell("random", 0, 1, 2.0),
    }


def test_score_selection_skips_cells_less_than_half_coherent():
    # Scale 8 scores highest but only a third of its outputs are coherent; scale 2 is
    # exactly half coherent, which is enough.
    rows = results_frame(
        cell_rows("melbo", 8.0, [9.0, 9.0, 9.0], [True, False, False]),
        cell_rows("melbo", 2.0, [1.0, 1.0], [True, False]),
        cell_rows("melbo", 1.0, [0.5, 0.5], [True, True]),
    )
    assert select_cells(rows, "score")["melbo"] == Cell("melbo", 0, 1, 2.0)


def test_score_selection_falls_back_to_every_cell_when_none_is_half_coherent():
    rows = results_frame(
        cell_rows("melbo", 8.0, [9.0, 9.0, 9.0], [True, False, False]),
        cell_rows("melbo", 2.0, [1.0, 1.0, 1.0], [False, False, True]),
    )
    assert select_cells(rows, "score")["melbo"] == Cell("melbo", 0, 1, 8.0)


def test_success_selection_has_no_coherence_filter_of_its_own():
    # Every cell is less than half coherent; the rate of coherent successes still decides.
    rows = results_frame(
        cell_rows("power", 1.0, [True, True, True], [True, False, False]),
        cell_rows("power", 2.0, [True, True, True], [True, True, False]),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 0, 1, 2.0)


def test_kept_vector_and_sign_fix_all_but_the_scale():
    rows = results_frame(
        cell_rows("power", 1.0, [True, True], vector=0),
        cell_rows("power", 1.0, [True, False], vector=1, sign=-1),
        cell_rows("power", 4.0, [True, True], vector=1, sign=-1),
        cell_rows("power", 4.0, [True, True], vector=1, sign=1),
    )
    assert select_cells(rows, "success")["power"] == Cell("power", 0, 1, 1.0)
    kept = select_cells(rows, "success", keep_vectors={"power": (1, -1)})
    assert kept["power"] == Cell("power", 1, -1, 4.0)


def test_selection_needs_the_coherent_column():
    rows = results_frame(cell_rows("power", 1.0, [True])).drop(columns="coherent")
    with pytest.raises(ValueError, match="coherent column"):
        select_cells(rows, "success")


# --- rates -------------------------------------------------------------------------------


def test_effective_success_counts_incoherent_outputs_as_failures():
    rows = results_frame(
        cell_rows("power", 2.0, [True, True, True, False], [True, False, True, True], split="test")
    )
    (row,) = rate_table(rows).itertuples()
    assert row.success_rate == 0.75  # 3 of 4
    assert row.value == 0.5  # 2 of 4 both successful and coherent
    assert row.success_given_coherent == pytest.approx(2 / 3)  # 2 of the 3 coherent
    assert row.coherent_fraction == 0.75


# --- the report's family of tests ----------------------------------------------------------

# Test-split outcomes on 12 prompts. Unsteered succeeds on prompt 0 of behavior "a" only.
# Exact McNemar against unsteered, two-sided: with c prompts only unsteered got right and d
# discordant prompts in all, p = 2 · P(Binomial(d, 1/2) <= c).
#   a/power:  prompts 1-10, d = 11, c = 1: p = 2 · 12 / 2^11 = 0.01171875
#   a/random: prompts 1-7,  d = 8,  c = 1: p = 2 · 9 / 2^8   = 0.0703125
#   b/power:  prompts 1-6,  d = 6,  c = 0: p = 2 / 2^6       = 0.03125
#   b/random: prompts 1-5,  d = 5,  c = 0: p = 2 / 2^5       = 0.0625
# Holm over all four, in ascending order (m = 4), each a running maximum:
#   a/power  4 · 0.01171875 = 0.046875
#   b/power  3 · 0.03125    = 0.09375
#   b/random 2 · 0.0625     = 0.125
#   a/random 1 · 0.0703125  = 0.0703125, raised to 0.125 to stay monotone
SUCCESSES = {
    ("a", UNSTEERED): [0],
    ("a", "power"): range(1, 11),
    ("a", "random"): range(1, 8),
    ("b", UNSTEERED): [],
    ("b", "power"): range(1, 7),
    ("b", "random"): range(1, 6),
}
RAW_P = {
    ("a", "power"): 0.01171875,
    ("a", "random"): 0.0703125,
    ("b", "power"): 0.03125,
    ("b", "random"): 0.0625,
}
HOLM_P = {
    ("a", "power"): 0.046875,
    ("b", "power"): 0.09375,
    ("b", "random"): 0.125,
    ("a", "random"): 0.125,
}


def two_behavior_results() -> pd.DataFrame:
    cells = []
    for (behavior, method), successes in SUCCESSES.items():
        outcomes = successes_on(successes, 12)
        if method == UNSTEERED:
            cells.append(cell_rows(method, 0.0, outcomes, split="test", behavior=behavior))
            continue
        at = {"split": "test", "behavior": behavior, "selected_scale": 2.0}
        cells.append(cell_rows(method, 2.0, outcomes, **at))
        # The same method at a scale it did not select, which the tests must not read.
        cells.append(cell_rows(method, 4.0, [False] * 12, **at))
    return results_frame(*cells)


def test_p_values_are_holm_corrected_over_every_behavior_together():
    pairs = [("power", UNSTEERED), ("random", UNSTEERED)]
    table = comparisons(two_behavior_results(), pairs=pairs)
    assert len(table) == 4
    for row in table.itertuples():
        key = (row.behavior, row.a)
        assert row.b == UNSTEERED and row.scale_a == 2.0 and row.n == 12
        assert row.p == pytest.approx(RAW_P[key], rel=1e-12), key
        assert row.p_holm == pytest.approx(HOLM_P[key], rel=1e-12), key


def test_comparison_effect_and_discordant_counts_are_at_the_selected_scale():
    table = comparisons(two_behavior_results(), pairs=[("power", UNSTEERED)])
    a = table[table.behavior == "a"].iloc[0]
    assert (a.a_only, a.b_only) == (10, 1)
    assert a.effect == pytest.approx(10 / 12 - 1 / 12)


# --- power ---------------------------------------------------------------------------------

# The four comparisons above at 12 prompts, each at the Holm family's strictest level
# 0.05 / 4 = 0.0125: 2 / 2^7 > 0.0125 >= 2 / 2^8, so 8 discordant prompts (all one way) are
# needed, and the mdd is the d with P(Binomial(12, d) >= 8) = 0.8: about 0.731.
MDD_AT_12_OF_4 = 0.7307


def test_every_comparison_carries_its_minimum_detectable_difference():
    pairs = [("power", UNSTEERED), ("random", UNSTEERED)]
    table = comparisons(two_behavior_results(), pairs=pairs)
    for row in table.itertuples():
        assert row.mdd == pytest.approx(MDD_AT_12_OF_4, abs=1e-3)
        assert binom.sf(7, 12, row.mdd) == pytest.approx(0.8, abs=1e-9)


def test_only_null_results_are_underpowered():
    # a/power is significant after Holm (0.047); the other three are nulls, and none of
    # them could detect 0.25 (mdd 0.731), so each is underpowered.
    pairs = [("power", UNSTEERED), ("random", UNSTEERED)]
    table = comparisons(two_behavior_results(), pairs=pairs)
    flagged = {(row.behavior, row.a): row.underpowered for row in table.itertuples()}
    assert flagged == {
        ("a", "power"): False,
        ("a", "random"): True,
        ("b", "power"): True,
        ("b", "random"): True,
    }


def _one_success_comparison(n: int) -> pd.Series:
    # Power and unsteered both succeed on the first half of the prompts: a null, p = 1.
    outcomes = successes_on(range(n // 2), n)
    rows = results_frame(
        cell_rows(UNSTEERED, 0.0, outcomes, split="test"),
        cell_rows("power", 2.0, outcomes, split="test", selected_scale=2.0),
    )
    return comparisons(rows, pairs=[("power", UNSTEERED)]).iloc[0]


def test_a_null_that_could_detect_a_quarter_is_not_underpowered():
    # One comparison, level 0.05: six discordant prompts needed. At 32 prompts the mdd is
    # 0.236 <= 0.25; at 24 it is 0.309 > 0.25.
    large, small = _one_success_comparison(32), _one_success_comparison(24)
    assert large.p_holm == 1.0 and small.p_holm == 1.0
    assert large.mdd == pytest.approx(0.2358, abs=1e-3) and not large.underpowered
    assert small.mdd == pytest.approx(0.3094, abs=1e-3) and small.underpowered


def test_a_comparison_with_too_few_prompts_detects_nothing():
    # Four prompts, level 0.05: six discordant prompts would be needed.
    row = _one_success_comparison(4)
    assert math.isnan(row.mdd) and row.underpowered


def _one_score_comparison(n: int) -> pd.Series:
    # Power scores +1, -1, +1, ... against unsteered's 0: mean difference 0, p = 1.
    rows = results_frame(
        cell_rows(UNSTEERED, 0.0, [0.0] * n, split="test"),
        cell_rows("power", 2.0, [(-1.0) ** i for i in range(n)], split="test", selected_scale=2.0),
    )
    return comparisons(rows, pairs=[("power", UNSTEERED)]).iloc[0]


def test_score_mdd_is_the_normal_approximation_in_score_units():
    # The differences alternate ±1 over 40 prompts: sd = sqrt(40 / 39). At level 0.05 the
    # mdd is 2.8016 · sd / sqrt(40) = 0.449, below half an sd (0.506): not underpowered.
    row = _one_score_comparison(40)
    sd = math.sqrt(40 / 39)
    expected = (norm.ppf(0.975) + norm.ppf(0.8)) * sd / math.sqrt(40)
    assert row.p_holm == 1.0
    assert row.mdd == pytest.approx(expected) and not row.underpowered


def test_a_score_null_on_few_prompts_is_underpowered():
    # 12 prompts: mdd = 2.8016 / sqrt(12) sd = 0.81 sd, more than half an sd.
    row = _one_score_comparison(12)
    sd = math.sqrt(12 / 11)
    assert row.mdd == pytest.approx(2.8016 * sd / math.sqrt(12), abs=1e-3)
    assert row.underpowered
