"""The report's tables: analysis frames formatted for reading (numbers rounded, intervals
joined, p-values and labels in place). Plain DataFrames in, plain DataFrames out."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.evaluation.cells import UNSTEERED


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.500 [0.336, 0.664]``: the form every rate and interval takes in the report."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def value_with_interval(row: Any) -> str:
    return format_interval(row.value, row.low, row.high)


def format_rates(rates: pd.DataFrame, metric: str) -> pd.DataFrame:
    records = []
    for row in rates.itertuples():
        record = {"method": row.method, "scale": format_number(row.scale, 2), "n": int(row.n)}
        if metric == "success":
            record["success [95% CI]"] = format_interval(
                row.success_rate, row.success_low, row.success_high
            )
            record["effective success [95% CI]"] = format_interval(row.value, row.low, row.high)
            record["coherent"] = f"{row.coherent_fraction:.3f}"
            record["success among coherent [95% CI]"] = (
                format_interval(
                    row.success_given_coherent, row.given_coherent_low, row.given_coherent_high
                )
                if row.n_coherent
                else "no coherent output"
            )
        else:
            record["mean score [95% CI]"] = format_interval(row.value, row.low, row.high)
            record["coherent"] = f"{row.coherent_fraction:.3f}"
        record["log-lik/token"] = f"{row.mean_loglik:.2f}"
        record["repetition"] = f"{row.mean_repetition:.2f}"
        records.append(record)
    return pd.DataFrame.from_records(records)


def format_tests(tests: pd.DataFrame) -> pd.DataFrame:
    """The comparisons table: each paired test, its p-values, the smallest difference it
    could have detected and a mark on a null result that is underpowered."""
    records = []
    for row in tests.itertuples():
        record = {
            "A": row.a,
            "B": row.b,
            "scales": f"{format_number(row.scale_a, 2)} / {format_number(row.scale_b, 2)}",
            "n": int(row.n),
            "test": row.test,
        }
        if row.test == "exact McNemar":
            record["A − B"] = f"{row.effect:+.3f}"
            record["only A / only B"] = f"{int(row.a_only)} / {int(row.b_only)}"
        else:
            record["A − B"] = format_interval(row.effect, row.effect_low, row.effect_high)
            record["only A / only B"] = ""
        record["p"] = f"{row.p:.2g}"
        record["p (Holm)"] = f"{row.p_holm:.2g}"
        # NaN: no difference at all is detectable at this n and level.
        record["detectable ≥"] = "none" if is_nan(row.mdd) else f"{row.mdd:.3f}"
        record["underpowered"] = "yes" if row.underpowered else ""
        records.append(record)
    return pd.DataFrame.from_records(records)


def format_costs(costs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {
                "behavior": row.behavior,
                "method": row.method,
                "vectors": int(row.num_vectors),
                "model sweeps": int(row.forward_passes),
                "× power": format_number(row.forward_passes_vs_power, 1),
                "wall s": f"{row.wall_time_s:.1f}",
                "× power ": format_number(row.wall_time_s_vs_power, 1),
                "converged": ""
                if row.converged is None or is_nan(row.converged)
                else str(bool(row.converged)),
            }
            for row in costs.itertuples()
        ]
    )


def format_capability(rows: list[dict]) -> pd.DataFrame:
    base = {(r["task"], r["metric"]): r["value"] for r in rows if r["method"] == UNSTEERED}
    records = []
    for r in rows:
        half = 1.96 * r["stderr"] if r.get("stderr") is not None else math.nan
        records.append(
            {
                "task": r["task"],
                "metric": r["metric"],
                "behavior": r["behavior"] or "–",
                "method": r["method"],
                "scale": format_number(r["scale"], 2),
                "score [95% CI]": format_interval(r["value"], r["value"] - half, r["value"] + half)
                if not math.isnan(half)
                else f"{r['value']:.3f}",
                "vs unsteered": f"{r['value'] - base.get((r['task'], r['metric']), math.nan):+.3f}",
            }
        )
    return pd.DataFrame.from_records(records)


def format_recovered(recovered: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {
                "behavior": row.behavior,
                "method": row.method,
                "recovered": format_number(row.recovered, 2),
            }
            for row in recovered.itertuples()
        ]
    )


def p_value_of(tests: pd.DataFrame, behavior: str, a: str, b: str) -> str:
    if tests.empty:
        return ""
    hit = tests[(tests.behavior == behavior) & (tests.a == a) & (tests.b == b)]
    return f"{hit['p_holm'].iloc[0]:.2g}" if len(hit) else ""


def format_number(value: Any, digits: int) -> str:
    if value is None or is_nan(value):
        return "–"
    return f"{float(value):.{digits}f}".rstrip("0").rstrip(".") if digits else str(value)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
