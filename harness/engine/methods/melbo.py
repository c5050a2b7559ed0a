"""MELBO: unsupervised steering vectors by maximising the downstream activation change.

Mack & Turner (2024). Each vector ``θ`` with ``‖θ‖ = R`` is learned by projected gradient
ascent on ``(Σ_prompts Σ_positions ‖h_t(θ) − h_t(0)‖₂^p)^(1/q)``; by default vectors are
learned one after another, each kept orthogonal to those before it, and with
``orthogonal=False`` as independent restarts.

How ``p`` and ``q`` relate to the MELBO reference (amack315/unsupervised-steering-vectors,
``src/unsupervised_steering.py``), which defaults ``q`` to ``p`` (its ``q=None``):

- The reference computes ``(Σ‖Δ‖^p)^(1/q)`` once per prompt and adds the prompts'
  gradients, so it maximises the *sum over prompts* of that; here one sum runs over all
  prompts before the ``1/q`` power. With ``q = 1`` the two are the same for any number of
  prompts; with ``q ≠ 1`` only for a single prompt.
- The reference's norm is ``.norm(dim=1)`` of a ``(1, tokens, d)`` tensor: over the
  positions, per feature. With ``p = 2`` that is the same sum of squares as the norm per
  position used here; with ``p ≠ 2`` it is a different objective.
- So ``p=2, q=1`` (the default here, and what the reference's backdoor and refusal demos
  pass explicitly) is the reference's objective exactly; ``p=2, q=2`` is its default
  ``q = p`` objective exactly for one prompt (for several prompts the reference adds the
  prompts' Frobenius norms, this takes the norm of all of them together). For one prompt
  ``q`` does not move the maximiser (``x ↦ x^(1/q)`` is increasing) but does change the
  ascent's path, as Adam's steps follow the gradient's scale over time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.methods.registry import Limit, check_limits, register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.engine.sites import Site, check_site
from harness.engine.steering import run_to_block, scale_unit
from harness.errors import PowersteerError

# The reference optimiser steps with lr 1e-3 at its usual radius R = 4; scaling lr with R
# keeps the angular step size the same whatever radius the residual norms call for.
LR_PER_UNIT_RADIUS = 1e-3 / 4.0

Objective = Callable[[torch.Tensor], torch.Tensor]


LIMITS = {
    "steps": Limit(low=1),
    "p": Limit(low=0, strict=True),
    "q": Limit(low=0, strict=True),
    "radius": Limit(low=0, strict=True),
    "lr": Limit(low=0, strict=True),
}


@register_method("melbo", label="MELBO", colour="C1", rank=1, limits=LIMITS)
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
    orthogonal: bool = True,
    seed: int = 0,
    target_tokens: TargetTokens = None,
    source_site: Site = "block",
    target_site: Site = "block",
    progress: bool = False,
) -> SteeringVectors:
    """Learn ``num_vectors`` MELBO steering directions.

    ``orthogonal=True``: the vectors are learned in turn from the 1st, 2nd, … draw of a
    generator seeded ``seed``, each kept orthogonal to those before it. ``orthogonal=False``
    (independent restarts, the reference's non-orthogonal mode): vector ``i`` is learned
    without constraint from the first draw of a generator seeded ``seed + i``, so row ``i``
    equals row 0 of a one-vector run with ``seed=seed + i``; rows are unit, not orthogonal.
    ``p`` and ``q`` as in the module docstring (the reference's ``q = p`` convention there).
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
    each learned vector, ``.history`` each vector's objective after 0, 1, …, ``steps``
    steps (its last entry is the vector's value), ``.radius`` and the measured cost.
    """
    started = time.perf_counter()
    _check_arguments(num_vectors, lm.d_model, steps, p, q)
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
    starts = _starts(num_vectors, lm.d_model, seed, orthogonal, lm.compute_dtype, lm.device)
    with tqdm(total=num_vectors * steps, desc="MELBO", disable=not progress, leave=False) as bar:
        learned, history = _learn(objective, starts, orthogonal, radius, learning_rate, steps, bar)
    # Per vector: steps × (forward + backward), then one pass evaluating the final vector.
    passes += num_vectors * (2 * steps + 1)
    return SteeringVectors(
        method="melbo",
        vectors=learned.float().cpu(),
        values=torch.tensor([trace[-1] for trace in history], dtype=torch.float32),
        source=source_block,
        target=target_block,
        seed=seed,
        forward_passes=passes,
        prompt_passes=float(passes),
        wall_time_s=time.perf_counter() - started,
        iterations=steps,
        converged=None,
        radius=float(radius),
        history=history,
        options={
            "p": p,
            "q": q,
            "steps": steps,
            "lr": learning_rate,
            "orthogonal": orthogonal,
            "target_tokens": target_tokens,
            **sites,
        },
    )


def _check_arguments(num_vectors: int, d_model: int, steps: int, p: float, q: float) -> None:
    if not 1 <= num_vectors <= d_model:
        raise PowersteerError(f"num_vectors={num_vectors} must be in 1..d_model={d_model}")
    check_limits("melbo", LIMITS, steps=steps, p=p, q=q)


def _starts(
    num_vectors: int,
    d_model: int,
    seed: int,
    orthogonal: bool,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Iterator[torch.Tensor]:
    """Each vector's random start: successive draws of one generator seeded ``seed``
    (orthogonal), or the first draw of a generator seeded ``seed + i`` for vector ``i`` (so
    an independent restart does not depend on how many vectors are learned with it)."""
    shared = torch.Generator().manual_seed(seed)
    for index in range(num_vectors):
        generator = shared if orthogonal else torch.Generator().manual_seed(seed + index)
        yield torch.randn(d_model, generator=generator, dtype=dtype).to(device)


def _learn(
    objective: Objective,
    starts: Iterator[torch.Tensor],
    orthogonal: bool,
    radius: float,
    learning_rate: float,
    steps: int,
    bar: tqdm,
) -> tuple[torch.Tensor, list[list[float]]]:
    """Ascend from each start in turn (off the vectors before it when ``orthogonal``); the
    unit rows learned and each one's objective history, final evaluation last."""
    rows: list[torch.Tensor] = []
    history: list[list[float]] = []
    for start in starts:
        constraint = torch.stack(rows) if orthogonal and rows else start.new_zeros(0, len(start))
        theta = _onto_sphere(_off(start, constraint), radius)
        theta, trace = _ascend(objective, theta, constraint, radius, learning_rate, steps, bar)
        with torch.no_grad():
            trace.append(float(objective(theta)))
        rows.append(theta.detach() / radius)
        # Stored as float32, as .values is, so the last entry equals the vector's value.
        history.append(torch.tensor(trace, dtype=torch.float32).tolist())
    return torch.stack(rows), history


def _objective(
    lm: LanguageModel,
    batch: PromptBatch,
    source: int,
    target: int,
    sites: dict[str, Site],
    p: float,
    q: float,
) -> Objective:
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
    objective: Objective,
    start: torch.Tensor,
    learned: torch.Tensor,
    radius: float,
    learning_rate: float,
    steps: int,
    bar: tqdm,
) -> tuple[torch.Tensor, list[float]]:
    """``steps`` steps of projected gradient ascent on ``objective`` from ``start``, on the
    sphere ``‖θ‖ = radius`` and orthogonal to the rows of ``learned``; the final θ and the
    objective before each step (measured by the step's own forward pass)."""
    theta = start.clone().requires_grad_(True)
    optimiser = torch.optim.AdamW(
        [theta], lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True
    )
    trace: list[float] = []
    for _step in range(steps):
        optimiser.zero_grad()
        loss = -objective(theta)
        trace.append(-loss.item())
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
        bar.set_postfix(objective=f"{trace[-1]:.4g}")
    return theta, trace


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
