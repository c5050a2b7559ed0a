"""Top eigenpairs of ``A = JᵀJ`` from products alone: block power or block Krylov.

The solver sees ``A`` only through ``W = A V`` for blocks ``V`` (one JVP and one VJP each),
so the same code serves one layer pair (:func:`harness.engine.methods.power_steering`)
and, pair by pair, any caller that computes the products itself.

* ``"krylov"`` (randomized block Krylov, Musco & Musco 2015): the basis grows by one block
  per step, ``span(V, AV, A²V, …)``, each new block orthogonalised twice against every
  earlier one (once is not enough in floating point). Rayleigh–Ritz runs on the whole
  space, and every product is kept as ``W = A Q``, so none is computed twice and the
  Ritz values use all of them. Memory: the basis and its images, ``2 · m · d`` floats for
  ``m`` basis vectors (``m = block · steps``; at ``d = 4096``, a block of 12 and 15 steps,
  2 × 180 × 4096 float64 = 11.8 MB).
* ``"power"`` (block subspace iteration): the basis is the latest block alone; it
  converges at ``(σ_{b+1}/σ_k)²`` per step and stalls on flat spectra.

Convergence is judged on what is being asked for, per Ritz vector ``u`` with Ritz value
``λ = σ²``: the relative residual ``‖A u − λ u‖ / λ``, known exactly from the kept
products. A small residual certifies an eigenpair of ``A`` to that accuracy whatever the
spectrum looks like; the angle a Ritz vector moves between steps (the old rule) does not,
because inside a band of nearly equal singular values vectors keep rotating although the
band's subspace has converged.

Products carry the rounding of the model's dtype, and a Krylov space that keeps growing
past what that precision resolves fills with directions whose products are mostly
rounding (measured on a bfloat16 tiny model: the residual falls to 1.6e-3 in 4 steps, then
the Ritz values drift up by half within 10). So the solver keeps the best step so far (the
smallest largest residual among the requested vectors) and stops once ``PATIENCE`` steps
in a row have not improved on it: it answers with what the products can resolve and says,
through the residual, how well.

Identifiability: neighbouring singular values within ``band_gap`` (relative) of each other
form a *band*. A vector in a band of one is individually determined; inside a larger band
only the band's subspace is, and any rotation of its vectors is as good an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.engine.linalg import orthonormal_rows, random_orthonormal_rows
from harness.errors import PowersteerError

Solver = Literal["krylov", "power"]
SOLVERS: tuple[str, ...] = ("krylov", "power")
DEFLATION_TOLERANCE = 1e-10  # a new direction this small (relative) adds nothing to the span
PATIENCE = 2  # steps without a better residual before the solver stops at its best


@dataclass
class RitzPairs:
    """The current best answer: ``values`` ``σ`` (descending), ``vectors`` ``(n, d)`` and
    each vector's relative residual ``‖JᵀJ v − σ² v‖ / σ²``."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor


