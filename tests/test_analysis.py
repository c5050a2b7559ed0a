"""Selection, rates and the report's tests, on small results frames built by hand; the
expected selections and p-values are worked out in the comments."""

from __future__ import annotations

import pandas as pd
import pytest

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
