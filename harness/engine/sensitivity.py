"""Whole-model sensitivity map: Power Steering on many (source, target) pairs at once.

Each pair runs the same solver as :func:`~harness.engine.methods.power_steering` (block
Krylov by default, :mod:`harness.engine.subspace`), and all pairs step together. One
tangent-carrying forward pass per *source* serves every pair that starts there (each
pair's block rides along the batch and is read at its own target), and one backward pass
per *target* serves every pair that ends there (a zero vector is added at each of their
sources, and the backward pass reaches them all). A step over the pairs of an L-block
model thus costs about 3(L − 1) sweeps instead of L(L − 1) pair by pair, and a pair that
has converged drops out of the batches.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from harness.engine.effects import next_token_effect
from harness.engine.jacobian import PassCount
from harness.engine.layers import resolve_layer_pair
from harness.engine.linalg import fix_signs
from harness.engine.models import LanguageModel
from harness.engine.prompts import PromptBatch, TargetTokens, encode_prompts
from harness.engine.shared_passes import (
    Pair,
    jvp_by_source,
    shrinking_on_oom,
    vjp_by_target,
    widest_pass,
)
from harness.engine.sites import Site, check_site
from harness.engine.steering import scale_unit
from harness.engine.subspace import RitzPairs, Solver, SubspaceSolver
from harness.errors import PowersteerError

RITZ_FIELDS = ("values", "vectors", "residuals")  # a saved state keeps each pair's best


@dataclass
class SensitivityMap:
    """Top-``k`` singular values and right singular vectors for each (source, target) pair.

    ``singular_values`` is ``(n_pairs, k)``, ``vectors`` ``(n_pairs, k, d_model)`` with
    unit rows; entry ``i`` belongs to ``pairs[i]``; ``residuals`` ``(n_pairs, k)`` are the
    relative residuals that judged convergence. Cost is measured as in
    :class:`~harness.engine.methods.SteeringVectors`, for the whole map.
    """

    pairs: list[Pair]
    singular_values: torch.Tensor
    vectors: torch.Tensor
    iterations: list[int]
    converged: list[bool]
    n_layers: int
    residuals: torch.Tensor | None = None
    forward_passes: int = 0
    prompt_passes: float = 0.0
    wall_time_s: float = 0.0
    options: dict[str, object] = field(default_factory=dict)

    def sigma_matrix(self, index: int = 0) -> torch.Tensor:
        """``(n_layers, n_layers)`` matrix of σ_{index+1} at [source, target]; NaN elsewhere."""
        return pair_matrix(self.pairs, self.singular_values[:, index].tolist(), self.n_layers)

    def to_frame(self) -> pd.DataFrame:
        """One row per pair and singular value: source, target, index, sigma, converged."""
        rows = [
            {"source": source, "target": target, "index": index, "sigma": float(sigma),
             "iterations": iterations, "converged": converged}
            for (source, target), values, iterations, converged in zip(
                self.pairs, self.singular_values, self.iterations, self.converged, strict=True
            )
            for index, sigma in enumerate(values)
        ]  # fmt: skip
        return pd.DataFrame(rows)


@dataclass
class MapState:
    """Everything an interrupted map needs to continue exactly where it stopped: each
    pair's solver (keyed by pair index) and the cost so far. Saved after every step."""

    iteration: int
    solvers: dict[int, SubspaceSolver]
    passes: PassCount
    elapsed_s: float

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict for safetensors (names ``kind.pair_index``)."""
        flat = {}
        for i, solver in self.solvers.items():
            for kind in ("current", "basis", "images"):
                flat[f"{kind}.{i}"] = getattr(solver, kind).detach().cpu().clone()
            if solver.ritz is not None:
                for kind in ("values", "vectors", "residuals"):
                    flat[f"best_{kind}.{i}"] = getattr(solver.ritz, kind).detach().cpu().clone()
        return flat

    def scalars(self) -> dict[str, object]:
        some = next(iter(self.solvers.values()))
        return {
            "iteration": self.iteration,
            "num_vectors": some.num_vectors,
            "solver": some.solver,
            "tol": some.tol,
            "steps": {i: s.steps for i, s in self.solvers.items()},
            "best_step": {i: s.best_step for i, s in self.solvers.items()},
            "exhausted": {i: s.exhausted for i, s in self.solvers.items()},
            "sweeps": self.passes.sweeps,
            "prompt_sweeps": self.passes.prompt_sweeps,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> MapState:
        """Inverse of :meth:`tensors` and :meth:`scalars` (JSON turns int keys to str)."""
        by_kind: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
        for name, tensor in tensors.items():
            kind, index = name.rsplit(".", 1)
            by_kind[kind][int(index)] = tensor
        solvers = {}
        for key, steps in scalars["steps"].items():
            i = int(key)
            solver = SubspaceSolver(
                int(scalars["num_vectors"]), scalars["solver"], float(scalars["tol"]),
                by_kind["current"][i],
            )  # fmt: skip
            solver.basis, solver.images = by_kind["basis"][i], by_kind["images"][i]
            solver.steps, solver.exhausted = int(steps), bool(scalars["exhausted"][key])
            solver.best_step = int(scalars["best_step"][key])
            if solver.best_step:
                solver.ritz = RitzPairs(*(by_kind[f"best_{kind}"][i] for kind in RITZ_FIELDS))
            solvers[i] = solver
        return cls(
            iteration=int(scalars["iteration"]),
            solvers=solvers,
            passes=PassCount(int(scalars["sweeps"]), float(scalars["prompt_sweeps"])),
            elapsed_s=float(scalars["elapsed_s"]),
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> MapState:
        """The state with every solver's tensors on ``device`` in ``dtype``."""
        for solver in self.solvers.values():
            for kind in ("current", "basis", "images"):
                setattr(solver, kind, getattr(solver, kind).to(device=device, dtype=dtype))
            if solver.ritz is not None:
                moved = (getattr(solver.ritz, kind).to(device) for kind in RITZ_FIELDS)
                solver.ritz = RitzPairs(*moved)
        return self