@dataclass
class SubspaceSolver:
    """State of one solve. Call :meth:`update` with ``A @ current`` until :attr:`done`.

    ``current`` ``(b, d)`` is the block whose products are needed next.
    """

    num_vectors: int
    solver: Solver
    tol: float
    current: torch.Tensor
    basis: torch.Tensor = field(init=False)
    images: torch.Tensor = field(init=False)
    ritz: RitzPairs | None = field(default=None, init=False)
    """The best Ritz pairs so far (smallest largest residual among the requested vectors)."""
    steps: int = field(default=0, init=False)
    best_step: int = field(default=0, init=False)
    exhausted: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise PowersteerError(f"solver={self.solver!r}; use one of {', '.join(SOLVERS)}")
        if not self.tol > 0:
            raise PowersteerError(f"tol={self.tol} must be positive")
        empty = self.current.new_zeros(0, self.current.shape[1])
        self.basis, self.images = empty, empty.clone()

    @classmethod
    def start(
        cls,
        num_vectors: int,
        block: int,
        d_model: int,
        *,
        solver: Solver = "krylov",
        tol: float = 1e-3,
        seed: int = 0,
        init: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> SubspaceSolver:
        """A solver whose first block is ``init`` ``(r, d)`` (a warm start: a previous run's
        vectors, a difference-of-means direction) completed with seeded random directions."""
        first = random_orthonormal_rows(block, d_model, seed=seed, dtype=dtype)
        if init is not None:
            if init.shape[-1] != d_model or init.ndim > 2 or not bool(torch.isfinite(init).all()):
                raise PowersteerError(
                    f"init has shape {tuple(init.shape)}; give finite rows of length "
                    f"d_model={d_model}, shape (r, {d_model}) or ({d_model},)"
                )
            warm = init.to(dtype).reshape(-1, d_model)[:block]
            first = orthonormal_rows(torch.cat([warm, first[: block - len(warm)]]))
        return cls(num_vectors, solver, tol, first.to(device))

    @property
    def converged(self) -> bool:
        """Every requested vector's relative residual is below ``tol``."""
        if self.ritz is None:
            return False
        return bool((self.ritz.residuals[: self.num_vectors] < self.tol).all())

    @property
    def stalled(self) -> bool:
        """``PATIENCE`` steps in a row did not improve on the best residual."""
        return self.steps - self.best_step >= PATIENCE

    @property
    def done(self) -> bool:
        return self.converged or self.exhausted or self.stalled

    def worst_residual(self, ritz: RitzPairs | None = None) -> float:
        ritz = ritz or self.ritz
        return float("inf") if ritz is None else float(ritz.residuals[: self.num_vectors].max())

    def update(self, products: torch.Tensor) -> RitzPairs:
        """Take ``A @ current`` ``(b, d)``; returns the new Ritz pairs and sets ``current``."""
        block = self.current.to(self.basis.dtype)
        products = products.to(self.basis.dtype)
        if self.solver == "krylov":
            self.basis = torch.cat([self.basis, block])
            self.images = torch.cat([self.images, products])
        else:
            self.basis, self.images = block, products
        self.steps += 1
        latest = ritz_pairs(self.basis, self.images)
        if self.worst_residual(latest) < self.worst_residual():
            self.ritz, self.best_step = latest, self.steps
        following = self._next_block(products)
        if following is None:
            self.exhausted = True  # the space is invariant (or all of R^d): nothing to add
        else:
            self.current = following
        return latest

    def _next_block(self, products: torch.Tensor) -> torch.Tensor | None:
        if self.solver == "power":
            return orthonormal_rows(products)
        return new_directions(products, self.basis)


def ritz_pairs(basis: torch.Tensor, images: torch.Tensor) -> RitzPairs:
    """Rayleigh–Ritz for ``A`` on the span of orthonormal ``basis`` ``(m, d)`` given
    ``images = A basis`` (rows), in float64.

    ``H = basis imagesᵀ = Qᵀ A Q`` (symmetrised) has eigenpairs ``(λ, y)``; the Ritz vector
    is ``u = Qᵀ y`` and ``A u = imagesᵀ y`` exactly (every image is kept), so the residual
    ``‖A u − λ u‖`` costs no product.
    """
    basis, images = basis.double(), images.double()
    projected = basis @ images.T
    projected = (projected + projected.T) / 2
    eigenvalues, rotation = torch.linalg.eigh(projected)
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues, rotation = eigenvalues[order].clamp(min=0.0), rotation[:, order]
    vectors = rotation.T @ basis
    applied = rotation.T @ images
    residual = (applied - eigenvalues[:, None] * vectors).norm(dim=1)
    scale = eigenvalues.clamp(min=torch.finfo(torch.float64).tiny)
    return RitzPairs(eigenvalues.sqrt(), vectors, residual / scale)


def new_directions(products: torch.Tensor, basis: torch.Tensor) -> torch.Tensor | None:
    """An orthonormal block spanning what ``products`` adds to ``basis``'s span, or None.

    Projected off the basis twice (classical Gram–Schmidt loses orthogonality once the
    Krylov blocks grow nearly parallel; a second pass restores it to working precision);
    directions that nearly vanish after projection are dropped, so the basis stays
    orthonormal however many steps run and stops growing once it spans the space.
    """
    remainder = products
    for _ in range(2):
        remainder = remainder - (remainder @ basis.T) @ basis
    scale = float(products.norm()) or 1.0
    left, singular, right = torch.linalg.svd(remainder, full_matrices=False)
    keep = singular > DEFLATION_TOLERANCE * scale
    if not bool(keep.any()):
        return None
    fresh = right[keep]
    fresh = fresh - (fresh @ basis.T) @ basis
    return orthonormal_rows(fresh)


def bands(values: torch.Tensor, band_gap: float) -> list[list[int]]:
    """Indices grouped into runs of neighbours whose singular values are within
    ``band_gap`` of each other (relative to the larger): ``[[0], [1, 2, 3], [4]]``."""
    groups: list[list[int]] = []
    for index, value in enumerate(values.tolist()):
        previous = values[index - 1].item() if index else None
        if previous is not None and previous > 0 and (previous - value) / previous < band_gap:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups
