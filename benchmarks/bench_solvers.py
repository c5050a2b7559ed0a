"""Power Steering's solvers against the exact SVD: block Krylov versus block power (issue 15).

For one model, layer pair and target-token choice, builds the explicit Jacobian ``J``
(``M × d``: the J-images of the identity basis through ``LayerJacobian.jvp``), whose SVD
gives the exact top-k right singular subspace and ``σ``. Then runs, step by step, the loop
``power_steering`` runs (one JVP and one VJP of a block of ``k + 4`` vectors, then a
Rayleigh–Ritz update) with ``solver="krylov"`` and ``solver="power"``, and after every step
records the products so far, the cumulative wall time, the largest principal angle between
the exact top-k subspace and that step's Ritz top-k, the largest relative residual
``‖JᵀJ v − σ² v‖ / σ²`` among the top k and the largest relative error of ``σ``. Block
power at step 5 is the reference implementation's default of 5 iterations. Last, the
shipped default ``power_steering(..., num_vectors=k, target_tokens=...)`` runs as is.

Prints a table per configuration and the issue's measured goal, and writes one plot per
model (angle against products) to ``benchmarks/solvers_<model>.png``:

    python benchmarks/bench_solvers.py                      # SmolLM2, k 8 and 12, both targets
    python benchmarks/bench_solvers.py --model gemma-3-270m --k 8 --target-tokens all_but_first
    python benchmarks/bench_solvers.py --quick              # a small sanity run
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: a file, no display or backend state

from harness import load_model, power_steering
from harness.engine.jacobian import LayerJacobian
from harness.engine.layers import resolve_layer_pair
from harness.engine.linalg import largest_principal_angle, orthonormal_rows
from harness.engine.models import LanguageModel
from harness.engine.prompts import TargetTokens
from harness.engine.subspace import RitzPairs, Solver, SubspaceSolver

HERE = Path(__file__).resolve().parent
# The four prompts of bench_power_iteration.py, as plain text (no chat template).
PROMPTS = [
    "How do I bake bread at home?",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "What is 7 times 8?",
]
# SmolLM2's blocks 7 -> 14 as fractions of depth (resolve_layer's round(f * (n - 1))), so
# Gemma-3 gets the pair at the same depth.
SOURCE_FRACTION, TARGET_FRACTION = 7 / 29, 14 / 29
OVERSAMPLE = 4
IDENTITY_CHUNK = 64  # rows of the identity per JVP when building the explicit Jacobian
GOAL_ANGLE, GOAL_SHARE, GOAL_POWER_STEPS = 5e-3, 0.6, 15  # issue 15's measured goal
REFERENCE_POWER_STEPS = 5  # the reference implementation's default iterations


@dataclass(frozen=True)
class Setting:
    """One layer pair and target-token choice on :data:`PROMPTS`."""

    source: int
    target: int
    target_tokens: TargetTokens

    def jacobian(self, lm: LanguageModel) -> LayerJacobian:
        return LayerJacobian(
            lm, PROMPTS, self.source, self.target, target_tokens=self.target_tokens
        )


@dataclass(frozen=True)
class Exact:
    """The exact right singular vectors ``(d, d)`` (rows, by ``σ`` descending) and ``σ``."""

    vectors: torch.Tensor
    values: torch.Tensor
    seconds: float


@dataclass(frozen=True)
class Step:
    """One solver step: products and wall time so far, and that step's top-k against the
    exact SVD (angle, largest relative residual, largest relative σ error)."""

    step: int
    products: int
    wall_s: float
    angle: float
    residual: float
    sigma_error: float


@dataclass(frozen=True)
class Shipped:
    """The default ``power_steering`` run."""

    steps: int
    products: int
    wall_s: float
    angle: float
    residual: float
    converged: bool
    warned: bool


def exact_svd(jacobian: LayerJacobian) -> Exact:
    """SVD of the explicit Jacobian: ``Jᵀ`` ``(d, M)`` is the J-images of the identity rows."""
    started = time.perf_counter()
    d = jacobian.lm.d_model
    identity = torch.eye(d, dtype=jacobian.dtype, device=jacobian.lm.device)
    transposed = torch.cat(
        [jacobian.jvp(identity[i : i + IDENTITY_CHUNK]) for i in range(0, d, IDENTITY_CHUNK)]
    )
    left, values, _ = torch.linalg.svd(transposed.double().cpu(), full_matrices=False)
    return Exact(left.T.contiguous(), values, time.perf_counter() - started)


def compare(
    ritz_vectors: torch.Tensor, ritz_values: torch.Tensor, exact: Exact, k: int
) -> tuple[float, float]:
    """(largest principal angle, largest relative σ error) of a top-k answer."""
    rows = orthonormal_rows(ritz_vectors[:k].double().cpu())
    angle = largest_principal_angle(exact.vectors[:k], rows)
    truth = exact.values[:k]
    error = float(((ritz_values[:k].double().cpu() - truth).abs() / truth).max())
    return angle, error


def run_solver(
    lm: LanguageModel, setting: Setting, k: int, solver: Solver, steps: int, exact: Exact
) -> list[Step]:
    """``power_steering``'s loop, step by step, with a tolerance it never meets."""
    jacobian = setting.jacobian(lm)
    state = SubspaceSolver.start(
        k, min(k + OVERSAMPLE, lm.d_model), lm.d_model, solver=solver, tol=1e-12, seed=0,
        dtype=jacobian.dtype, device=lm.device,
    )  # fmt: skip
    records, products, elapsed = [], 0, 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        block = len(state.current)
        latest: RitzPairs = state.update(jacobian.vjp(jacobian.jvp(state.current)))
        elapsed += time.perf_counter() - started
        products += 2 * block  # one JVP and one VJP per vector of the block
        angle, error = compare(latest.vectors, latest.values, exact, k)
        residual = float(latest.residuals[:k].max())
        records.append(Step(step, products, elapsed, angle, residual, error))
        if state.exhausted:  # the space spans everything it can: no further step exists
            break
    jacobian.release()
    return records


