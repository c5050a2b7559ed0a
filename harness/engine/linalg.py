"""Small dense linear algebra on blocks of row vectors."""

from __future__ import annotations

import torch


def orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``(k, d)`` of the span of ``rows`` ``(k, d)`` (thin QR)."""
    return torch.linalg.qr(rows.T).Q.T.contiguous()


def random_orthonormal_rows(
    rows: int, dim: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``rows`` orthonormal rows ``(rows, dim)`` spanning a uniformly random subspace (QR of
    a seeded Gaussian): the start block of every power iteration, so the same seed starts
    per-pair Power Steering and the sensitivity map from the same subspace."""
    generator = torch.Generator().manual_seed(seed)
    return orthonormal_rows(torch.randn(rows, dim, generator=generator, dtype=dtype))


def largest_principal_angle(first: torch.Tensor, second: torch.Tensor) -> float:
    """Largest principal angle (radians) between the row spaces of two orthonormal ``(k, d)``.

    Computed as ``arcsin`` of the residual of projecting one space onto the other, which
    stays accurate for tiny angles where ``arccos`` of the cosines would not.
    """
    first, second = first.double(), second.double()
    residual = second - (second @ first.T) @ first
    sine = torch.linalg.matrix_norm(residual, ord=2).clamp(max=1.0)
    return float(torch.arcsin(sine))


def fix_signs(rows: torch.Tensor) -> torch.Tensor:
    """Flip each row so its largest-magnitude entry is positive: a reproducible sign."""
    pivots = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True))
    return rows * torch.where(pivots < 0, -1.0, 1.0).to(rows.dtype)
