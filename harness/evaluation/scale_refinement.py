"""Adaptive scale search: refine a method's selected scale at a coherence cliff.

The grid's best coherent scale and the next grid scale that breaks coherence bracket the
largest usable scale; bisection between them (``steering.refine_steps`` steps, on the
select prompts only) probes the scales the grid never tried. Every probed cell is an
ordinary cell (cached like any other, kept in ``results.parquet`` with ``refinement``
true); the refined selection is :func:`harness.evaluation.analysis.select_cells` over the
grid's best cell and the probes, so the rule that chose on the grid chooses here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from harness.evaluation.analysis import select_cells
from harness.evaluation.cells import Cell, rows_of

# A cell "breaks coherence" when fewer than half its outputs are coherent: the threshold
# select_cells uses for score metrics.
COHERENT_CELL_FRACTION = 0.5


def coherent_fraction(rows: pd.DataFrame, cell: Cell) -> float:
    """The coherent share of ``cell``'s rows (NaN when it has none)."""
    part = rows_of(rows, cell)
    return float(part["coherent"].astype(bool).mean()) if len(part) else float("nan")


def refine_scale(
    select_rows: pd.DataFrame,
    chosen: Cell,
    grid: Sequence[float],
    steps: int,
    metric: str,
    probe: Callable[[Cell], pd.DataFrame],
) -> tuple[Cell, pd.DataFrame]:
    """The refined cell for ``chosen`` and the rows of every probed cell.

    ``select_rows`` hold ``chosen``'s grid cells (with ``coherent``); ``probe(cell)``
    evaluates one cell on the select prompts and returns its rows with ``coherent``. No
    probe is made when ``steps`` is 0, when ``chosen.scale`` is the largest grid scale, or
    when the next grid scale keeps coherence (then the grid's choice was not cut short by
    a cliff). Each step probes the midpoint of the bracket and keeps the half whose ends
    differ in coherence.
    """
    larger = sorted(s for s in grid if s > chosen.scale)
    probed = select_rows.iloc[0:0]
    if steps == 0 or not larger:
        return chosen, probed
    upper = Cell(chosen.method, chosen.vector, chosen.sign, larger[0])
    if not coherent_fraction(select_rows, upper) < COHERENT_CELL_FRACTION:
        return chosen, probed
    low, high = chosen.scale, upper.scale
    frames = []
    for _ in range(steps):
        middle = Cell(chosen.method, chosen.vector, chosen.sign, (low + high) / 2)
        rows = probe(middle)
        frames.append(rows)
        if coherent_fraction(rows, middle) >= COHERENT_CELL_FRACTION:
            low = middle.scale
        else:
            high = middle.scale
    probed = pd.concat(frames, ignore_index=True)
    at_chosen = rows_of(select_rows, chosen)
    refined = select_cells(pd.concat([at_chosen, probed], ignore_index=True), metric)
    return refined[chosen.method], probed
