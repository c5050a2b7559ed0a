"""The result every steering-vector method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SteeringVectors:
    """Steering directions found by one method for one (source, target) layer pair.

    ``vectors`` is ``(k, d_model)`` float32 on the CPU with unit rows; a direction has no
    preferred sign, so downstream code tries ``+v`` and ``-v``. ``values`` is ``(k,)``:
    singular values (Power Steering), objective values (MELBO) or NaN (random). Cost is
    measured, not estimated: ``forward_passes`` counts model sweeps actually run (forward,
    tangent-carrying forward and backward each count one, however many vectors rode along
    the batch), ``prompt_passes`` weights each sweep by the copies of the prompt set it
    carried, and ``wall_time_s`` is the elapsed time of the whole call.
    """

    method: str
    vectors: torch.Tensor
    values: torch.Tensor
    source: int
    target: int
    seed: int
    forward_passes: int = 0
    prompt_passes: float = 0.0
    wall_time_s: float = 0.0
    iterations: int | None = None
    converged: bool | None = None
    radius: float | None = None
    residuals: torch.Tensor | None = None
    """Power Steering: each vector's relative residual ``‖JᵀJ v − σ² v‖ / σ²``."""
    bands: list[list[int]] | None = None
    """Power Steering: vectors grouped into bands of nearly equal singular values. A band
    of one is individually determined; a larger band only as a subspace (any rotation of
    its vectors is as good)."""
    history: list[list[float]] | None = None
    """MELBO: per vector, the objective after 0, 1, …, ``steps`` ascent steps (the last
    entry is the vector's value)."""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def determined(self) -> list[bool] | None:
        """Per vector: individually determined (alone in its band); None without bands."""
        if self.bands is None:
            return None
        alone = {group[0] for group in self.bands if len(group) == 1}
        return [index in alone for index in range(self.num_vectors)]

    @property
    def singular_values(self) -> torch.Tensor:
        """Power Steering's singular values ``σ₁ ≥ … ≥ σ_k`` (an alias of ``values``)."""
        return self.values

    def metadata(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-ready values."""
        return {
            "method": self.method,
            "source": self.source,
            "target": self.target,
            "seed": self.seed,
            "num_vectors": self.num_vectors,
            "values": [float(v) for v in self.values],
            "forward_passes": self.forward_passes,
            "prompt_passes": self.prompt_passes,
            "wall_time_s": self.wall_time_s,
            "iterations": self.iterations,
            "converged": self.converged,
            "radius": self.radius,
            "residuals": None if self.residuals is None else [float(r) for r in self.residuals],
            "bands": self.bands,
            "history": self.history,
            "options": self.options,
        }
