"""What a CI run checks: a behavior's ``expect:`` thresholds and a stored baseline.

Each check is made for one behavior x method on the held-out prompts, with the method at
the vector, sign and scale it selected on the select prompts:

* ``min_success``: the effective success rate (incoherent outputs count as failures) is
  at least the threshold;
* ``beats``: against each listed method or ``unsteered``, the method is better on the same
  prompts with a significant paired test (exact McNemar on effective success, bootstrap on
  scores), Holm-corrected over the listed comparisons, at ``ALPHA``;
* ``max_coherence_drop``: the coherent fraction is at most this much below the unsteered
  model's;
* **baseline**: the value is not below the lower end of the baseline's 95% interval. The
  interval is the statistical noise of the baseline's own measurement (Wilson for rates,
  bootstrap for scores), so a drop inside it passes and a drop beyond it fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import PowersteerError
from harness.evaluation.analysis import comparisons, selected_table
from harness.evaluation.behaviors import Behavior
from harness.evaluation.cells import UNSTEERED
from harness.files import atomic_write_json

ALPHA = 0.05
BASELINE_VERSION = 1


@dataclass(frozen=True)
class Check:
    """One expectation: what was expected, what was measured, and whether it held."""

    name: str
    passed: bool
    expected: str
    measured: str

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        return f"{mark} {self.name}: expected {self.expected}; measured {self.measured}"


def headline(results: pd.DataFrame, behavior: str, method: str) -> dict[str, Any]:
    """The method's held-out value at its selected scale, as stored in a baseline."""
    table = selected_table(results[results["behavior"] == behavior])
    row = table[table["method"] == method]
    if row.empty:
        raise PowersteerError(f"no held-out results for {behavior}/{method}; run the sweep first")
    row = row.iloc[0]
    return {
        "metric": str(results.loc[results["behavior"] == behavior, "metric"].iloc[0]),
        "value": float(row["value"]),
        "low": float(row["low"]),
        "high": float(row["high"]),
        "n": int(row["n"]),
        "scale": float(row["scale"]),
        "coherent_fraction": float(row["coherent_fraction"]),
    }


def describe(entry: dict[str, Any]) -> str:
    kind = "effective success" if entry["metric"] == "success" else "mean score"
    return (
        f"{kind} {entry['value']:.3f} (95% CI {entry['low']:.3f} to {entry['high']:.3f}) "
        f"at scale {entry['scale']:g} on {entry['n']} held-out prompts"
    )


def expectation_checks(results: pd.DataFrame, behavior: Behavior, method: str) -> list[Check]:
    """The ``expect:`` checks of ``behavior`` for ``method`` (see the module docstring)."""
    rows = results[results["behavior"] == behavior.name]
    now = headline(rows, behavior.name, method)
    expect, checks = behavior.expect, []
    if expect.min_success is not None:
        checks.append(
            Check(
                "min_success",
                now["value"] >= expect.min_success,
                f"effective success >= {expect.min_success:g}",
                describe(now),
            )
        )
    others = [b for b in expect.beats if b != method]
    if others:
        table = comparisons(rows, pairs=[(method, b) for b in others])
        for b in others:
            hit = table[table["b"] == b] if not table.empty else table
            if hit.empty:
                checks.append(
                    Check(
                        f"beats {b}",
                        False,
                        f"a comparison with {b}",
                        f"{b} was not measured in this run",
                    )
                )
                continue
            test = hit.iloc[0]
            passed = bool(test["effect"] > 0 and test["p_holm"] < ALPHA)
            checks.append(
                Check(
                    f"beats {b}",
                    passed,
                    f"better than {b} with Holm-corrected p < {ALPHA:g} ({test['test']})",
                    f"difference {test['effect']:+.3f}, p = {test['p_holm']:.2g} "
                    f"(scales {test['scale_a']:g} vs {test['scale_b']:g}, n = {int(test['n'])})",
                )
            )
    if expect.max_coherence_drop is not None:
        reference = headline(rows, behavior.name, UNSTEERED)["coherent_fraction"]
        drop = reference - now["coherent_fraction"]
        checks.append(
            Check(
                "max_coherence_drop",
                drop <= expect.max_coherence_drop,
                f"coherent fraction at most {expect.max_coherence_drop:g} below unsteered "
                f"({reference:.3f})",
                f"{now['coherent_fraction']:.3f} (drop {drop:.3f})",
            )
        )
    return checks


def baseline_check(current: dict[str, Any], baseline: dict[str, Any]) -> Check:
    """Pass unless ``current`` fell below the lower end of the baseline's 95% interval."""
    return Check(
        "baseline",
        current["value"] >= baseline["low"],
        f"at least {baseline['low']:.3f}, the lower end of the baseline's interval "
        f"({describe(baseline)})",
        describe(current),
    )


def read_baseline(path: str | os.PathLike[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{behavior: {method: entry}}`` from a baseline file ({} when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PowersteerError(
            f"{path}: not a readable baseline ({error}); fix it or rewrite it with "
            "pytest --steer-update-baseline"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("behaviors"), dict):
        raise PowersteerError(
            f"{path}: no 'behaviors' mapping; rewrite it with pytest --steer-update-baseline"
        )
    return data["behaviors"]


def write_baseline(
    path: str | os.PathLike[str], entries: dict[str, dict[str, dict[str, Any]]]
) -> Path:
    """Merge ``entries`` over the baseline at ``path`` and write it (atomically)."""
    path = Path(path)
    merged = read_baseline(path)
    for behavior, methods in entries.items():
        merged.setdefault(behavior, {}).update(methods)
    data = {
        "version": BASELINE_VERSION,
        "behaviors": {b: dict(sorted(m.items())) for b, m in sorted(merged.items())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, data)