def run_shipped(lm: LanguageModel, setting: Setting, k: int, exact: Exact) -> Shipped:
    """The default ``power_steering`` (krylov, its default tol and max_iter), as shipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = power_steering(
            lm, PROMPTS, setting.source, setting.target, num_vectors=k,
            target_tokens=setting.target_tokens,
        )  # fmt: skip
    angle, _ = compare(result.vectors, result.values, exact, k)
    block = min(k + OVERSAMPLE, lm.d_model)
    return Shipped(
        steps=result.iterations or 0,
        products=2 * block * (result.iterations or 0),
        wall_s=result.wall_time_s,
        angle=angle,
        residual=float(result.residuals.max()),
        converged=bool(result.converged),
        warned=any("did not converge" in str(w.message) for w in caught),
    )


def median_wall(runs: list[list[Step]]) -> list[Step]:
    """The first run's steps with each step's cumulative wall time the median over runs."""
    return [
        replace(step, wall_s=statistics.median(run[i].wall_s for run in runs))
        for i, step in enumerate(runs[0])
    ]


def print_table(k: int, curves: dict[str, list[Step]]) -> None:
    print(f"\n### k = {k}: per step (wall s cumulative, products + Rayleigh–Ritz)")
    print("| solver | step | products | wall s | angle rad | residual | σ rel. error |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, records in curves.items():
        for r in records:
            print(f"| {name} | {r.step} | {r.products} | {r.wall_s:.2f} | {r.angle:.2e} | "
                  f"{r.residual:.2e} | {r.sigma_error:.2e} |")  # fmt: skip


def print_shipped(shipped: Shipped, power: list[Step]) -> None:
    last = power[-1]
    print("\n| default power_steering | steps | products | wall s | angle rad | residual | "
          "converged | warned |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|---|")
    print(f"| krylov, tol 1e-3, max_iter 15 | {shipped.steps} | {shipped.products} | "
          f"{shipped.wall_s:.2f} | {shipped.angle:.2e} | {shipped.residual:.2e} | "
          f"{shipped.converged} | {shipped.warned} |")  # fmt: skip
    products_share = shipped.products / last.products
    wall_share = shipped.wall_s / last.wall_s
    met = shipped.angle < GOAL_ANGLE and max(products_share, wall_share) <= GOAL_SHARE
    verdict = "met" if met else "NOT met"
    if last.step != GOAL_POWER_STEPS:
        verdict = f"not judged: it is stated against {GOAL_POWER_STEPS} power steps"
    print(f"against {last.step} block-power steps ({last.products} products, "
          f"{last.wall_s:.2f} s, angle {last.angle:.2e}): products {products_share:.2f}×, "
          f"wall {wall_share:.2f}×; goal (angle < {GOAL_ANGLE:g} with ≤ {GOAL_SHARE:g}× "
          f"of both) {verdict}")  # fmt: skip


def plot(model: str, curves: dict[str, list[Step]], shipped: dict[str, Shipped]) -> Path:
    """Angle against products, log y: one colour per configuration, solid Krylov, dashed
    power; ★ the default run, × block power at the reference's 5 iterations."""
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    configs = list(dict.fromkeys(name.split(", ", 1)[1] for name in curves))
    for name, records in curves.items():
        solver, config = name.split(", ", 1)
        colour = f"C{configs.index(config) % 10}"
        axes.plot([r.products for r in records], [r.angle for r in records],
                  "-" if solver == "krylov" else "--", marker=".", color=colour,
                  label=name)  # fmt: skip
        if solver == "krylov" and config in shipped:
            point = shipped[config]
            axes.plot(point.products, point.angle, "*", markersize=13, color=colour)
        if solver == "power" and len(records) >= REFERENCE_POWER_STEPS:
            point = records[REFERENCE_POWER_STEPS - 1]
            axes.plot(point.products, point.angle, "x", markersize=9, color=colour)
    axes.axhline(GOAL_ANGLE, color="grey", linewidth=0.8, linestyle=":")
    axes.set_yscale("log")
    axes.set_xlabel("vector products through J or Jᵀ")
    axes.set_ylabel("largest principal angle to the exact top-k (rad)")
    axes.set_title(f"{model}: block Krylov (solid) vs block power (dashed); "
                   "★ default run, × power at 5 steps")  # fmt: skip
    axes.legend(fontsize=7)
    path = HERE / f"solvers_{model}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def run_configuration(
    lm: LanguageModel,
    setting: Setting,
    ks: list[int],
    steps: int,
    repeats: int,
    curves: dict[str, list[Step]],
    shipped: dict[str, Shipped],
) -> None:
    """Every k for one target-token choice, sharing its explicit Jacobian; adds each
    solver's curve to ``curves`` and each default run to ``shipped``."""
    exact = exact_svd(setting.jacobian(lm))
    sigma = ", ".join(f"{float(v):.3g}" for v in exact.values[: max(ks) + 2])
    print(f"\n## target_tokens={setting.target_tokens!r}: exact SVD in {exact.seconds:.0f} s; "
          f"σ = {sigma}, …")  # fmt: skip
    for k in ks:
        config = f"k={k}, {setting.target_tokens}"
        # Interleaved repeats, so a busy moment of the shared CPU hits every run alike;
        # the figures are deterministic, the wall times are medians.
        runs = [
            ({s: run_solver(lm, setting, k, s, steps, exact) for s in ("krylov", "power")},
             run_shipped(lm, setting, k, exact))
            for _ in range(repeats)
        ]  # fmt: skip
        mine = {f"{s}, {config}": median_wall([r[0][s] for r in runs]) for s in ("krylov", "power")}
        print_table(k, {name.split(",")[0]: records for name, records in mine.items()})
        walls = [r[1].wall_s for r in runs]
        shipped[config] = replace(runs[0][1], wall_s=statistics.median(walls))
        print_shipped(shipped[config], mine[f"power, {config}"])
        curves.update(mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--k", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--target-tokens", nargs="+", default=["all_but_first", "2"])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--source", default=str(SOURCE_FRACTION))
    parser.add_argument("--target", default=str(TARGET_FRACTION))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians reported")
    # One thread: on the shared 2-core machine two threads wait on each other whenever
    # another process holds a core (measured: 4 power steps 1.9 s on one thread, 35 s on two).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="k 8, all_but_first, 4 steps, no plot")
    args = parser.parse_args()
    if args.quick:
        args.k, args.target_tokens, args.steps, args.repeats = [8], ["all_but_first"], 4, 1
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    source, target = resolve_layer_pair(args.source, args.target, lm.n_layers)
    print(f"model {args.model}: blocks {source} -> {target}, d_model {lm.d_model}, "
          f"{len(PROMPTS)} prompts (plain text), block k + {OVERSAMPLE}, {args.steps} steps, "
          f"{lm.compute_dtype}, threads {torch.get_num_threads()}")  # fmt: skip
    curves: dict[str, list[Step]] = {}
    shipped: dict[str, Shipped] = {}
    for choice in args.target_tokens:
        tokens: TargetTokens = int(choice) if choice.isdigit() else choice
        run_configuration(lm, Setting(source, target, tokens), args.k, args.steps,
                          args.repeats, curves, shipped)  # fmt: skip
    if not args.quick:  # a sanity run leaves the measured plot alone
        print(f"\nplot: {plot(args.model, curves, shipped).relative_to(HERE.parent)}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
