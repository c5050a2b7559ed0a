"""A behavior's ``expect:`` checks and the baseline check, each passing and failing, on
results frames built by hand (12 held-out prompts, each method selected at scale 2)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.errors import PowersteerError
from harness.evaluation.behaviors import Behavior
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.expectations import (
    baseline_check,
    expectation_checks,
    headline,
    read_baseline,
    write_baseline,
)
from harness.testing.results_frames import cell_rows, results_frame, successes_on

N = 12


def behavior_expecting(**expect) -> Behavior:
    return Behavior.model_validate(
        {
            "name": "b",
            "prompts": {"path": "prompts.jsonl"},
            "scorer": {"type": "contains", "text": "x"},
            "steering": {"methods": ["power", "melbo", "random"]},
            "expect": expect,
        }
    )


def held_out(
    successes: dict[str, range | list[int]], coherent: dict[str, list[bool]] | None = None
) -> pd.DataFrame:
    """Test-split rows: each method (``unsteered`` at scale 0, the rest at their selected
    scale 2) succeeding on the prompts given."""
    cells = []
    for method, indices in successes.items():
        outcomes = successes_on(indices, N)
        coherence = (coherent or {}).get(method)
        if method == UNSTEERED:
            cell = cell_rows(method, 0.0, outcomes, coherence, vector=-1, sign=0, split="test")
        else:
            cell = cell_rows(method, 2.0, outcomes, coherence, split="test", selected_scale=2.0)
        cells.append(cell)
    return results_frame(*cells)


def only_check(checks, name):
    (check,) = [c for c in checks if c.name == name]
    return check


# --- min_success ---------------------------------------------------------------------------


def test_min_success_passes_at_or_above_the_threshold():
    results = held_out({UNSTEERED: [], "power": range(9)})  # 9 of 12 = 0.75
    (check,) = expectation_checks(results, behavior_expecting(min_success=0.75), "power")
    assert check.name == "min_success" and check.passed
    assert check.line().startswith("ok   min_success: expected effective success >= 0.75")
    assert "effective success 0.750" in check.measured


def test_min_success_fails_when_incoherent_successes_bring_the_rate_below():
    # 9 successes, but 2 of them incoherent: effective success 7 of 12 = 0.583.
    coherent = {"power": [False, False] + [True] * (N - 2)}
    results = held_out({UNSTEERED: [], "power": range(9)}, coherent)
    (check,) = expectation_checks(results, behavior_expecting(min_success=0.7), "power")
    assert not check.passed
    assert check.line().startswith("FAIL min_success: expected effective success >= 0.7")
    assert "effective success 0.583" in check.line()


# --- beats ---------------------------------------------------------------------------------


def test_beats_passes_with_a_significant_improvement():
    # 11 prompts only power gets right: exact McNemar p = 2 / 2^11.
    results = held_out({UNSTEERED: [], "power": range(11)})
    (check,) = expectation_checks(results, behavior_expecting(beats=[UNSTEERED]), "power")
    assert check.name == "beats unsteered" and check.passed
    assert "difference +0.917, p = 0.00098" in check.measured


def test_beats_fails_without_significance():
    # 3 prompts only power gets right: p = 2 / 2^3 = 0.25.
    results = held_out({UNSTEERED: [], "random": [], "power": range(3)})
    (check,) = expectation_checks(results, behavior_expecting(beats=["random"]), "power")
    assert not check.passed
    assert check.line().startswith("FAIL beats random: expected better than random")
    assert "p = 0.25" in check.measured


def test_beats_fails_when_significantly_worse():
    results = held_out({UNSTEERED: range(N), "power": []})
    (check,) = expectation_checks(results, behavior_expecting(beats=[UNSTEERED]), "power")
    assert not check.passed and "difference -1.000" in check.measured


def test_beats_is_holm_corrected_over_the_listed_comparisons():
    # Power gets 6 prompts right that unsteered and random both miss: p = 2 / 2^6 = 0.031
    # each, significant alone, 2 x 0.031 = 0.0625 after Holm over the two.
    results = held_out({UNSTEERED: [], "random": [], "power": range(6)})
    (alone,) = expectation_checks(results, behavior_expecting(beats=[UNSTEERED]), "power")
    assert alone.passed and "p = 0.031" in alone.measured
    both = expectation_checks(results, behavior_expecting(beats=[UNSTEERED, "random"]), "power")
    assert [c.name for c in both] == ["beats unsteered", "beats random"]
    assert not any(c.passed for c in both)
    assert all("p = 0.062" in c.measured for c in both)


def test_beats_a_method_the_run_did_not_measure_fails_and_says_so():
    results = held_out({UNSTEERED: [], "power": range(11)})
    (check,) = expectation_checks(results, behavior_expecting(beats=["melbo"]), "power")
    assert not check.passed
    assert check.line() == (
        "FAIL beats melbo: expected a comparison with melbo; measured melbo was not measured "
        "in this run"
    )


def test_a_method_is_not_checked_against_itself():
    results = held_out({UNSTEERED: [], "power": range(11)})
    checks = expectation_checks(results, behavior_expecting(beats=["power", UNSTEERED]), "power")
    assert [c.name for c in checks] == ["beats unsteered"]


# --- max_coherence_drop ----------------------------------------------------------------------

# Unsteered all coherent; power coherent on 9 of 12, a drop of 0.25.
DROPPED = {"power": [False] * 3 + [True] * (N - 3)}


def test_max_coherence_drop_passes_within_the_allowed_drop():
    results = held_out({UNSTEERED: [], "power": range(N)}, DROPPED)
    (check,) = expectation_checks(results, behavior_expecting(max_coherence_drop=0.25), "power")
    assert check.name == "max_coherence_drop" and check.passed
    assert check.measured == "0.750 (drop 0.250)"


def test_max_coherence_drop_fails_beyond_it():
    results = held_out({UNSTEERED: [], "power": range(N)}, DROPPED)
    (check,) = expectation_checks(results, behavior_expecting(max_coherence_drop=0.2), "power")
    assert not check.passed
    assert check.line().startswith(
        "FAIL max_coherence_drop: expected coherent fraction at most 0.2 below unsteered (1.000)"
    )


def test_every_expectation_is_checked_once():
    results = held_out({UNSTEERED: [], "power": range(N)}, DROPPED)
    expect = behavior_expecting(min_success=0.5, beats=[UNSTEERED], max_coherence_drop=0.1)
    checks = expectation_checks(results, expect, "power")
    assert {c.name: c.passed for c in checks} == {
        "min_success": True,  # 9 of 12 coherent successes
        "beats unsteered": True,  # 9 prompts only power gets right: p = 2 / 2^9
        "max_coherence_drop": False,
    }


# --- the baseline ----------------------------------------------------------------------------


def entry(value: float, low: float, high: float) -> dict:
    return {"metric": "success", "value": value, "low": low, "high": high, "n": N, "scale": 2.0}


def test_baseline_passes_down_to_the_lower_end_of_its_interval():
    check = baseline_check(entry(0.5, 0.3, 0.7), entry(0.6, 0.5, 0.8))
    assert check.name == "baseline" and check.passed
    assert check.expected.startswith("at least 0.500, the lower end of the baseline's interval")


def test_baseline_fails_below_it():
    check = baseline_check(entry(0.49, 0.3, 0.7), entry(0.6, 0.5, 0.8))
    assert not check.passed
    assert check.line().startswith("FAIL baseline: expected at least 0.500")
    assert check.measured.startswith("effective success 0.490 (95% CI 0.300 to 0.700)")


def test_headline_is_the_stored_baseline_entry():
    results = held_out({UNSTEERED: [], "power": range(9)})
    now = headline(results, "b", "power")
    assert now["value"] == 0.75 and now["n"] == N and now["scale"] == 2.0
    assert now["low"] < 0.75 < now["high"]
    assert baseline_check(now, now).passed


def test_headline_of_an_unmeasured_method_is_an_error():
    with pytest.raises(PowersteerError, match="no held-out results for b/melbo"):
        headline(held_out({UNSTEERED: [], "power": range(9)}), "b", "melbo")


def test_written_baseline_merges_over_the_stored_one(tmp_path):
    path = tmp_path / "baseline.json"
    assert read_baseline(path) == {}
    write_baseline(path, {"b": {"power": entry(0.5, 0.3, 0.7)}})
    write_baseline(path, {"b": {"melbo": entry(0.4, 0.2, 0.6)}, "c": {"power": entry(1, 1, 1)}})
    stored = read_baseline(path)
    assert stored == {
        "b": {"melbo": entry(0.4, 0.2, 0.6), "power": entry(0.5, 0.3, 0.7)},
        "c": {"power": entry(1, 1, 1)},
    }
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_an_unreadable_baseline_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text("{not json")
    with pytest.raises(PowersteerError, match=r"baseline.json: not a readable baseline"):
        read_baseline(path)
    path.write_text('{"version": 1}')
    with pytest.raises(PowersteerError, match="no 'behaviors' mapping"):
        read_baseline(path)