def all_pairs(n_layers: int) -> list[Pair]:
    """Every (source, target) with ``0 <= source < target < n_layers``."""
    return [(s, t) for s in range(n_layers) for t in range(s + 1, n_layers)]


def parse_pairs(spec: str, n_layers: int) -> list[Pair]:
    """``"all"`` or a comma-separated list such as ``"2:10,0.25:0.75,-8:-1"``."""
    if spec.strip() == "all":
        return all_pairs(n_layers)
    pairs = []
    for item in spec.split(","):
        if ":" not in item:
            raise PowersteerError(
                f"pair {item!r} in --pairs is not SOURCE:TARGET; write e.g. 2:10 or 'all'"
            )
        source, target = item.split(":", 1)
        pairs.append(resolve_layer_pair(source, target, n_layers))
    return sorted(set(pairs))


def sensitivity_map(
    lm: LanguageModel,
    prompts: Sequence[str],
    pairs: Sequence[Pair] | None = None,
    num_vectors: int = 4,
    *,
    solver: Solver = "krylov",
    max_iter: int = 15,
    tol: float = 1e-3,
    seed: int = 0,
    target_tokens: TargetTokens = None,
    oversample: int = 4,
    source_site: Site = "block",
    target_site: Site = "block",
    max_rows: int | None = None,
    progress: bool = False,
    resume: MapState | None = None,
    checkpoint: Callable[[MapState], None] | None = None,
) -> SensitivityMap:
    """Power Steering for every pair in ``pairs`` (default: all), sharing passes.

    Each pair starts from the same block as :func:`power_steering` with the same ``seed``
    and runs the same solver to the same stopping rule, so its result equals the per-pair
    one. ``max_rows`` caps the batch rows (vectors × prompts) of one pass, splitting a
    source's or target's passes to bound memory; the result does not change, the sweep
    count does. When a pass runs out of memory anyway, the rows per pass are halved and
    the step is run again (with a warning); ``options["max_rows"]`` of the result is the
    cap it ended with. ``checkpoint`` is called with the state after every step; passing a
    saved state back as ``resume`` (same arguments otherwise) continues from there with
    the same result as an uninterrupted run.
    """
    started = time.perf_counter()
    d_model = lm.d_model
    pairs = checked_pairs(lm, pairs, num_vectors)
    batch = encode_prompts(lm, prompts, target_tokens=target_tokens)
    dtype = lm.compute_dtype
    sites = {
        "source_site": check_site(source_site, name="source_site"),
        "target_site": check_site(target_site, name="target_site"),
    }
    if resume is None:
        first = SubspaceSolver.start(
            num_vectors, min(num_vectors + oversample, d_model), d_model, solver=solver,
            tol=tol, seed=seed, dtype=dtype,
        )  # fmt: skip
        solvers = {i: copy.deepcopy(first) for i in range(len(pairs))}
        resume_elapsed, state = 0.0, MapState(0, solvers, PassCount(), 0.0)
    else:
        resume_elapsed, state = resume.elapsed_s, resume
    state.to(lm.device, dtype)

    bar = tqdm(total=max_iter, initial=state.iteration, desc="sensitivity map",
               disable=not progress)  # fmt: skip
    for step in range(state.iteration + 1, max_iter + 1):
        active = [i for i, pair_solver in state.solvers.items() if not pair_solver.done]
        if not active:
            break
        max_rows = _step(lm, batch, pairs, state, active, max_rows, dtype, sites)
        state.iteration = step
        state.elapsed_s = resume_elapsed + time.perf_counter() - started
        if checkpoint is not None:
            checkpoint(state)
        bar.update(1)
        bar.set_postfix(
            converged=f"{sum(s.converged for s in state.solvers.values())}/{len(pairs)}"
        )
    bar.close()
    return _as_map(lm, pairs, state, resume_elapsed + time.perf_counter() - started, {
        "num_vectors": num_vectors, "solver": solver, "max_iter": max_iter, "tol": tol,
        "seed": seed, "target_tokens": target_tokens, "oversample": oversample,
        "max_rows": max_rows, **sites,
    })  # fmt: skip


