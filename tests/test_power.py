"""Power Steering recovers the exact top singular values and vectors of the Jacobian."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, exact_jacobian

from harness import PowersteerError, find_vectors, power_steering
from harness.engine.linalg import largest_principal_angle
from harness.testing.pass_counter import count_passes

SOURCE, TARGET = 0, 2


def gap_index(singular_values: torch.Tensor, candidates: range) -> int:
    """The k among ``candidates`` with the largest gap σ_k / σ_{k+1}."""
    return max(candidates, key=lambda k: float(singular_values[k - 1] / singular_values[k]))


def test_top_k_matches_exact_svd(any_tiny_model):
    lm = any_tiny_model
    exact = exact_jacobian(lm, PROMPTS, SOURCE, TARGET)
    singular_values = torch.linalg.svdvals(exact)
    k = gap_index(singular_values, range(1, 7))
    result = power_steering(lm, PROMPTS, SOURCE, TARGET, num_vectors=k)

    assert result.converged and result.iterations <= 15
    relative = (result.singular_values.double() - singular_values[:k]).abs() / singular_values[:k]
    assert float(relative.max()) < 1e-4
    exact_vectors = torch.linalg.svd(exact).Vh[:k]
    assert largest_principal_angle(exact_vectors, result.vectors.double()) < 1e-2


def test_vectors_are_unit_float32_rows_on_cpu_sorted_by_singular_value(qwen3_tiny):
    result = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=4)
    assert result.vectors.shape == (4, qwen3_tiny.d_model)
    assert result.vectors.dtype == torch.float32 and result.vectors.device.type == "cpu"
    gram = result.vectors @ result.vectors.T
    assert torch.allclose(gram, torch.eye(4), atol=1e-6)
    assert torch.all(result.singular_values[:-1] >= result.singular_values[1:])


def test_cost_counts_every_pass(qwen3_tiny):
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, oversample=2)
    assert result.forward_passes == counted.total  # the sweeps the model really ran
    # one JVP and one backward per step, one forward to build the graph; the JVPs and
    # backwards carry the block of 4, the forward one copy of the prompts
    assert result.forward_passes == 2 * result.iterations + 1
    assert result.prompt_passes == pytest.approx(4 * 2 * result.iterations + 1)
    assert result.wall_time_s > 0


@pytest.mark.parametrize("options", [{"jvp_mode": "double_vjp"}, {"max_rows": 3}])
def test_cost_counts_every_pass_of_the_fallback_and_split_passes(qwen3_tiny, options):
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = power_steering(
            qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, oversample=2, **options
        )
    assert counted.backward > 0
    assert result.forward_passes == counted.total


def test_reports_when_it_did_not_converge(qwen3_tiny):
    with pytest.warns(UserWarning, match="did not converge"):
        result = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, max_iter=2)
    assert result.converged is False and result.iterations == 2


def test_same_seed_same_vectors(qwen3_tiny):
    first = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, seed=3)
    second = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, seed=3)
    assert torch.equal(first.vectors, second.vectors)


@pytest.mark.parametrize("k", [0, 33])
def test_k_outside_one_to_d_model_is_refused(qwen3_tiny, k):
    with pytest.raises(PowersteerError, match="d_model=32"):
        power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=k)


def test_unknown_method_is_refused_with_the_known_ones(qwen3_tiny):
    with pytest.raises(PowersteerError, match="unknown method 'telepathy'; choose one of caa"):
        find_vectors("telepathy", qwen3_tiny, PROMPTS, SOURCE, TARGET)


def test_registry_runs_power_steering(qwen3_tiny):
    direct = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, seed=5)
    via_registry = find_vectors("power", qwen3_tiny, PROMPTS, SOURCE, TARGET, 2, seed=5)
    assert torch.equal(direct.vectors, via_registry.vectors)
