"""From a sweep's rows to the numbers a report shows: selection, rates, tests, cost.

Every function reads the ``results.parquet`` frame (one row per prompt × method × vector ×
sign × scale, see :mod:`harness.evaluation.sweep`) and returns a plain ``DataFrame`` or dict, so a
report, a CI check and a notebook compute the same numbers the same way.

Rules, stated once:

The headline ``value`` (with ``low``/``high``) of a success behavior is the effective
success rate; of a score behavior, the mean score.

* **Selection** (select split only): for a success metric, each method's (vector, sign,
  scale) with the highest rate of *coherent successes*, so a scale that breaks the model
  cannot win; for a continuous score, the highest mean score among cells whose outputs
  are at least half coherent (all cells if none are). Ties go to the smaller scale, then
  the lower vector index, then the + sign.
* **Rates** (test split): the success rate with a 95% Wilson interval; the *effective*
  success rate, counting an incoherent output as a failure (steering that breaks the model
  is not success), with its Wilson interval; the coherent fraction; the success rate among
  coherent outputs (Wilson on the coherent count); the mean log-likelihood and repetition.
  Scores: the mean with a 95% bootstrap interval.
* **Comparisons** (test split, each method at its selected scale): Power Steering vs
  MELBO, every method vs random, every method vs unsteered; exact McNemar on effective
  success, a paired bootstrap on scores; Holm's correction over every comparison in the
  report. A comparison is significant when its Holm-adjusted p is below 0.05.
* **The random control's draws** (``steering.random_draws``): each draw (``random``,
  ``random#2``, ...) is selected on the select prompts like a method. A comparison with
  ``random`` is against the mean of the draws at their selected cells, by a bootstrap
  that resamples prompts and draws together, so the draw-to-draw spread counts: the
  best of k random directions is itself a random quantity, and against a single draw a
  paired test treats it as fixed (on SmolLM2's decision forks two draws of 3 directions
  differed by more than any method's effect).
* **Power** (per comparison, at its ``n``): ``mdd``, the minimum detectable difference
  with power 0.8 at two-sided level 0.05 / m, m the number of comparisons Holm corrects
  over: Holm's first and strictest step, the one level known before the p-values are (a
  comparison reached at a later, looser step detects somewhat less). For rates, exact
  McNemar under the most favourable case that every discordant prompt goes the same way,
  so it is a lower bound (NaN: no difference is detectable at that ``n``); for scores,
  the normal approximation ``(z_{1-α/2} + z_0.8) · sd(A − B) / √n``, in score units;
  against pooled random draws, ``(z_{1-α/2} + z_0.8)`` times the bootstrap's standard
  error (for rates at least the McNemar bound at the same ``n``).
  ``underpowered`` marks a null result (not significant) that could not have detected
  the smallest difference worth detecting, fixed in advance rather than read off the
  observed difference (a null's observed difference is nearly always below its mdd, so
  that would flag every null): 0.25 in effective success, and half a standard deviation of
  the paired differences for scores, which share no unit (Cohen's medium standardised
  effect). A significant result is never underpowered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.engine.methods import ranked_methods
from harness.evaluation.cells import CONTROL, UNSTEERED, Cell, draw_number
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

METHOD_ORDER = (*(info.name for info in ranked_methods()), UNSTEERED)
# The report's comparison family: the two unsupervised methods head to head, every method
# against the random control, every method against the unsteered model.
HEADLINE_PAIR = ("power", "melbo")
COMPARED_PAIRS = (
    HEADLINE_PAIR,
    *((info.name, "random") for info in ranked_methods() if not info.control),
    *((info.name, UNSTEERED) for info in ranked_methods()),
)
BOOTSTRAP_RESAMPLES = 10_000
# Power in the report (rules in the module doc): the family's level, the power a minimum
# detectable difference is quoted at, and the smallest differences worth detecting.
FAMILY_ALPHA = 0.05
POWER = 0.8
RATE_DIFFERENCE_OF_INTEREST = 0.25
SCORE_DIFFERENCE_OF_INTEREST_SD = 0.5


def select_cells(
    select_rows: pd.DataFrame,
    metric: str,
    keep_vectors: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Cell]:
    """Each method's best (vector, sign, scale) on the select rows (rule in the module doc).

    ``keep_vectors`` (method -> (vector, sign)) fixes the vector and sign and selects only
    the scale, as a rescore does: the held-out prompts were measured for those alone.
    """
    steered = select_rows[select_rows["method"] != UNSTEERED].copy()
    for method, (vector, sign) in (keep_vectors or {}).items():
        other = (steered["method"] == method) & (
            (steered["vector"] != vector) | (steered["sign"] != sign)
        )
        steered = steered[~other]
    if "coherent" not in steered:
        raise ValueError(
            "select rows need a coherent column (harness.evaluation.coherence.mark_coherent)"
        )
    keys = ["method", "vector", "sign", "scale"]
    if metric == "success":
        steered["objective"] = steered["success"].astype(bool) & steered["coherent"]
    else:
        steered["objective"] = steered["score"].astype(float)
    cells = steered.groupby(keys, as_index=False).agg(
        objective=("objective", "mean"), coherent=("coherent", "mean")
    )
    selection = {}
    for method, group in cells.groupby("method"):
        if metric != "success" and (group["coherent"] >= 0.5).any():
            group = group[group["coherent"] >= 0.5]
        best = group.sort_values(
            ["objective", "scale", "vector", "sign"], ascending=[False, True, True, False]
        ).iloc[0]
        selection[str(method)] = Cell(
            str(method), int(best["vector"]), int(best["sign"]), float(best["scale"])
        )
    return selection


def rate_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per behavior × method × scale on the test split (method at its selected vector;
    the unsteered rows appear once as ``unsteered`` at scale 0)."""
    test = results[results["split"] == "test"]
    records = []
    for (behavior, method, scale), group in test.groupby(["behavior", "method", "scale"]):
        records.append(
            {
                "behavior": behavior,
                "method": method,
                "scale": scale,
                "metric": group["metric"].iloc[0],
                **_summarise(group),
            }
        )
    table = pd.DataFrame.from_records(records)
    return _ordered(table, ["behavior", "method", "scale"])


