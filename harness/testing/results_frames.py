"""Hand-built sweep results: the rows of ``results.parquet`` without running a model.

The analysis, the expectations and the report read nothing but this frame, so their tests
build the smallest one that shows a rule, with outcomes chosen so the expected numbers can
be worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd


def cell_rows(
    method: str,
    scale: float,
    outcomes: Sequence[bool] | Sequence[float],
    coherent: Sequence[bool] | None = None,
    *,
    vector: int = 0,
    sign: int = 1,
    split: str = "select",
    behavior: str = "b",
    selected_scale: float | None = None,
) -> list[dict]:
    """One cell's rows, prompt ``i`` getting ``outcomes[i]``.

    Bools make a success-metric cell (``success`` set, ``score`` 1.0 or 0.0), floats a
    score-metric cell (``success`` None). Every output is coherent unless ``coherent``
    says otherwise; ``selected_scale`` is the method's selected scale (NaN when None, as
    for the unsteered rows).
    """
    metric = "success" if isinstance(outcomes[0], bool) else "score"
    coherent = coherent if coherent is not None else [True] * len(outcomes)
    return [
        {
            "behavior": behavior,
            "metric": metric,
            "split": split,
            "prompt_index": i,
            "prompt": f"prompt {i}",
            "method": method,
            "vector": vector,
            "sign": sign,
            "scale": scale,
            "completion": f"completion {i}",
            "success": bool(outcome) if metric == "success" else None,
            "score": float(outcome),
            "coherent": bool(is_coherent),
            "loglik": -1.0,
            "repetition": 0.0,
            "selected_scale": math.nan if selected_scale is None else selected_scale,
        }
        for i, (outcome, is_coherent) in enumerate(zip(outcomes, coherent, strict=True))
    ]


def results_frame(*cells: list[dict]) -> pd.DataFrame:
    """The frame of the rows of ``cells`` (each from :func:`cell_rows`), in order."""
    return pd.DataFrame.from_records([row for cell in cells for row in cell])


def successes_on(indices: Sequence[int] | range, n: int) -> list[bool]:
    """``n`` outcomes, successes at ``indices``."""
    chosen = set(indices)
    return [i in chosen for i in range(n)]
