"""Power Steering: top right singular vectors of the layer-to-layer Jacobian.

Block power (subspace) iteration on ``JᵀJ`` with a Rayleigh–Ritz step each iteration, so
the directions come out sorted by singular value, and convergence is judged on the
subspace of the top ``k`` Ritz vectors.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.jacobian import JvpMode, LayerJacobian
from harness.engine.layers import LayerSpec
from harness.engine.linalg import (
    fix_signs,
    largest_principal_angle,
    orthonormal_rows,
    random_orthonormal_rows,
)
from harness.engine.methods.registry import register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import TargetTokens
from harness.errors import PowersteerError


@register_method("power", label="Power Steering", colour="C0", rank=0)
def power_steering(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    max_iter: int = 15,
    tol: float = 1e-3,
    seed: int = 0,
    target_tokens: TargetTokens = None,
    oversample: int = 4,
    jvp_mode: JvpMode = "auto",
    max_rows: int | None = None,
    progress: bool = False,
) -> SteeringVectors:
    """Top-``k`` right singular vectors of ``J = ∂h_target/∂θ`` (θ added at ``source``), ``k = num_vectors``.

    Each iteration runs one JVP (``Z = J V``, a tangent-carrying forward pass over the
    block of ``k + oversample`` vectors), a Rayleigh–Ritz step on ``Z`` and, unless it
    stopped, one VJP (``Jᵀ Z``, a backward pass over a graph built once). It stops when
    the top-``k`` Ritz subspace moves by less than ``tol`` radians (largest principal
    angle) or after ``max_iter`` iterations; ``.converged`` says which.

    Oversampling (extra block columns that are iterated but not returned) makes the
    top-``k`` subspace converge at the rate ``(σ_{k+oversample+1} / σ_k)²`` per iteration
    instead of ``(σ_{k+1} / σ_k)²``: on small spectral gaps it halves the iterations for a
    few more rows per pass.

    Returns ``.vectors`` ``(k, d_model)`` unit rows, ``.singular_values`` ``(k,)``
    descending, ``.iterations`` and the measured cost.
    """
    started = time.perf_counter()
    d_model = lm.d_model
    k = num_vectors
    if not 1 <= k <= d_model or oversample < 0:
        raise PowersteerError(
            f"num_vectors={k} must be in 1..d_model={d_model} and oversample={oversample} >= 0; "
            "ask for fewer vectors"
        )
    block = min(k + oversample, d_model)
    if max_iter < 1:
        raise PowersteerError(f"max_iter={max_iter} must be at least 1")
    jacobian = LayerJacobian(
        lm,
        prompts,
        source,
        target,
        target_tokens=target_tokens,
        jvp_mode=jvp_mode,
        max_rows=max_rows,
    )
    basis = random_orthonormal_rows(block, d_model, seed=seed, dtype=jacobian.dtype).to(lm.device)

    previous_top: torch.Tensor | None = None
    converged = False
    bar = tqdm(range(1, max_iter + 1), desc="power iteration", disable=not progress, leave=False)
    for iteration in bar:
        images = jacobian.jvp(basis)
        _check_finite(images, "J V")
        values, ritz = rayleigh_ritz(basis, images)
        top = ritz[:k]
        if previous_top is not None:
            change = largest_principal_angle(previous_top, top)
            bar.set_postfix(angle=f"{change:.1e}", sigma1=f"{float(values[0]):.3g}")
            if change < tol:
                converged = True
                break
        previous_top = top
        if iteration < max_iter:
            basis = orthonormal_rows(jacobian.vjp(images))
    jacobian.release()
    if not converged:
        warnings.warn(
            f"Power Steering did not converge in {max_iter} iterations (tol={tol} rad); "
            "raise max_iter or oversample",
            stacklevel=2,
        )
    return SteeringVectors(
        method="power",
        vectors=fix_signs(top.float().cpu()),
        values=values[:k].float().cpu(),
        source=jacobian.source,
        target=jacobian.target,
        seed=seed,
        forward_passes=jacobian.passes.sweeps,
        prompt_passes=jacobian.passes.prompt_sweeps,
        wall_time_s=time.perf_counter() - started,
        iterations=iteration,
        converged=converged,
        options={
            "max_iter": max_iter,
            "tol": tol,
            "target_tokens": target_tokens,
            "oversample": oversample,
            "jvp_mode": jacobian.jvp_mode,
        },
    )


def rayleigh_ritz(basis: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values and vectors of ``JᵀJ`` on the span of ``basis`` ``(b, d)``.

    ``images`` ``(b, M)`` holds ``J v`` for each basis row. The Gram matrix
    ``images imagesᵀ = Bᵀ JᵀJ B`` is tiny (``b × b``); its eigenpairs give the singular
    values ``σ`` (descending) and the rotated basis ``(b, d)`` in float64.
    """
    images = images.double()
    gram = images @ images.T
    eigenvalues, rotation = torch.linalg.eigh(gram)
    order = torch.argsort(eigenvalues, descending=True)
    singular_values = eigenvalues[order].clamp(min=0.0).sqrt()
    ritz_vectors = rotation[:, order].T @ basis.double()
    return singular_values, ritz_vectors


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise PowersteerError(
            f"{what} contains NaN or infinity: the model's activations overflow in this dtype; "
            "load the model in float32 (dtype='float32')"
        )


__all__ = ["power_steering"]