def selected_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per behavior × method: the rates at the method's selected scale (test split)."""
    rates = rate_table(results)
    chosen = _selected_scales(results)
    keep = [
        (row.method == UNSTEERED) or (chosen.get((row.behavior, row.method)) == row.scale)
        for row in rates.itertuples()
    ]
    table = rates[keep].copy()
    vectors = _selected_vectors(results)
    table["vector"] = [
        vectors.get((b, m), (-1, 0))[0] for b, m in zip(table.behavior, table.method, strict=True)
    ]
    table["sign"] = [
        vectors.get((b, m), (-1, 0))[1] for b, m in zip(table.behavior, table.method, strict=True)
    ]
    return table.reset_index(drop=True)


def comparisons(
    results: pd.DataFrame, pairs: Sequence[tuple[str, str]] = COMPARED_PAIRS
) -> pd.DataFrame:
    """Paired tests of each ``(a, b)`` in ``pairs`` at the methods' selected scales on the
    test prompts, Holm-corrected over every row of the table (all behaviors together),
    each with its minimum detectable difference and whether a null is underpowered."""
    test = results[results["split"] == "test"]
    chosen = _selected_scales(results)
    records, differences = [], []
    for behavior, rows in test.groupby("behavior"):
        metric = rows["metric"].iloc[0]
        present = set(rows["method"])
        for a, b in pairs:
            if a not in present or b not in present:
                continue
            left, right = _at_selection(rows, a, chosen), _at_selection(rows, b, chosen)
            paired = left.merge(right, on="prompt_index", suffixes=("_a", "_b"))
            record = {
                "behavior": behavior,
                "a": a,
                "b": b,
                "metric": metric,
                "scale_a": _scale_of(left),
                "scale_b": _scale_of(right),
                "n": len(paired),
            }
            draws = _control_draws(present) if b == CONTROL else []
            if len(draws) > 1:
                values = _draw_values(rows, [a, *draws], chosen, metric)
                record.update(_draws_test(values))
                record["n"] = len(values)
                record["scale_b"] = math.nan  # each draw at its own selected scale
                differences.append(values[a] - values[draws].mean(axis=1))
            elif metric == "success":
                record.update(_success_test(paired))
                differences.append(None)
            else:
                record.update(_score_test(paired))
                diffs = paired["score_a"].astype(float) - paired["score_b"].astype(float)
                differences.append(diffs)
            records.append(record)
    table = pd.DataFrame.from_records(records)
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
        _add_power(table, differences)
    return table


