"""Exponential Deep Causal Transcoding (DCT): factors of the layer-to-layer map itself.

Mack & Turner's DCT writes the change a source vector causes downstream,
``Δ(θ) = h_t(θ) − h_t(0)``, as a sum of tensor terms (its Taylor series) and looks for
input factors ``v_i`` (unit, orthogonal) and output factors ``u_i`` (unit) maximising
``Σ_i ⟨u_i, Δ(R v_i)⟩``. Expanding ``Δ(R v)`` in powers of ``R`` gives the exponential
objective: every order of the series weighted by ``R^ℓ / ℓ!``. ``R`` (the input scale)
sets how far from linear the factors reach; it is calibrated so the map's departure from
its linear part on random directions, ``‖Δ(R c) − R J c‖ / ‖R J c‖``, equals ``calibration``.

Alternating maximisation, one step per iteration:

- the best ``u_i`` for the current ``v_i`` is ``Δ(R v_i) / ‖Δ(R v_i)‖`` (one forward pass
  with the ``k`` factors riding along as copies of the prompts);
- each ``v_i`` moves to ``∇_v ⟨u_i, Δ(R v)⟩ = R J(R v_i)ᵀ u_i`` (one backward pass through
  the same graph), and the block is re-orthonormalised by Gram–Schmidt in factor order.

The linear limit: as ``R → 0``, ``Δ(R v) / R → J v``, the step becomes ``v_i ← JᵀJ v_i`` up
to a per-vector scale, and Gram–Schmidt makes it orthogonal (block power) iteration on
``JᵀJ``: the factors are Power Steering's top right singular vectors, and ``value / R``
its singular values. That is what the tests check against an exact SVD.

``aggregate`` says what ``u_i`` lives on. ``"stack"`` (the default): every target position
of every prompt, the space Power Steering's Jacobian maps into, so the linear limit is
Power Steering exactly. ``"mean"``: ``Δ`` averaged over the target positions first, one
``d``-dimensional ``u_i`` shared by all prompts, as the public DCT code does (it averages
over each prompt's last positions, then over prompts; here one mean runs over all target
positions, which weighs prompts by their number of target positions); its linear limit is
the top singular vectors of the averaged Jacobian instead.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from harness.engine.jacobian import PassCount
from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.linalg import random_orthonormal_rows
from harness.engine.methods.registry import Limit, check_limits, register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.engine.sites import Site, check_site
from harness.engine.steering import autodiff_attention, run_to_block, scale_unit
from harness.errors import PowersteerError

Aggregate = Literal["stack", "mean"]
AGGREGATES = ("stack", "mean")

# The calibration searches R over this range, in multiples of the residual norm at the
# source (the scale unit): from nearly linear to well past any useful steering scale.
SEARCH_LOW, SEARCH_HIGH = 1.0 / 64.0, 8.0
SEARCH_GRID = 10  # geometric grid points bracketing the target ratio (factors of 2)
SEARCH_BISECTIONS = 8  # then bisection in log R: the bracket shrinks to 2^(1/256)

LIMITS = {
    "max_iter": Limit(low=1),
    "tol": Limit(low=0, strict=True),
    "calibration": Limit(low=0, strict=True),
    "calibration_directions": Limit(low=1),
    "radius": Limit(low=0, strict=True),
}


@register_method("dct", label="DCT", colour="C4", rank=2, limits=LIMITS)
def deep_causal_transcoding(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    radius: float | None = None,
    calibration: float = 0.5,
    calibration_directions: int = 8,
    max_iter: int = 10,
    tol: float = 1e-4,
    aggregate: Aggregate = "stack",
    seed: int = 0,
    target_tokens: TargetTokens = None,
    source_site: Site = "block",
    target_site: Site = "block",
    progress: bool = False,
) -> SteeringVectors:
    """``num_vectors`` exponential-DCT input factors at ``source`` for the map to ``target``.

    ``radius`` (raw units) is the input scale ``R``; left unset it is calibrated so that
    ``calibration_directions`` random unit directions depart from the linear map by the
    ratio ``calibration`` on average (0.5 in the public DCT code). Where no ``R`` in the
    searched range reaches that ratio (a nearly linear map), the ``R`` that came closest is
    used and a warning says which ratio was reached and what to set instead.
    ``max_iter`` alternating steps run from a random orthonormal block (seeded ``seed``);
    they stop early once no factor moves by more than ``tol`` (``1 − |cos|`` between
    successive iterates). ``aggregate`` as in the module docstring.

    Returns ``.vectors`` ``(num_vectors, d_model)`` orthonormal rows, ordered by
    ``.values`` (``⟨u_i, Δ(R v_i)⟩ = ‖Δ(R v_i)‖``, descending), ``.radius`` ``R``,
    ``.history`` (the objective summed over factors after each step) and the cost.
    """
    started = time.perf_counter()
    if not 1 <= num_vectors <= lm.d_model:
        raise PowersteerError(
            f"dct: num_vectors={num_vectors} must be in 1..d_model={lm.d_model}; ask for fewer"
        )
    check_limits(
        "dct", LIMITS, max_iter=max_iter, tol=tol, calibration=calibration,
        calibration_directions=calibration_directions, radius=radius,
    )  # fmt: skip
    if aggregate not in AGGREGATES:
        raise PowersteerError(f"dct: aggregate={aggregate!r}; use 'stack' or 'mean'")
    source_block, target_block = resolve_layer_pair(source, target, lm.n_layers)
    sites = {
        "source_site": check_site(source_site, name="source_site"),
        "target_site": check_site(target_site, name="target_site"),
    }
    batch = encode_prompts(lm, prompts, target_tokens=target_tokens)
    change = ChangeMap(lm, batch, source_block, target_block, aggregate, sites)
    calibrated = radius is None
    if radius is None:
        radius = change.calibrate(calibration, calibration_directions, seed)
    factors, values, history, steps, converged = _alternate(
        change, random_orthonormal_rows(num_vectors, lm.d_model, seed=seed, dtype=lm.compute_dtype)
        .to(lm.device), radius, max_iter, tol, progress,
    )  # fmt: skip
    order = torch.argsort(values, descending=True)
    return SteeringVectors(
        method="dct",
        vectors=factors[order].float().cpu(),
        values=values[order].float().cpu(),
        source=source_block,
        target=target_block,
        seed=seed,
        forward_passes=change.passes.sweeps,
        prompt_passes=change.passes.prompt_sweeps,
        wall_time_s=time.perf_counter() - started,
        iterations=steps,
        converged=converged,
        radius=float(radius),
        history=[history],
        options={
            "calibration": calibration if calibrated else None,
            "calibration_directions": calibration_directions if calibrated else None,
            "max_iter": max_iter,
            "tol": tol,
            "aggregate": aggregate,
            "target_tokens": target_tokens,
            **sites,
        },
    )


class ChangeMap:
    """``Δ(θ) = h_t(θ) − h_t(0)`` at the target positions for a block of ``θ`` rows.

    A block of ``k`` rows runs as one pass over ``k`` copies of the prompts (row group
    ``j`` steered by ``θ_j``), counted as one sweep carrying ``k`` prompt copies.
    """

    def __init__(
        self,
        lm: LanguageModel,
        batch: PromptBatch,
        source: int,
        target: int,
        aggregate: Aggregate,
        sites: dict[str, Site],
    ) -> None:
        self.lm, self.batch, self.source, self.target = lm, batch, source, target
        self.aggregate, self.sites = aggregate, sites
        self.passes = PassCount()
        with torch.no_grad():
            plain = run_to_block(lm, batch, target, target_site=sites["target_site"])
        self.passes.add(batch.n_prompts, batch.n_prompts)
        self.unsteered = self._read(plain, 1)[0]

    def __call__(self, thetas: torch.Tensor) -> torch.Tensor:
        """``(k, d)`` source vectors (raw units) to ``(k, M)`` changes (``(k, d)`` with
        ``aggregate="mean"``); differentiable in ``thetas``."""
        k, n = thetas.shape[0], self.batch.n_prompts
        rows = thetas.to(self.lm.dtype).repeat_interleave(n, dim=0)[:, None, :]
        hidden = run_to_block(
            self.lm, self.batch.repeat(k), self.target, source=self.source, delta=rows,
            **self.sites,
        )  # fmt: skip
        self.passes.add(k * n, n)
        return self._read(hidden, k) - self.unsteered

    def _read(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        grouped = hidden.reshape(k, self.batch.n_prompts, *hidden.shape[1:])
        at_targets = grouped[:, self.batch.target_mask].to(self.lm.compute_dtype)
        if self.aggregate == "mean":
            return at_targets.mean(dim=1)
        return at_targets.reshape(k, -1)

    def linear_images(self, directions: torch.Tensor) -> torch.Tensor:
        """``J c`` for each row (``(c, M)`` or ``(c, d)``): one backward pass builds
        ``Jᵀ``'s graph at θ = 0, then a second, differentiated through its cotangent,
        gives ``J c`` (the double-VJP trick: ``J c = ∂/∂w ⟨Jᵀ w, c⟩``)."""
        k = directions.shape[0]
        with autodiff_attention(self.lm), torch.enable_grad():
            thetas = torch.zeros_like(directions, requires_grad=True)
            outputs = self(thetas)
            probe = torch.zeros_like(outputs, requires_grad=True)
            (pulled,) = torch.autograd.grad(outputs, thetas, probe, create_graph=True)
            (images,) = torch.autograd.grad(pulled, probe, directions.to(pulled.dtype))
        self.passes.add(k * self.batch.n_prompts, self.batch.n_prompts, sweeps=2)
        return images.detach()

    def departure(self, scale: float, directions: torch.Tensor, images: torch.Tensor) -> float:
        """``sqrt(mean_c ‖Δ(R c) − R J c‖² / ‖R J c‖²)`` at ``R = scale``: how far the map
        is from linear at that input scale (0 for a linear map)."""
        with torch.no_grad():
            changes = self(scale * directions)
        linear = scale * images
        ratios = (changes - linear).pow(2).sum(1) / linear.pow(2).sum(1)
        return math.sqrt(float(ratios.mean()))

    def calibrate(self, target_ratio: float, count: int, seed: int) -> float:
        """The input scale ``R`` at which random directions depart from the linear map by
        ``target_ratio`` (first crossing on a geometric grid, then bisection in log R)."""
        unit = scale_unit(self.lm, self.batch, self.source)
        self.passes.add(self.batch.n_prompts, self.batch.n_prompts)
        # Its own seed stream, so the calibration directions are not the start block.
        generator = torch.Generator().manual_seed(seed + 7919)
        directions = torch.randn(count, self.lm.d_model, generator=generator, dtype=torch.float64)
        directions = (directions / directions.norm(dim=1, keepdim=True)).to(
            device=self.lm.device, dtype=self.lm.compute_dtype
        )
        images = self.linear_images(directions)
        grid = [SEARCH_LOW * 2.0**i for i in range(SEARCH_GRID)]
        reached = [self.departure(s * unit, directions, images) for s in grid]
        crossing = next((i for i, ratio in enumerate(reached) if ratio >= target_ratio), None)
        if crossing is None:
            best = max(range(len(grid)), key=lambda i: reached[i])
            warnings.warn(
                f"dct: calibration={target_ratio:g} is out of reach on these prompts: random "
                f"directions depart from the linear map by at most {reached[best]:.3g} "
                f"(at R = {grid[best]:g} x the residual norm, up to {SEARCH_HIGH:g} x); "
                f"using that R. Set steering.options.dct.calibration below {reached[best]:.2g} "
                "or give dct a radius",
                stacklevel=3,
            )
            return grid[best] * unit
        if crossing == 0:
            return grid[0] * unit
        low, high = math.log(grid[crossing - 1]), math.log(grid[crossing])
        for _ in range(SEARCH_BISECTIONS):
            middle = 0.5 * (low + high)
            if self.departure(math.exp(middle) * unit, directions, images) >= target_ratio:
                high = middle
            else:
                low = middle
        return math.exp(0.5 * (low + high)) * unit


def _alternate(
    change: ChangeMap,
    start: torch.Tensor,
    radius: float,
    max_iter: int,
    tol: float,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[float], int, bool]:
    """The alternating steps of the module docstring from ``start`` ``(k, d)``; returns the
    factors, their values at the returned factors, the objective history, the steps run
    and whether the factors stopped moving (below ``tol``)."""
    factors = start
    history: list[float] = []
    converged = False
    steps = 0
    bar = tqdm(total=max_iter, desc="DCT", disable=not progress, leave=False)
    while steps < max_iter:
        steps += 1
        with autodiff_attention(change.lm), torch.enable_grad():
            thetas = (radius * factors).detach().requires_grad_(True)
            changes = change(thetas)
            outputs = _unit_rows(changes.detach())  # the best u_i for these v_i
            objective = (outputs * changes).sum()
            (gradient,) = torch.autograd.grad(objective, thetas)
        change.passes.add(factors.shape[0] * change.batch.n_prompts, change.batch.n_prompts)
        _check_finite(gradient, radius)
        history.append(float(objective.detach()))
        updated = _aligned(_gram_schmidt(gradient.to(factors.dtype)), factors)
        movement = float((1.0 - (updated * factors).sum(1).abs()).max())
        factors = updated
        bar.update(1)
        bar.set_postfix(objective=f"{history[-1]:.4g}", movement=f"{movement:.1e}")
        if movement < tol:
            converged = True
            break
    bar.close()
    with torch.no_grad():
        values = change(radius * factors).norm(dim=1)
    history.append(float(values.sum()))
    return factors, values, history, steps, converged


def _gram_schmidt(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the same nested spaces as ``rows`` (row ``i`` keeps only
    what is new beyond rows ``0..i−1``): Gram–Schmidt by thin QR, whose ``Q`` columns are
    exactly that up to sign."""
    if rows.shape[0] > torch.linalg.matrix_rank(rows.double()):
        raise PowersteerError(
            "dct: the factors' gradients became linearly dependent (the map is flat along "
            "some factor at this radius); ask for fewer vectors or give a larger radius"
        )
    return torch.linalg.qr(rows.T).Q.T.contiguous()


def _aligned(rows: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Flip each row to point the way its predecessor did (QR's signs are arbitrary)."""
    signs = torch.where((rows * previous).sum(1) < 0, -1.0, 1.0).to(rows.dtype)
    return rows * signs[:, None]


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)


def _check_finite(tensor: torch.Tensor, radius: float) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise PowersteerError(
            f"dct: the gradient became NaN or infinite at radius {radius:.4g}: the model "
            "overflows; load it in float32 or give a smaller radius"
        )


__all__ = ["ChangeMap", "deep_causal_transcoding"]
