"""MELBO: unsupervised steering vectors by maximising the downstream activation change.

Mack & Turner (2024). Each vector ``θ`` with ``‖θ‖ = R`` is learned by projected gradient
ascent on ``(Σ_prompts Σ_positions ‖h_t(θ) − h_t(0)‖₂^p)^(1/q)``; vectors are learned one
after another, each kept orthogonal to those before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.methods.registry import register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
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
    progress: bool = False,
) -> SteeringVectors:
    """Learn ``num_vectors`` orthogonal MELBO steering directions.

    ``radius`` (MELBO's norm constraint ``‖θ‖ = R``) defaults to the scale unit at
    ``source`` on these prompts (:func:`harness.engine.steering.scale_unit`); ``lr`` to
    ``2.5e-4 · radius`` (see ``LR_PER_UNIT_RADIUS``). Optimiser as in the reference
    implementation: AdamW, betas (0.9, 0.98), no weight decay, amsgrad, the
    gradient projected onto the sphere's tangent space and off earlier vectors, then the
    iterate projected back onto the sphere.

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
    batch = encode_prompts(lm, prompts, target_tokens=target_tokens)
    passes = 0
    with torch.no_grad():
        unsteered = _targets(run_to_block(lm, batch, target_block), batch)
        passes += 1
        if radius is None:
            radius = scale_unit(lm, batch, source_block)
            passes += 1
    if not radius > 0:
        raise PowersteerError(f"radius={radius} must be positive")
    learning_rate = lr if lr is not None else LR_PER_UNIT_RADIUS * radius
    work_dtype = lm.compute_dtype

    def objective(theta: torch.Tensor) -> torch.Tensor:
        steered = run_to_block(
            lm, batch, target_block, source=source_block, delta=theta[None, None, :]
        )
        change = (_targets(steered, batch) - unsteered).to(work_dtype)
        return change.norm(dim=-1).pow(p).sum().pow(1.0 / q)

    generator = torch.Generator().manual_seed(seed)
    learned = torch.zeros(0, d_model, dtype=work_dtype, device=lm.device)
    values: list[float] = []
    bar = tqdm(total=num_vectors * steps, desc="MELBO", disable=not progress, leave=False)
    for _ in range(num_vectors):
        start = torch.randn(d_model, generator=generator, dtype=work_dtype).to(lm.device)
        theta = _onto_sphere(_off(start, learned), radius).requires_grad_(True)
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
            passes += 2
            with torch.no_grad():
                grad = _off(theta.grad, learned)
                theta.grad = grad - (grad @ theta) * theta / radius**2  # tangent to sphere
            optimiser.step()
            with torch.no_grad():
                theta.copy_(_onto_sphere(_off(theta, learned), radius))
            bar.update(1)
            bar.set_postfix(objective=f"{-loss.item():.4g}")
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
        },
    )


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