def cost_table(vector_metadata: dict[str, dict]) -> pd.DataFrame:
    """Measured cost per behavior × method, from the run's vector metadata
    (names ``behavior/method``), with forward passes and wall time relative to Power
    Steering on the same behavior."""
    records = []
    for name, meta in vector_metadata.items():
        behavior, method = name.split("/", 1)
        records.append(
            {
                "behavior": behavior,
                "method": method,
                "num_vectors": meta["num_vectors"],
                "forward_passes": meta["forward_passes"],
                "prompt_passes": meta["prompt_passes"],
                "wall_time_s": meta["wall_time_s"],
                "iterations": meta.get("iterations"),
                "converged": meta.get("converged"),
            }
        )
    table = pd.DataFrame.from_records(records)
    if table.empty:
        return table
    for column in ("forward_passes", "wall_time_s"):
        power = table[table.method == "power"].set_index("behavior")[column]
        table[f"{column}_vs_power"] = [
            row[column] / power[row.behavior]
            if row.behavior in power and power[row.behavior]
            else math.nan
            for _, row in table.iterrows()
        ]
    return _ordered(table, ["behavior", "method"])


def recovered_fraction(selected: pd.DataFrame) -> pd.DataFrame:
    """How much of the supervised (caa) effect over unsteered each method recovers, per
    behavior with a caa row: ``(m - unsteered) / (caa - unsteered)`` of the headline value
    (success rate, or mean score)."""
    records = []
    for behavior, rows in selected.groupby("behavior"):
        value = rows.set_index("method")["value"]
        if "caa" not in value or UNSTEERED not in value:
            continue
        gap = value["caa"] - value[UNSTEERED]
        for method, v in value.items():
            if method in (UNSTEERED, "caa"):
                continue
            records.append(
                {
                    "behavior": behavior,
                    "method": method,
                    "recovered": (v - value[UNSTEERED]) / gap if gap else math.nan,
                }
            )
    return pd.DataFrame.from_records(records)


def _summarise(group: pd.DataFrame) -> dict[str, float]:
    n = len(group)
    coherent = group["coherent"].astype(bool)
    summary: dict[str, float] = {
        "n": n,
        "coherent_fraction": float(coherent.mean()),
        "mean_loglik": float(group["loglik"].mean()),
        "mean_repetition": float(group["repetition"].mean()),
    }
    if group["metric"].iloc[0] == "success":
        success = group["success"].astype(bool)
        k = int(success.sum())
        low, high = wilson_interval(k, n)
        n_coherent = int(coherent.sum())
        k_coherent = int((success & coherent).sum())
        c_low, c_high = wilson_interval(k_coherent, n_coherent)
        e_low, e_high = wilson_interval(k_coherent, n)
        summary.update(
            successes=k,
            success_rate=k / n,
            success_low=low,
            success_high=high,
            value=k_coherent / n,
            low=e_low,
            high=e_high,
            n_coherent=n_coherent,
            effective_successes=k_coherent,
            success_given_coherent=k_coherent / n_coherent if n_coherent else math.nan,
            given_coherent_low=c_low,
            given_coherent_high=c_high,
        )
    else:
        scores = group["score"].astype(float).to_numpy()
        mean, low, high, _ = paired_bootstrap(
            scores, np.zeros_like(scores), n_resamples=BOOTSTRAP_RESAMPLES
        )
        summary.update(value=mean, low=low, high=high)
    return summary


def _success_test(paired: pd.DataFrame) -> dict:
    success_a = paired["success_a"].astype(bool) & paired["coherent_a"]
    success_b = paired["success_b"].astype(bool) & paired["coherent_b"]
    # mcnemar_exact returns (A fails & B succeeds, A succeeds & B fails, p).
    b_only, a_only, p_value = mcnemar_exact(success_a, success_b)
    return {
        "test": "exact McNemar",
        "effect": float(success_a.mean() - success_b.mean()),
        "a_only": a_only,
        "b_only": b_only,
        "p": p_value,
    }


def _score_test(paired: pd.DataFrame) -> dict:
    diff, low, high, p_value = paired_bootstrap(
        paired["score_a"].astype(float),
        paired["score_b"].astype(float),
        n_resamples=BOOTSTRAP_RESAMPLES,
    )
    return {
        "test": "paired bootstrap",
        "effect": diff,
        "effect_low": low,
        "effect_high": high,
        "p": p_value,
    }


def _control_draws(methods: set[str]) -> list[str]:
    """The random control's draws among ``methods``, in draw order."""
    return sorted((m for m in methods if draw_number(m) is not None), key=draw_number)


def _draw_values(rows: pd.DataFrame, methods: list[str], chosen: dict, metric: str) -> pd.DataFrame:
    """One column per method: its outcome per test prompt at its selected cell (effective
    success as 0/1, or the score), on the prompts every method was measured on."""
    columns = []
    for method in methods:
        part = _at_selection(rows, method, chosen).set_index("prompt_index")
        if metric == "success":
            value = (part["success"].astype(bool) & part["coherent"].astype(bool)).astype(float)
        else:
            value = part["score"].astype(float)
        columns.append(value.rename(method))
    return pd.concat(columns, axis=1, join="inner").sort_index()


