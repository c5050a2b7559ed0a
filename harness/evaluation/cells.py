"""A cell: one steering setting a sweep evaluates on one split's prompts.

Its own module because the sweep creates cells, the analysis selects them and the report
labels them; none of those should import another to learn what a cell is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSTEERED = "unsteered"
"""The ``method`` of rows generated without steering (scale 0)."""


@dataclass(frozen=True)
class Cell:
    """One steering setting: ``method``'s vector ``vector`` times ``sign * scale``.

    The unsteered cell is :data:`UNSTEERED_CELL`, ``Cell("unsteered", -1, 0, 0.0)``.
    """

    method: str
    vector: int
    sign: int
    scale: float


UNSTEERED_CELL = Cell(UNSTEERED, -1, 0, 0.0)


def rows_of(rows: Any, cell: Cell) -> Any:
    """The rows of a results frame (a ``pandas.DataFrame``) that belong to ``cell``."""
    return rows[
        (rows["method"] == cell.method)
        & (rows["vector"] == cell.vector)
        & (rows["sign"] == cell.sign)
        & (rows["scale"] == cell.scale)
    ]
