"""The eigen-solver behind Power Steering, on explicit matrices with planted spectra.

``A = U diag(σ²) Uᵀ`` is built from a known orthogonal ``U``, so the exact answer is known
without any model; the solver only ever sees products ``A V``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, exact_jacobian

from harness import PowersteerError, power_steering
from harness.engine.linalg import largest_principal_angle
from harness.engine.subspace import SubspaceSolver, bands

D = 80


def planted(singular_values: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = U diag(σ²) Uᵀ`` (d × d, float64) and its eigenvectors as rows: the given
    singular values, then a tail decaying from half the last one."""
    tail = [0.5 * singular_values[-1] * 0.95**i for i in range(D - len(singular_values))]
    sigma = torch.tensor(singular_values + tail, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64)).Q
    return basis @ torch.diag(sigma**2) @ basis.T, basis.T


def solve(matrix, num_vectors, block, solver, steps, tol=1e-12, init=None):
    """Run the solver on ``matrix`` for at most ``steps``; returns it, the last Ritz pairs
    and the products it asked for (a JVP and a VJP per vector of each block)."""
    state = SubspaceSolver.start(
        num_vectors, block, D, solver=solver, tol=tol, seed=1, init=init, dtype=torch.float64
    )
    products = 0
    while state.steps < steps and not state.done:
        products += 2 * len(state.current)
        state.update(state.current @ matrix)  # rows: (A vᵢ)ᵀ = vᵢᵀ A for symmetric A
    return state, state.ritz, products


# Neighbouring ratios 0.9-0.99 for 16 values, as on real weights (DESIGN.md, SmolLM2).
FLAT = [10.0, 9.0, 8.6, 8.3, 8.1, 7.9, 7.8, 7.7, 7.4, 7.2, 7.0, 6.9, 6.8, 6.7, 6.6, 6.5]


def test_krylov_finds_a_flat_spectrum_exactly_in_fewer_products_than_block_power():
    matrix, eigenvectors = planted(FLAT)
    exact = torch.linalg.eigvalsh(matrix).flip(0)[:8].sqrt()
    krylov, ritz, krylov_products = solve(matrix, 8, 12, "krylov", steps=40, tol=1e-9)
    assert krylov.converged
    assert float(((ritz.values[:8] - exact).abs() / exact).max()) < 1e-6
    assert largest_principal_angle(eigenvectors[:8], ritz.vectors[:8]) < 1e-4

    # Block power with the same products is far off: it converges at (σ13/σ8)² ≈ 0.77 a step.
    power, power_ritz, power_products = solve(matrix, 8, 12, "power", steps=krylov.steps)
    assert power_products >= krylov_products and not power.converged
    assert largest_principal_angle(eigenvectors[:8], power_ritz.vectors[:8]) > 1e-2


def test_converged_residuals_certify_the_eigenpairs():
    matrix, _ = planted(FLAT, seed=3)
    state, ritz, _ = solve(matrix, 4, 8, "krylov", steps=40, tol=1e-6)
    assert state.converged and bool((ritz.residuals[:4] < 1e-6).all())
    for value, vector, reported in zip(
        ritz.values[:4], ritz.vectors[:4], ritz.residuals[:4], strict=True
    ):
        true_residual = (matrix @ vector - value**2 * vector).norm() / value**2
        assert float(reported) == pytest.approx(float(true_residual), rel=1e-3, abs=1e-12)


def test_nearly_equal_singular_values_form_one_band():
    assert bands(torch.tensor([10.0, 5.0, 4.99, 4.98, 2.0, 1.0]), 0.05) == [
        [0],
        [1, 2, 3],
        [4],
        [5],
    ]
    assert bands(torch.tensor([3.0, 2.0]), 0.05) == [[0], [1]]
    matrix, _ = planted([10.0, 5.0, 4.99, 4.98, 2.0])
    _, ritz, _ = solve(matrix, 5, 8, "krylov", steps=40, tol=1e-9)
    assert bands(ritz.values[:5], 0.05) == [[0], [1, 2, 3], [4]]


def test_a_warm_start_from_the_answer_converges_in_one_step():
    matrix, eigenvectors = planted(FLAT)
    state, _, _ = solve(matrix, 1, 1, "krylov", steps=10, tol=1e-9, init=eigenvectors[:1])
    assert state.converged and state.steps == 1


def test_the_krylov_space_stops_growing_at_the_whole_space_and_is_then_exact():
    matrix, eigenvectors = planted(FLAT)
    state, ritz, _ = solve(matrix, 8, 40, "krylov", steps=10, tol=1e-300)
    assert state.exhausted and state.steps == 2 and len(state.basis) == D
    assert torch.allclose(
        state.basis @ state.basis.T, torch.eye(D, dtype=torch.float64), atol=1e-10
    )
    assert largest_principal_angle(eigenvectors[:8], ritz.vectors[:8]) < 1e-8


def test_power_steering_by_krylov_matches_the_exact_jacobian_svd(qwen3_tiny):
    # The tiny model is float64, so the products are exact to rounding and 1e-10 is reachable.
    exact = exact_jacobian(qwen3_tiny, PROMPTS, 0, 2)
    values = torch.linalg.svdvals(exact)
    result = power_steering(qwen3_tiny, PROMPTS, 0, 2, num_vectors=3, tol=1e-10, max_iter=30)
    assert result.converged and result.options["solver"] == "krylov"
    relative = (result.singular_values.double() - values[:3]).abs() / values[:3]
    assert float(relative.max()) < 1e-6  # float32 results: ~1e-7 rounding
    angle = largest_principal_angle(torch.linalg.svd(exact).Vh[:3], result.vectors.double())
    assert angle < 1e-4
    assert result.residuals is not None and float(result.residuals.max()) < 1e-10
    assert sorted(i for band in result.bands for i in band) == [0, 1, 2]


def test_a_warm_start_of_the_wrong_width_is_one_clear_error():
    with pytest.raises(PowersteerError, match=r"init has shape \(2, 64\); give finite rows"):
        SubspaceSolver.start(1, 2, 32, init=torch.ones(2, 64))
