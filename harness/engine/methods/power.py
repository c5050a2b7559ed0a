"""Power Steering: top right singular vectors of the layer-to-layer Jacobian.

The vectors are the top eigenvectors of ``JᵀJ``, found from products alone by
:mod:`harness.engine.subspace`: randomized block Krylov by default (every product kept,
Rayleigh–Ritz on the whole space), block power iteration on request. Convergence is the
relative residual of each returned vector, and the result says which vectors are
individually determined and which only as a band of nearly equal singular values.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.jacobian import JvpMode, LayerJacobian
from harness.engine.layers import LayerSpec
from harness.engine.linalg import fix_signs
from harness.engine.methods.registry import Limit, check_limits, register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import TargetTokens
from harness.engine.sites import Site
from harness.engine.subspace import RitzPairs, Solver, SubspaceSolver, bands
from harness.errors import PowersteerError

BAND_GAP = 0.05  # neighbouring singular values within 5% of each other form one band
LIMITS = {
    "max_iter": Limit(low=1),
    "tol": Limit(low=0, strict=True),
    "oversample": Limit(low=0),
    "band_gap": Limit(low=0, high=1),
    "max_rows": Limit(low=1),
}


@register_method("power", label="Power Steering", colour="C0", rank=0, limits=LIMITS)
def power_steering(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    solver: Solver = "krylov",
    max_iter: int = 15,
    tol: float = 1e-3,
    seed: int = 0,
    init: torch.Tensor | None = None,
    target_tokens: TargetTokens = None,
    oversample: int = 4,
    band_gap: float = BAND_GAP,
    jvp_mode: JvpMode = "auto",
    max_rows: int | None = None,
    source_site: Site = "block",
    target_site: Site = "block",
    at: torch.Tensor | None = None,
    at_scale: float = 1.0,
    progress: bool = False,
) -> SteeringVectors:
    """Top ``num_vectors`` right singular vectors of ``J = ∂h_target/∂θ`` (θ at ``source``).

    Each step runs one JVP (``J V`` for a block of ``num_vectors + oversample`` vectors, one
    tangent-carrying forward pass) and one VJP (``Jᵀ J V``, a backward pass), then a
    Rayleigh–Ritz step. ``solver="krylov"`` keeps every block (the space grows by a block a
    step); ``"power"`` keeps the latest. It stops when every returned vector's relative
    residual ``‖JᵀJ v − σ² v‖ / σ²`` is below ``tol``, or after ``max_iter`` steps, or when
    the space can grow no more; ``.converged`` says whether the residuals met ``tol``.
    ``init`` ``(r, d_model)`` starts the first block from given directions (a warm start).
    ``source_site``/``target_site`` move θ and the read-out to a block's attention or MLP
    output; ``at`` (times ``at_scale``) linearises ``J`` at that steered point instead of
    0 (see :class:`~harness.engine.jacobian.LayerJacobian`).

    Returns ``.vectors`` ``(num_vectors, d_model)`` unit rows, ``.singular_values``
    descending, ``.residuals``, ``.bands`` (groups of vectors whose singular values lie
    within ``band_gap`` of each other: only a group's span is determined) and the cost.
    """
    started = time.perf_counter()
    d_model = lm.d_model
    if not 1 <= num_vectors <= d_model:
        raise PowersteerError(
            f"num_vectors={num_vectors} must be in 1..d_model={d_model}; ask for fewer vectors"
        )
    check_limits(
        "power", LIMITS, max_iter=max_iter, tol=tol, oversample=oversample, band_gap=band_gap,
        max_rows=max_rows,
    )  # fmt: skip
    jacobian = LayerJacobian(
        lm, prompts, source, target, target_tokens=target_tokens, jvp_mode=jvp_mode,
        max_rows=max_rows, source_site=source_site, target_site=target_site, at=at,
        at_scale=at_scale,
    )  # fmt: skip
    state = SubspaceSolver.start(
        num_vectors, min(num_vectors + oversample, d_model), d_model, solver=solver, tol=tol,
        seed=seed, init=init, dtype=jacobian.dtype, device=lm.device,
    )  # fmt: skip
    ritz = _solve(jacobian, state, max_iter, progress)
    jacobian.release()
    if not state.converged:
        worst = float(ritz.residuals[:num_vectors].max())
        warnings.warn(
            f"Power Steering did not converge in {state.steps} steps: the largest relative "
            f"residual is {worst:.1e} (tol {tol:g}); raise max_iter or loosen tol",
            stacklevel=2,
        )
    groups = bands(ritz.values, band_gap)
    return SteeringVectors(
        method="power",
        vectors=fix_signs(ritz.vectors[:num_vectors].float().cpu()),
        values=ritz.values[:num_vectors].float().cpu(),
        source=jacobian.source,
        target=jacobian.target,
        seed=seed,
        forward_passes=jacobian.passes.sweeps,
        prompt_passes=jacobian.passes.prompt_sweeps,
        wall_time_s=time.perf_counter() - started,
        iterations=state.steps,
        converged=state.converged,
        residuals=ritz.residuals[:num_vectors].float().cpu(),
        bands=[[i for i in group if i < num_vectors] for group in groups if group[0] < num_vectors],
        options={
            "solver": solver,
            "max_iter": max_iter,
            "tol": tol,
            "target_tokens": target_tokens,
            "oversample": oversample,
            "band_gap": band_gap,
            "jvp_mode": jacobian.jvp_mode,
            "warm_start": init is not None,
            "source_site": source_site,
            "target_site": target_site,
            "linearised_at": at is not None,
            "at_scale": at_scale,
        },
    )


def _solve(
    jacobian: LayerJacobian, state: SubspaceSolver, max_iter: int, progress: bool
) -> RitzPairs:
    """Feed ``JᵀJ`` products of the solver's current block until it is done; returns the
    best Ritz pairs it saw."""
    bar = tqdm(range(max_iter), desc="Power Steering", disable=not progress, leave=False)
    for _ in bar:
        images = jacobian.jvp(state.current)
        _check_finite(images, "J V")
        latest = state.update(jacobian.vjp(images))
        worst = state.worst_residual(latest)
        bar.set_postfix(residual=f"{worst:.1e}", sigma1=f"{float(latest.values[0]):.3g}")
        if state.done:
            break
    bar.close()
    if state.ritz is None:  # max_iter >= 1 is checked by the caller
        raise PowersteerError("Power Steering ran no step")
    return state.ritz


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise PowersteerError(
            f"{what} contains NaN or infinity: the model's activations overflow in this dtype; "
            "load the model in float32 (dtype='float32')"
        )


__all__ = ["power_steering"]
