"""Cohen's kappa against known values, and its prompt-clustered bootstrap interval."""

import math

import numpy as np
import pandas as pd
import pytest

from harness.evaluation.scoring import agreement_table
from harness.evaluation.stats import clustered_kappa_interval, cohen_kappa


def labels_from_table(both: int, only_a: int, only_b: int, neither: int) -> tuple[list, list]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_kappa_of_a_textbook_two_by_two_table():
    # 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no. p_o = 35/50 = 0.7; rater A says
    # yes to 25/50, rater B to 30/50, so p_e = 0.5*0.6 + 0.5*0.4 = 0.5 and kappa = 0.4.
    a, b = labels_from_table(20, 5, 10, 15)
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_kappa_is_one_for_perfect_agreement_and_negative_below_chance():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    # Complete disagreement with balanced labels: p_o = 0, p_e = 0.5, kappa = -1.
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    # Three categories: p_o = 4/6, p_e = (2*2 + 2*2 + 2*2)/36 = 1/3, kappa = 0.5.
    assert cohen_kappa(list("aabbcc"), list("aabcbc")) == pytest.approx(0.5)
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # one label: undefined


def test_clustered_interval_treats_a_prompts_rows_as_one_draw():
    rng = np.random.default_rng(1)
    a = rng.random(30) < 0.5
    b = np.where(rng.random(30) < 0.8, a, ~a)
    single = clustered_kappa_interval(a, b, np.arange(30), n_resamples=500, seed=3)
    # Each prompt's row repeated four times, clustered by prompt: kappa is unchanged by
    # replication and the same seed draws the same prompts, so the interval is the same.
    repeated = clustered_kappa_interval(
        np.repeat(a, 4), np.repeat(b, 4), np.repeat(np.arange(30), 4), n_resamples=500, seed=3
    )
    assert repeated == pytest.approx(single, abs=1e-12)
    # Ignoring the clusters treats 120 rows as independent: a falsely narrow interval.
    naive = clustered_kappa_interval(
        np.repeat(a, 4), np.repeat(b, 4), np.arange(120), n_resamples=500, seed=3
    )
    assert naive[2] - naive[1] < 0.75 * (single[2] - single[1])
    assert single[1] <= single[0] <= single[2]


def test_agreement_table_compares_the_judge_with_each_rule_scorer():
    rows = pd.DataFrame(
        {
            "split": ["test"] * 4,
            "prompt_index": [0, 1, 2, 3],
            "metric": ["success"] * 4,
            "success": [True, True, False, False],
            "judge_success": [True, False, False, False],
            "judge_score": [1.0, 0.0, 0.0, 0.0],
            "judge_outcome": ["success", "unparsed", "failure", "failure"],
            "compliance_success": [True, False, False, True],
            "compliance_score": [1.0, 0.0, 0.0, 1.0],
        }
    )
    table = agreement_table(rows).set_index("rule scorer")
    assert list(table.index) == ["behavior scorer", "compliance"]
    assert table.loc["behavior scorer", "agreement"] == "0.750"
    assert table.loc["compliance", "judge unparsed"] == 1
    # judge vs compliance: 3 of 4 agree; judge yes 1/4, compliance yes 2/4:
    # p_e = 0.25*0.5 + 0.75*0.5 = 0.5, kappa = (0.75 - 0.5) / 0.5 = 0.5.
    assert table.loc["compliance", "Cohen's κ [95% CI]"].startswith("0.500 [")
