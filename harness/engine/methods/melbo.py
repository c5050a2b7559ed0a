"""MELBO: unsupervised steering vectors by maximising the downstream activation change.

Mack & Turner (2024). Each vector ``θ`` with ``‖θ‖ = R`` is learned by projected gradient
ascent on ``(Σ_prompts Σ_positions ‖h_t(θ) − h_t(0)‖₂^p)^(1/q)``; vectors are learned one
after another, each kept orthogonal to those before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.methods.registry import register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.engine.sites import Site, check_site
from harness.engine.steering import run_to_block, scale_unit
from harness.errors import PowersteerError

# The reference optimiser steps with lr 1e-3 at its usual radius R = 4; scaling lr with R
# keeps the angular step size the same whatever radius the residual norms call for.
LR_PER_UNIT_RADIUS = 1e-3 / 4.0


@register_method("melbo", label="MELBO", colour="C1", rank=1)
def melbo(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    radius: float | None = None,
    p: float = 2.0,
    q: float = 1.0,
    steps: int = 300,
    lr: float | None = None,
    seed: int = 0,
    target_tokens: TargetTokens = None,
    source_site: Site = "block",
    target_site: Site = "block",
    progress: bool = False,
) -> SteeringVectors:
    """Learn ``num_vectors`` orthogonal MELBO steering directions.

    ``source_site`` and ``target_site`` say where on the source block θ is added and where
    on the target block the change is measured (:mod:`harness.engine.sites`; the MELBO
    reference adds at the MLP output, ``"mlp"``).
    ``radius`` (MELBO's norm constraint ``‖θ‖ = R``) defaults to the scale unit at
    ``source`` on these prompts (:func:`harness.engine.steering.scale_unit`: the residual
    stream's norm, whatever the site); ``lr`` to ``2.5e-4 · radius`` (see
    ``LR_PER_UNIT_RADIUS``). Optimiser as in the reference implementation: AdamW, betas
    (0.9, 0.98), no weight decay, amsgrad, the gradient projected onto the sphere's
    tangent space and off earlier vectors, then the iterate projected back onto the sphere.

    Returns ``.vectors`` ``(num_vectors, d_model)`` unit rows, ``.values`` the objective at
    each learned vector, ``.radius`` and the measured cost.
    """
    started = time.perf_counter()
    d_model = lm.d_model
    if not 1 <= num_vectors <= d_model:
        raise PowersteerError(f"num_vectors={num_vectors} must be in 1..d_model={d_model}")
    if steps < 1 or p <= 0 or q <= 0:
        raise PowersteerError(f"steps={steps}, p={p}, q={q}: all must be positive")
    source_block, target_block = resolve_layer_pair(source, target, lm.n_layers)
    sites = {
        "source_site": check_site(source_site, name="source_site"),
        "target_site": check_site(target_site, name="target_site"),
    }
    batch = encode_prompts(lm, prompts, target_tokens=target_tokens)
    objective = _objective(lm, batch, source_block, target_block, sites, p, q)
    passes = 1  # the unsteered pass the objective measures changes from
    if radius is None:
        radius = scale_unit(lm, batch, source_block)
        passes += 1
    if not radius > 0:
        raise PowersteerError(f"radius={radius} must be positive")
    learning_rate = lr if lr is not None else LR_PER_UNIT_RADIUS * radius
    work_dtype = lm.compute_dtype
    generator = torch.Generator().manual_seed(seed)
    learned = torch.zeros(0, d_model, dtype=work_dtype, device=lm.device)
    values: list[float] = []
    bar = tqdm(total=num_vectors * steps, desc="MELBO", disable=not progress, leave=False)
    for _ in range(num_vectors):
        start = torch.randn(d_model, generator=generator, dtype=work_dtype).to(lm.device)
        theta = _onto_sphere(_off(start, learned), radius)
        theta = _ascend(objective, theta, learned, radius, learning_rate, steps, bar)
        passes += 2 * steps  # a forward and a backward pass per step
        with torch.no_grad():
            values.append(float(objective(theta)))
            passes += 1
        learned = torch.cat([learned, theta.detach()[None, :] / radius])
    bar.close()
    return SteeringVectors(
        method="melbo",
        vectors=learned.float().cpu(),
        values=torch.tensor(values, dtype=torch.float32),
        source=source_block,
        target=target_block,
        seed=seed,
        forward_passes=passes,
        prompt_passes=float(passes),
        wall_time_s=time.perf_counter() - started,
        iterations=steps,
        converged=None,
        radius=float(radius),
        options={
            "p": p,
            "q": q,
            "steps": steps,
            "lr": learning_rate,
            "target_tokens": target_tokens,
            **sites,
        },
    )


def _objective(
    lm: LanguageModel,
    batch: PromptBatch,
    source: int,
    target: int,
    sites: dict[str, Site],
    p: float,
    q: float,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """MELBO's objective ``θ ↦ (Σ ‖h_t(θ) − h_t(0)‖₂^p)^(1/q)`` over the target positions;
    runs the one unsteered pass ``h_t(0)`` comes from."""
    work_dtype = lm.compute_dtype
    with torch.no_grad():
        plain = run_to_block(lm, batch, target, target_site=sites["target_site"])
    unsteered = _targets(plain, batch)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        delta = theta[None, None, :]
        steered = run_to_block(lm, batch, target, source=source, delta=delta, **sites)
        change = (_targets(steered, batch) - unsteered).to(work_dtype)
        return change.norm(dim=-1).pow(p).sum().pow(1.0 / q)

    return objective


def _ascend(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    learned: torch.Tensor,
    radius: float,
    learning_rate: float,
    steps: int,
    bar: tqdm,
) -> torch.Tensor:
    """``steps`` steps of projected gradient ascent on ``objective`` from ``start``, on the
    sphere ``‖θ‖ = radius`` and orthogonal to the rows of ``learned``; the final θ."""
    theta = start.clone().requires_grad_(True)
    optimiser = torch.optim.AdamW(
        [theta], lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True
    )
    for _step in range(steps):
        optimiser.zero_grad()
        loss = -objective(theta)
        if not torch.isfinite(loss):
            raise PowersteerError(
                f"MELBO objective became {loss.item()} at radius {radius:.4g}: the model "
                "overflows; load it in float32 or pass a smaller radius"
            )
        loss.backward()
        with torch.no_grad():
            grad = _off(theta.grad, learned)
            theta.grad = grad - (grad @ theta) * theta / radius**2  # tangent to sphere
        optimiser.step()
        with torch.no_grad():
            theta.copy_(_onto_sphere(_off(theta, learned), radius))
        bar.update(1)
        bar.set_postfix(objective=f"{-loss.item():.4g}")
    return theta


def _targets(hidden: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """``(rows, tokens, d)`` to ``(n_target_positions, d)``."""
    return hidden[batch.target_mask]


def _off(vector: torch.Tensor, orthonormal_rows: torch.Tensor) -> torch.Tensor:
    """Remove the components of ``vector`` along each (unit) row."""
    if orthonormal_rows.shape[0] == 0:
        return vector
    return vector - (orthonormal_rows @ vector) @ orthonormal_rows


def _onto_sphere(vector: torch.Tensor, radius: float) -> torch.Tensor:
    return vector * (radius / vector.norm())