def _draws_test(values: pd.DataFrame) -> dict:
    """The first column against the mean of the control's draws (the other columns),
    resampling prompts and draws (:func:`~harness.evaluation.stats.draws_bootstrap`)."""
    method, draws = values.columns[0], values.columns[1:]
    diff, low, high, p_value, standard_error = draws_bootstrap(
        values[method].to_numpy(), values[draws].to_numpy().T, n_resamples=BOOTSTRAP_RESAMPLES
    )
    return {
        "test": f"draws × prompts bootstrap ({len(draws)} draws)",
        "effect": diff,
        "effect_low": low,
        "effect_high": high,
        "p": p_value,
        "standard_error": standard_error,
    }


def _add_power(table: pd.DataFrame, differences: list[pd.Series | None]) -> None:
    """The ``mdd`` and ``underpowered`` columns (rules in the module doc); ``differences``
    holds each score row's paired differences and None for a success row."""
    alpha = FAMILY_ALPHA / len(table)
    mdd, underpowered = [], []
    errors = table["standard_error"] if "standard_error" in table else [math.nan] * len(table)
    for row, diffs, standard_error in zip(table.itertuples(), differences, errors, strict=True):
        if not math.isnan(standard_error):
            # Pooled random draws: the bootstrap's own spread, draws and prompts together.
            detectable = minimum_detectable_from_standard_error(standard_error, alpha, POWER)
            if row.metric == "success":
                # A spread measured on rates near 0 or 1 is tiny; no paired test of rates
                # at this n detects less than exact McNemar's most favourable case, and
                # pooling draws only adds variance, so that bound is the floor.
                floor = mcnemar_minimum_detectable_difference(int(row.n), alpha, POWER)
                detectable = max(detectable, floor) if not math.isnan(floor) else math.nan
                of_interest = RATE_DIFFERENCE_OF_INTEREST
            else:
                of_interest = SCORE_DIFFERENCE_OF_INTEREST_SD * _sd(diffs)
        elif diffs is None:
            detectable = mcnemar_minimum_detectable_difference(int(row.n), alpha, POWER)
            of_interest = RATE_DIFFERENCE_OF_INTEREST
        else:
            detectable = bootstrap_minimum_detectable_difference(diffs, alpha, POWER)
            of_interest = SCORE_DIFFERENCE_OF_INTEREST_SD * _sd(diffs)
        null = row.p_holm >= FAMILY_ALPHA
        mdd.append(detectable)
        # Written so a NaN mdd (nothing detectable) counts as underpowered.
        underpowered.append(bool(null and not detectable <= of_interest))
    table["mdd"] = mdd
    table["underpowered"] = underpowered


def _sd(values: pd.Series) -> float:
    return float(np.std(values.to_numpy(), ddof=1)) if len(values) > 1 else math.nan


def _selected_scales(results: pd.DataFrame) -> dict[tuple[str, str], float]:
    steered = results[(results["method"] != UNSTEERED) & results["selected_scale"].notna()]
    pairs = steered.groupby(["behavior", "method"])["selected_scale"].first()
    return {key: float(value) for key, value in pairs.items()}


def _selected_vectors(results: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    chosen = results[(results["split"] == "test") & (results["method"] != UNSTEERED)]
    first = chosen.groupby(["behavior", "method"])[["vector", "sign"]].first()
    return {key: (int(row.vector), int(row.sign)) for key, row in first.iterrows()}


def _at_selection(rows: pd.DataFrame, method: str, chosen: dict) -> pd.DataFrame:
    part = rows[rows["method"] == method]
    if method != UNSTEERED:
        part = part[part["scale"] == chosen[(part["behavior"].iloc[0], method)]]
    return part[["prompt_index", "success", "coherent", "score", "scale"]]


def _scale_of(part: pd.DataFrame) -> float:
    return float(part["scale"].iloc[0]) if len(part) else math.nan


def _ordered(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if table.empty or "method" not in table:
        return table
    rank = {m: float(i) for i, m in enumerate(METHOD_ORDER)}

    def rank_of(method: str) -> float:
        draw = draw_number(method)  # the control's later draws follow its first
        return rank[CONTROL] + draw / 1000 if draw else rank.get(method, len(rank))

    table = table.assign(_rank=table["method"].map(rank_of))
    keys = [("_rank" if k == "method" else k) for k in keys]
    return table.sort_values(keys).drop(columns="_rank").reset_index(drop=True)
