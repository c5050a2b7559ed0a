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


CONTROL = "random"
"""The random-direction control's method name; its later draws are ``random#2``, ``random#3``."""


def control_draw(draw: int) -> str:
    """The method name of the control's ``draw``-th independent draw (the first is ``random``)."""
    return CONTROL if draw == 1 else f"{CONTROL}#{draw}"


def draw_number(method: str) -> int | None:
    """Which draw of the control ``method`` names (1 for ``random``), None for other methods."""
    if method == CONTROL:
        return 1
    prefix = f"{CONTROL}#"
    if method.startswith(prefix) and method[len(prefix) :].isdigit():
        return int(method[len(prefix) :])
    return None
