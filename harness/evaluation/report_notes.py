"""The report's plain-language findings: what a reader must not over-read.

Power Steering's convergence and bands (when the selected vector's individual direction is
arbitrary), and the null results the test prompts were too few to resolve.
"""

from __future__ import annotations

import math

import pandas as pd


def underpowered_text(tests: pd.DataFrame) -> str | None:
    """One line naming the null results these prompts could not resolve, or None."""
    weak = tests[tests["underpowered"].astype(bool)] if "underpowered" in tests else tests[:0]
    if weak.empty:
        return None
    pairs = ", ".join(f"{row.a} vs {row.b}" for row in weak.itertuples())
    detectable = sorted({round(float(value), 3) for value in weak["mdd"].dropna()})
    if not detectable:
        bound = "no difference could have been detected"
    else:
        span = (
            f"{detectable[0]:g}"
            if len(detectable) == 1
            else (f"{detectable[0]:g} to {detectable[-1]:g}")
        )
        bound = f"differences below {span} could not have been detected"
    return (
        f"Underpowered null results ({pairs}): at these n and the Holm-adjusted level, "
        f'{bound} (power 0.8); "not distinguishable" here is not evidence of no effect. '
        "More test prompts would resolve them."
    )


def identifiability_text(meta: dict) -> str:
    """What Power Steering's vectors are worth individually: convergence, bands, and
    whether the selected vector is one of a band (then any rotation inside it is as good)."""
    residuals = meta.get("residuals") or []
    options = meta.get("options", {})
    verdict = "converged" if meta.get("converged") else "did NOT converge"
    parts = [
        f"Power Steering ({options.get('solver', 'power')}) {verdict} after "
        f"{meta.get('iterations')} steps: largest relative residual "
        f"{max(residuals) if residuals else math.nan:.1e} "
        f"(tol {options.get('tol')})."
    ]
    shared = [band for band in meta["bands"] if len(band) > 1]
    gap = options.get("band_gap")
    if shared:
        listed = "; ".join(f"v{band[0]}–v{band[-1]}" for band in shared)
        parts.append(
            f"Bands of singular values within {gap} of each other ({listed}): only each band's "
            "span is determined, not its individual vectors."
        )
    else:
        parts.append(f"Every vector is individually determined (no two σ within {gap}).")
    chosen = (meta.get("selected") or {}).get("vector")
    band_of_chosen = next((band for band in shared if chosen in band), None)
    if band_of_chosen is not None:
        parts.append(
            f"The selected vector v{chosen} lies in a band: another run (seed, prompts) can "
            "return a different vector of the same span, so its effect is the band's, "
            "not a stable direction's."
        )
    return " ".join(parts)
