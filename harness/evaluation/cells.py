"""A cell: one steering setting a sweep evaluates on one split's prompts.

Its own module because the sweep creates cells, the analysis selects them and the report
labels them; none of those should import another to learn what a cell is.
"""

from __future__ import annotations

from dataclasses import dataclass

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
