"""Where each method's steering vectors point, relative to each other and to the behavior.

For one behavior of a run: the cosine of each method's selected vector (its row
``selected.vector`` times ``selected.sign``) with the difference-of-means direction (the
``caa`` set, when the behavior has a contrast set) and with every other method's selected
vector; the principal angles between the Power Steering and MELBO subspaces; and which
band of Power Steering's spectrum the selected vector came from. These show whether the
unsupervised vectors align with the model's own (supervised) representation of the
behavior, and with each other.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from harness.engine.linalg import orthonormal_rows
from harness.engine.methods import ranked_methods
from harness.engine.vectors_io import load_vector_sets
from harness.evaluation.run_dir import VECTORS_FILE

DIFFERENCE_OF_MEANS = "caa"
DIFFERENCE_OF_MEANS_COLUMN = "difference of means"
# Rows whose Gram matrix is the identity to this are used as the basis they already are.
ORTHONORMAL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BehaviorGeometry:
    """The geometry of one behavior's vectors.

    ``cosines``: one row per method with a selection (index: method name), a column
    ``difference of means`` when the behavior has one, then one column per method.
    ``angles``: principal angles in degrees, smallest first, between the Power Steering and
    MELBO subspaces (None without both); ``orthonormalised``: the methods whose rows were
    not orthonormal and were orthonormalised before the angles were taken.
    ``power_vector`` and ``power_band``: Power Steering's selected vector and the indices
    of its band (None when unknown).
    """

    cosines: pd.DataFrame
    angles: torch.Tensor | None
    orthonormalised: tuple[str, ...]
    power_vector: int | None
    power_band: list[int] | None
    subspace_sizes: tuple[int, int] | None = None


def read_vectors(run_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every ``behavior/method`` set's vectors ``(k, d)`` of a run directory (``{}`` when
    it saved none), read and checked by :func:`harness.engine.vectors_io.load_vector_sets`."""
    path = Path(run_dir) / VECTORS_FILE
    if not path.is_file():
        return {}
    return {name: result.vectors for name, (result, _) in load_vector_sets(path).items()}


def selected_direction(vectors: torch.Tensor, metadata: dict) -> torch.Tensor | None:
    """The method's selected vector with its sign applied (None when nothing was selected)."""
    selected = metadata.get("selected")
    if not selected:
        return None
    return vectors[int(selected["vector"])].double() * int(selected.get("sign", 1))


def cosine_table(
    directions: dict[str, torch.Tensor], reference: torch.Tensor | None = None
) -> pd.DataFrame:
    """Cosines between ``directions`` (rows and columns in their order), preceded by a
    ``difference of means`` column of each one's cosine with ``reference`` when given."""
    names = list(directions)
    if not names:
        return pd.DataFrame()
    units = torch.nn.functional.normalize(torch.stack([directions[n] for n in names]).double())
    frame = pd.DataFrame((units @ units.T).numpy(), index=names, columns=names)
    if reference is not None:
        along = torch.nn.functional.normalize(reference.double(), dim=0)
        frame.insert(0, DIFFERENCE_OF_MEANS_COLUMN, (units @ along).numpy())
    return frame