def checked_pairs(lm: LanguageModel, pairs: Sequence[Pair] | None, num_vectors: int) -> list[Pair]:
    """The pairs to map (default: all), after checking them and ``num_vectors`` on ``lm``."""
    d_model = lm.d_model
    if not 1 <= num_vectors <= d_model:
        raise PowersteerError(f"num_vectors={num_vectors} must be in 1..d_model={d_model}")
    pairs = list(all_pairs(lm.n_layers) if pairs is None else pairs)
    if not pairs:
        raise PowersteerError("no layer pairs to map; the model needs at least two blocks")
    for source, target in pairs:
        resolve_layer_pair(source, target, lm.n_layers)
    return pairs


def _step(
    lm: LanguageModel,
    batch: PromptBatch,
    pairs: Sequence[Pair],
    state: MapState,
    active: Sequence[int],
    max_rows: int | None,
    dtype: torch.dtype,
    sites: dict[str, Site],
) -> int | None:
    """One solver step for every active pair: shared JVPs by source, then shared VJPs by
    target, then each pair's update. Returns the (possibly lowered) row cap."""
    currents = {i: state.solvers[i].current for i in active}
    n, counted = batch.n_prompts, state.passes
    forward = partial(
        jvp_by_source, lm, batch, pairs, active, currents, counted, dtype, sites=sites
    )
    images, max_rows = shrinking_on_oom(
        forward, max_rows, widest_pass(pairs, active, currents, by=0, n_prompts=n), n
    )
    backward = partial(vjp_by_target, lm, batch, pairs, active, images, counted, dtype, sites=sites)
    pulled, max_rows = shrinking_on_oom(
        backward, max_rows, widest_pass(pairs, active, currents, by=1, n_prompts=n), n
    )
    del images
    for i in active:
        state.solvers[i].update(pulled[i])
    return max_rows


