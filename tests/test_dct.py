"""Exponential DCT: its linear limit is Power Steering (and the exact SVD of the Jacobian),
its factors beat random directions on its own objective, and its options are checked."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPTS, exact_jacobian

from harness import (
    PowersteerError,
    deep_causal_transcoding,
    find_vectors,
    load_vectors,
    power_steering,
)
from harness.engine.linalg import largest_principal_angle
from harness.engine.methods import method_info
from harness.engine.methods.dct import ChangeMap
from harness.engine.prompts import encode_prompts
from harness.integrations.cli import main
from harness.testing.pass_counter import count_passes

SOURCE, TARGET = 0, 2
# The linear limit's radius. The factors solve the problem for Δ(R v)/R = J v + O(R), so
# they sit O(R · ‖second-order term‖ / gap) from the singular vectors: with R = 1e-5 and
# singular-value gaps of a few units on these models (float64), about 1e-5 rad, so 1e-3
# leaves two orders of margin while still failing for any wrong direction.
LINEAR_RADIUS = 1e-5
ANGLE_TOLERANCE = 1e-3


def gap_index(singular_values: torch.Tensor, candidates: range) -> int:
    """The k among ``candidates`` with the largest gap σ_k / σ_{k+1}: the top-k subspace
    is then well separated, so orthogonal iteration converges to it quickly."""
    return max(candidates, key=lambda k: float(singular_values[k - 1] / singular_values[k]))


def output_change(lm, thetas: torch.Tensor) -> torch.Tensor:
    """‖h_t(θ) − h_t(0)‖ over all target positions of all prompts, for each row θ of
    ``thetas`` ``(n, d)``, written without harness code: the DCT objective at the best
    output factor, ``max_u ⟨u, Δ(θ)⟩ = ‖Δ(θ)‖``."""
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"].bool()

    def target_states(theta: torch.Tensor) -> torch.Tensor:
        handle = lm.blocks[SOURCE].register_forward_hook(lambda module, args, out: out + theta)
        try:
            with torch.no_grad():
                return lm.model(**encoded, output_hidden_states=True).hidden_states[TARGET + 1]
        finally:
            handle.remove()

    unsteered = target_states(torch.zeros(lm.d_model, dtype=lm.dtype))[mask]
    return torch.stack([(target_states(theta)[mask] - unsteered).norm() for theta in thetas])


@pytest.fixture(scope="module")
def nonlinear(qwen3_tiny):
    """Three factors at a radius well inside the nonlinear regime (the calibrated one at
    the default calibration is about 2.7 on this model), and the sweeps really run."""
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = deep_causal_transcoding(
            qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=3, radius=3.0, max_iter=10
        )
    return result, counted


def test_linear_limit_is_the_exact_svd_of_the_jacobian(any_tiny_model):
    lm = any_tiny_model
    exact = exact_jacobian(lm, PROMPTS, SOURCE, TARGET)
    singular_values = torch.linalg.svdvals(exact)
    k = gap_index(singular_values, range(1, 6))
    result = deep_causal_transcoding(
        lm, PROMPTS, SOURCE, TARGET, num_vectors=k, radius=LINEAR_RADIUS, max_iter=200, tol=1e-12
    )
    top = torch.linalg.svd(exact).Vh[:k]
    assert largest_principal_angle(top, result.vectors.double()) < ANGLE_TOLERANCE
    # value / R = ‖J v‖ + O(R): the singular values, to the same relative order
    relative = (result.values.double() / LINEAR_RADIUS - singular_values[:k]).abs()
    assert float((relative / singular_values[:k]).max()) < ANGLE_TOLERANCE


def test_linear_limit_agrees_with_power_steering(qwen3_tiny):
    power = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, tol=1e-8)
    dct = deep_causal_transcoding(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, radius=LINEAR_RADIUS, max_iter=200,
        tol=1e-12,
    )  # fmt: skip
    # σ₁/σ₂ is about 1.23 here, so each vector is determined on its own, not only the pair
    for index in range(2):
        cosine = float((power.vectors[index] @ dct.vectors[index]).abs())
        assert cosine > 1 - ANGLE_TOLERANCE**2
    assert torch.allclose(dct.values / LINEAR_RADIUS, power.singular_values, rtol=1e-3)


def test_mean_aggregate_linear_limit_is_the_averaged_jacobians_svd(qwen3_tiny):
    d = qwen3_tiny.d_model
    exact = exact_jacobian(qwen3_tiny, PROMPTS, SOURCE, TARGET)  # (positions · d, d)
    averaged = exact.reshape(-1, d, d).mean(dim=0)
    singular_values = torch.linalg.svdvals(averaged)
    k = gap_index(singular_values, range(1, 5))
    result = deep_causal_transcoding(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=k, radius=LINEAR_RADIUS,
        max_iter=300, tol=1e-12, aggregate="mean",
    )  # fmt: skip
    top = torch.linalg.svd(averaged).Vh[:k]
    assert largest_principal_angle(top, result.vectors.double()) < ANGLE_TOLERANCE
    stacked_top = torch.linalg.svd(exact).Vh[:k]  # a different problem: it must not match
    assert largest_principal_angle(stacked_top, result.vectors.double()) > 0.1


def test_first_factor_beats_200_random_directions_at_the_same_radius(qwen3_tiny, nonlinear):
    result, _ = nonlinear
    generator = torch.Generator().manual_seed(0)
    random_rows = torch.randn(200, qwen3_tiny.d_model, generator=generator, dtype=torch.float64)
    random_rows = result.radius * random_rows / random_rows.norm(dim=1, keepdim=True)
    best_random = float(output_change(qwen3_tiny, random_rows).max())
    first = float(output_change(qwen3_tiny, result.radius * result.vectors[:1].double())[0])
    assert first > best_random
    assert first == pytest.approx(float(result.values[0]), rel=1e-5)


def test_every_factor_beats_the_median_random_direction(qwen3_tiny, nonlinear):
    result, _ = nonlinear
    generator = torch.Generator().manual_seed(1)
    random_rows = torch.randn(100, qwen3_tiny.d_model, generator=generator, dtype=torch.float64)
    random_rows = result.radius * random_rows / random_rows.norm(dim=1, keepdim=True)
    median_random = float(output_change(qwen3_tiny, random_rows).median())
    values = output_change(qwen3_tiny, result.radius * result.vectors.double())
    assert float(values.min()) > median_random
    assert torch.allclose(values.float(), result.values, rtol=1e-5)


def test_vectors_are_orthonormal_float32_rows_sorted_by_value(qwen3_tiny, nonlinear):
    result, _ = nonlinear
    assert result.vectors.shape == (3, qwen3_tiny.d_model)
    assert result.vectors.dtype == torch.float32 and result.vectors.device.type == "cpu"
    # Gram–Schmidt every step: orthonormal to rounding, not only approximately
    assert torch.allclose(result.vectors @ result.vectors.T, torch.eye(3), atol=1e-6)
    assert torch.all(result.values[:-1] >= result.values[1:])


def test_cost_counts_every_pass_the_model_ran(nonlinear):
    result, counted = nonlinear
    assert result.forward_passes == counted.total
    # the unsteered pass, a forward and a backward per step, the final evaluation; the
    # steered passes carry the 3 factors as 3 copies of the prompts
    assert result.forward_passes == 1 + 2 * result.iterations + 1
    assert result.prompt_passes == pytest.approx(1 + 3 * (2 * result.iterations + 1))
    assert result.wall_time_s > 0


def test_cost_counts_the_calibration_passes(qwen3_tiny):
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = deep_causal_transcoding(
            qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, max_iter=3
        )
    assert counted.backward > 0
    assert result.forward_passes == counted.total
    assert result.forward_passes > 1 + 2 * result.iterations + 1  # the calibration's share


def test_history_has_one_objective_per_step_and_ends_at_the_values(nonlinear):
    result, _ = nonlinear
    (history,) = result.history
    assert len(history) == result.iterations + 1
    assert history[-1] == pytest.approx(float(result.values.sum()), rel=1e-5)
    assert history[-1] > history[0]  # from a random start the factors climb


def test_linear_images_are_the_exact_jacobian_times_the_directions(qwen3_tiny):
    batch = encode_prompts(qwen3_tiny, PROMPTS)
    change = ChangeMap(qwen3_tiny, batch, SOURCE, TARGET, "stack", {
        "source_site": "block", "target_site": "block"})  # fmt: skip
    directions = torch.randn(3, qwen3_tiny.d_model, dtype=torch.float64)
    exact = exact_jacobian(qwen3_tiny, PROMPTS, SOURCE, TARGET)
    assert torch.allclose(change.linear_images(directions), directions @ exact.T, atol=1e-10)


@pytest.mark.parametrize("target_ratio", [0.2, 0.5])
def test_calibrated_radius_departs_from_linear_by_the_target_ratio(qwen3_tiny, target_ratio):
    batch = encode_prompts(qwen3_tiny, PROMPTS)
    change = ChangeMap(qwen3_tiny, batch, SOURCE, TARGET, "stack", {
        "source_site": "block", "target_site": "block"})  # fmt: skip
    radius = change.calibrate(target_ratio, 8, seed=0)
    # the same directions the calibration drew (its seed stream), measured independently:
    # ‖Δ(R c) − R J c‖ / ‖R J c‖ with Δ from hooks and J from jacrev
    generator = torch.Generator().manual_seed(0 + 7919)
    directions = torch.randn(8, qwen3_tiny.d_model, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    exact = exact_jacobian(qwen3_tiny, PROMPTS, SOURCE, TARGET)
    encoded = qwen3_tiny.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"].bool()

    def states(theta):
        hook = qwen3_tiny.blocks[SOURCE].register_forward_hook(lambda m, a, out: out + theta)
        try:
            with torch.no_grad():
                hidden = qwen3_tiny.model(**encoded, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        return hidden[TARGET + 1][mask].reshape(-1)

    zero = states(torch.zeros(qwen3_tiny.d_model, dtype=torch.float64))
    ratios = [
        (states(radius * c) - zero - radius * exact @ c).norm() ** 2
        / (radius * exact @ c).norm() ** 2
        for c in directions
    ]
    reached = float(torch.stack(ratios).mean().sqrt())
    # bisection to a bracket of 2^(1/256) in R; the ratio grows about linearly in R, so
    # the reached ratio is within well under 1% of the target
    assert reached == pytest.approx(target_ratio, rel=0.01)


def test_unreachable_calibration_warns_and_uses_the_closest_radius(qwen3_tiny):
    with pytest.warns(UserWarning, match=r"calibration=1e\+06 is out of reach.*calibration below"):
        result = deep_causal_transcoding(
            qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, calibration=1e6, max_iter=2
        )
    assert result.radius > 0 and torch.isfinite(result.values).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_vectors": 0}, "num_vectors=0 must be in 1..d_model=32"),
        ({"num_vectors": 33}, "num_vectors=33 must be in 1..d_model=32"),
        ({"max_iter": 0}, "dct: max_iter=0 must be at least 1"),
        ({"calibration": 0.0}, "dct: calibration=0.0 must be above 0"),
        ({"calibration_directions": 0}, "dct: calibration_directions=0 must be at least 1"),
        ({"radius": -1.0}, "dct: radius=-1.0 must be above 0"),
        ({"tol": 0.0}, "dct: tol=0.0 must be above 0"),
        ({"aggregate": "sum"}, "dct: aggregate='sum'; use 'stack' or 'mean'"),
    ],
)
def test_bad_options_give_one_clear_error(qwen3_tiny, options, message):
    arguments = {"num_vectors": 2, **options}
    with count_passes(qwen3_tiny, SOURCE) as counted, pytest.raises(PowersteerError) as error:
        deep_causal_transcoding(qwen3_tiny, PROMPTS, SOURCE, TARGET, **arguments)
    assert message in str(error.value)
    assert counted.total == 0  # refused before any model pass


def test_registered_with_its_options(qwen3_tiny):
    info = method_info("dct")
    assert not info.supervised and not info.control
    assert {"calibration", "calibration_directions", "max_iter", "radius", "aggregate"} <= set(
        info.options
    )
    first = find_vectors("dct", qwen3_tiny, PROMPTS, SOURCE, TARGET, 2, seed=3, radius=3.0,
                         max_iter=3)  # fmt: skip
    second = deep_causal_transcoding(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, 2, seed=3, radius=3.0, max_iter=3
    )
    assert torch.equal(first.vectors, second.vectors)
    assert first.method == "dct" and first.options["aggregate"] == "stack"


def test_stops_early_once_the_factors_stop_moving(qwen3_tiny):
    result = deep_causal_transcoding(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, radius=LINEAR_RADIUS, max_iter=500,
        tol=1e-8,
    )  # fmt: skip
    assert result.converged is True and result.iterations < 500
    capped = deep_causal_transcoding(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, radius=LINEAR_RADIUS, max_iter=2,
        tol=1e-8,
    )  # fmt: skip
    assert capped.converged is False and capped.iterations == 2


def test_cli_vectors_runs_dct_with_its_flags(tmp_path, qwen3_tiny, capsys):
    model_dir = tmp_path / "tiny-qwen3"
    qwen3_tiny.model.save_pretrained(model_dir)
    qwen3_tiny.tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": p}) for p in PROMPTS))
    out = tmp_path / "v.safetensors"
    code = main(["vectors", "--model", str(model_dir), "--prompts", str(prompts), "--field",
                 "text", "--source", "0", "--target", "2", "-k", "2", "--method", "dct",
                 "--calibration", "0.3", "--aggregate", "mean", "--max-iter", "3",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    result, _ = load_vectors(out)
    assert result.method == "dct" and result.vectors.shape == (2, 32)
    assert result.options["calibration"] == 0.3 and result.options["aggregate"] == "mean"
    assert result.iterations <= 3 and result.radius > 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