def orthonormal_basis(rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``rows`` in float64 when they are orthonormal already, else an orthonormal basis of
    their span; the flag says whether they had to be orthonormalised."""
    rows = rows.double()
    gram = rows @ rows.T
    deviation = float((gram - torch.eye(len(rows), dtype=rows.dtype)).abs().max())
    if deviation <= ORTHONORMAL_TOLERANCE:
        return rows, False
    return orthonormal_rows(rows), True


def principal_angles(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """All principal angles (degrees, smallest first) between the row spaces of two
    orthonormal ``(k, d)`` bases; there are as many as the smaller ``k``.

    The cosines are the singular values of ``first @ second.T``; ``arccos`` of a cosine
    near 1 loses the angle, so angles under 45 degrees come from ``arcsin`` of the
    singular values of the residual of projecting the smaller space onto the larger.
    """
    first, second = first.double(), second.double()
    if len(second) > len(first):
        first, second = second, first
    cosines = torch.linalg.svdvals(first @ second.T)  # descending: angles ascending
    residual = second - (second @ first.T) @ first
    sines = torch.linalg.svdvals(residual).flip(0)  # ascending, as the angles
    from_cosines = torch.arccos(cosines.clamp(-1.0, 1.0))
    from_sines = torch.arcsin(sines.clamp(0.0, 1.0))
    return torch.rad2deg(torch.where(from_cosines < math.pi / 4, from_sines, from_cosines))


def band_of_selected(metadata: dict) -> list[int] | None:
    """The indices of the band holding Power Steering's selected vector (``[vector]`` when
    it is alone); None without a selection or bands."""
    chosen = (metadata.get("selected") or {}).get("vector")
    bands = metadata.get("bands")
    if chosen is None or bands is None:
        return None
    return next((list(band) for band in bands if chosen in band), [int(chosen)])


def behavior_geometry(
    behavior: str, vectors: dict[str, torch.Tensor], vector_metadata: dict[str, dict]
) -> BehaviorGeometry | None:
    """The geometry of ``behavior``'s sets in ``vectors`` (by ``behavior/method``, with
    their metadata in ``vector_metadata``); None when the run saved none of its vectors."""
    sets = {
        method: (vectors[f"{behavior}/{method}"], vector_metadata.get(f"{behavior}/{method}", {}))
        for method in (info.name for info in ranked_methods())
        if f"{behavior}/{method}" in vectors
    }
    if not sets:
        return None
    directions = {
        method: direction
        for method, (rows, meta) in sets.items()
        if (direction := selected_direction(rows, meta)) is not None
    }
    reference = sets[DIFFERENCE_OF_MEANS][0][0] if DIFFERENCE_OF_MEANS in sets else None
    power = sets.get("power", (None, {}))[1]
    angles, orthonormalised, sizes = _power_melbo_angles(sets)
    return BehaviorGeometry(
        cosines=cosine_table(directions, reference),
        angles=angles,
        orthonormalised=orthonormalised,
        power_vector=(power.get("selected") or {}).get("vector"),
        power_band=band_of_selected(power),
        subspace_sizes=sizes,
    )


def _power_melbo_angles(
    sets: dict[str, tuple[torch.Tensor, dict]],
) -> tuple[torch.Tensor | None, tuple[str, ...], tuple[int, int] | None]:
    if "power" not in sets or "melbo" not in sets:
        return None, (), None
    bases = {method: orthonormal_basis(sets[method][0]) for method in ("power", "melbo")}
    orthonormalised = tuple(method for method, (_, changed) in bases.items() if changed)
    power, melbo = bases["power"][0], bases["melbo"][0]
    return principal_angles(power, melbo), orthonormalised, (len(power), len(melbo))


# --- for the report -----------------------------------------------------------------------


def geometry_report(
    behavior: str, vectors: dict[str, torch.Tensor], vector_metadata: dict[str, dict]
) -> tuple[pd.DataFrame, str] | None:
    """The report's cosine table and paragraph for ``behavior`` (None without vectors)."""
    geometry = behavior_geometry(behavior, vectors, vector_metadata)
    return None if geometry is None else (geometry_table(geometry), geometry_text(geometry))


def geometry_table(geometry: BehaviorGeometry) -> pd.DataFrame:
    """The cosine table as the report prints it: a ``method`` column, signed two-digit
    cosines."""
    # Rounded before the sign is printed, so a cosine of -0.001 reads +0.00, not -0.00.
    table = geometry.cosines.map(lambda cosine: f"{round(cosine, 2) + 0.0:+.2f}")
    return table.rename_axis("method").reset_index()


def geometry_text(geometry: BehaviorGeometry) -> str:
    """One paragraph: what the cosines are, the principal angles and the selected Power
    Steering vector's band."""
    parts = [
        "Cosines of each method's selected vector (sign applied)"
        + (
            " with the difference-of-means direction and with each other's."
            if DIFFERENCE_OF_MEANS_COLUMN in geometry.cosines.columns
            else " with each other's (no difference-of-means direction: no contrast set)."
        ),
        _angles_sentence(geometry),
    ]
    if geometry.power_band is not None:
        parts.append(_band_sentence(geometry.power_vector, geometry.power_band))
    return " ".join(parts)


def _angles_sentence(geometry: BehaviorGeometry) -> str:
    if geometry.angles is None or geometry.subspace_sizes is None:
        return "No principal angles: the run lacks Power Steering or MELBO vectors."
    listed = ", ".join(f"{angle:.1f}°" for angle in geometry.angles.tolist())
    power_k, melbo_k = geometry.subspace_sizes
    note = (
        f" ({' and '.join(geometry.orthonormalised)} rows orthonormalised first: they were "
        "not orthogonal, as with MELBO's orthogonal=False)"
        if geometry.orthonormalised
        else ""
    )
    return (
        f"Principal angles between the Power Steering ({power_k} vectors) and MELBO "
        f"({melbo_k} vectors) subspaces{note}: {listed}."
    )


def _band_sentence(vector: int | None, band: list[int]) -> str:
    if len(band) == 1:
        return f"The selected Power Steering vector v{vector} is alone in its band."
    return (
        f"The selected Power Steering vector v{vector} came from the band "
        f"v{band[0]}–v{band[-1]} ({len(band)} vectors, only their span is determined)."
    )