def _as_map(
    lm: LanguageModel, pairs: list[Pair], state: MapState, elapsed: float, options: dict
) -> SensitivityMap:
    k = int(options["num_vectors"])
    ritz = [state.solvers[i].ritz for i in range(len(pairs))]
    if any(r is None for r in ritz):
        raise PowersteerError("the map ran no step; give max_iter of at least 1")
    return SensitivityMap(
        pairs=pairs,
        singular_values=torch.stack([r.values[:k] for r in ritz]).float().cpu(),
        vectors=torch.stack([fix_signs(r.vectors[:k].float().cpu()) for r in ritz]),
        iterations=[state.solvers[i].steps for i in range(len(pairs))],
        converged=[state.solvers[i].converged for i in range(len(pairs))],
        n_layers=lm.n_layers,
        residuals=torch.stack([r.residuals[:k] for r in ritz]).float().cpu(),
        forward_passes=state.passes.sweeps,
        prompt_passes=state.passes.prompt_sweeps,
        wall_time_s=elapsed,
        options=options,
    )


def next_token_kl(
    lm: LanguageModel,
    prompts: Sequence[str],
    result: SensitivityMap,
    scale: float,
    *,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Per pair, how far its top vector moves the next-token distribution after the prompt.

    The vector is added at the pair's source block at ``±scale`` times the scale unit there
    (:func:`~harness.engine.steering.scale_unit` on ``prompts``). One row per pair:
    ``source``, ``target``, ``scale``, ``raw_scale``, ``kl`` (mean over prompts and both
    signs of KL(unsteered ‖ steered), in nats) and ``changed`` (share of prompts × signs
    whose greedy next token changes).
    """
    batch = encode_prompts(lm, prompts)
    norms = {s: scale_unit(lm, batch, s) for s in sorted({s for s, _ in result.pairs})}
    sources = [source for source, _ in result.pairs]
    effect = next_token_effect(lm, batch, result.vectors[:, 0], sources,
                               [scale * norms[s] for s in sources], max_rows=max_rows)  # fmt: skip
    return pd.DataFrame(
        {
            "source": sources,
            "target": [target for _, target in result.pairs],
            "scale": scale,
            "raw_scale": [scale * norms[s] for s in sources],
            "kl": effect.kl.mean(1).numpy(),
            "changed": effect.changed.mean(1).numpy(),
        }
    )


def pair_matrix(pairs: Sequence[Pair], values: Sequence[float], n_layers: int) -> torch.Tensor:
    """``(n_layers, n_layers)`` matrix with ``values[i]`` at ``pairs[i]``; NaN elsewhere."""
    matrix = torch.full((n_layers, n_layers), float("nan"))
    for (source, target), value in zip(pairs, values, strict=True):
        matrix[source, target] = float(value)
    return matrix


def rank_pairs(result: SensitivityMap, kl: pd.DataFrame) -> pd.DataFrame:
    """The map's pairs ranked for steering, best first: one row per pair with ``source``,
    ``target``, ``sigma1``, ``kl``, ``changed`` and ``rank`` (0 is best).

    Ranked by ``kl`` (:func:`next_token_kl` of the pair's top vector), largest first: it is
    in nats of the output distribution, comparable across pairs, whereas σ₁ grows with the
    residual norm at the target and so favours deep targets whatever they do to the output.
    Ties go to the larger σ₁, then the earlier pair.
    """
    sigma = pd.DataFrame(
        {
            "source": [s for s, _ in result.pairs],
            "target": [t for _, t in result.pairs],
            "sigma1": result.singular_values[:, 0].tolist(),
        }
    )
    table = sigma.merge(kl[["source", "target", "kl", "changed"]], on=["source", "target"])
    table = table.sort_values(
        ["kl", "sigma1", "source", "target"], ascending=[False, False, True, True]
    ).reset_index(drop=True)
    table["rank"] = range(len(table))
    return table
