"""MELBO learns unit directions that maximise the downstream change: orthogonal ones in
turn, or independent restarts; each with its objective history."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from harness import load_vectors, melbo, power_steering, save_vectors
from harness.engine.prompts import encode_prompts
from harness.engine.steering import scale_unit
from harness.testing.pass_counter import count_passes
from harness.testing.tiny_models import tiny_model

SOURCE, TARGET = 0, 2


def activation_change(lm, thetas: torch.Tensor, source_module=None) -> torch.Tensor:
    """Σ_prompts Σ_positions ‖h_t(θ) − h_t(0)‖² (p = 2, q = 1) for each row θ of ``thetas``
    ``(n, d)``, written independently of harness code; returns ``(n,)``. θ is added to the
    output of ``source_module`` (default: the source block)."""
    source_module = lm.blocks[SOURCE] if source_module is None else source_module
    n = thetas.shape[0]
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"].bool()
    # Row i * len(PROMPTS) + j carries θ_i on prompt j.
    deltas = thetas.repeat_interleave(len(PROMPTS), dim=0)[:, None, :]
    batch = {name: tensor.repeat(n, 1) for name, tensor in encoded.items()}

    def target_states(delta: torch.Tensor, inputs: dict) -> torch.Tensor:
        handle = source_module.register_forward_hook(lambda module, args, out: out + delta)
        try:
            with torch.no_grad():
                return lm.model(**inputs, output_hidden_states=True).hidden_states[TARGET + 1]
        finally:
            handle.remove()

    steered = target_states(deltas, batch).reshape(n, len(PROMPTS), *mask.shape[1:], -1)
    unsteered = target_states(torch.zeros(lm.d_model, dtype=lm.dtype), encoded)
    change = (steered - unsteered)[:, mask]  # (n, positions, d)
    return change.norm(dim=-1).pow(2).sum(dim=1)


@pytest.fixture(scope="module")
def learned_and_passes(qwen3_tiny):
    """The learned vectors and the sweeps the model really ran while learning them."""
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = melbo(
            qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=3, radius=4.0, steps=100, lr=0.05
        )
    return result, counted


@pytest.fixture(scope="module")
def learned(learned_and_passes):
    return learned_and_passes[0]


def test_objective_beats_200_random_directions(qwen3_tiny, learned):
    generator = torch.Generator().manual_seed(0)
    random_rows = torch.randn(200, qwen3_tiny.d_model, generator=generator, dtype=torch.float64)
    random_rows = 4.0 * random_rows / random_rows.norm(dim=1, keepdim=True)
    best_random = float(activation_change(qwen3_tiny, random_rows).max())
    first = float(activation_change(qwen3_tiny, 4.0 * learned.vectors[:1].double())[0])
    assert first > best_random
    assert first == pytest.approx(float(learned.values[0]), rel=1e-5)


def test_vectors_are_unit_and_mutually_orthogonal(learned):
    gram = learned.vectors.double() @ learned.vectors.double().T
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert learned.radius == 4.0


def test_cost_counts_forward_and_backward_passes(learned_and_passes):
    learned, counted = learned_and_passes
    assert learned.forward_passes == counted.total  # the sweeps the model really ran
    # unsteered target, then per vector: steps × (forward + backward) + one final evaluation
    assert learned.forward_passes == 1 + 3 * (100 * 2 + 1)


def test_cost_counts_the_pass_that_measures_the_default_radius(qwen3_tiny):
    with count_passes(qwen3_tiny, SOURCE) as counted:
        result = melbo(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, steps=2)
    assert result.forward_passes == counted.total


def test_at_small_radius_first_vector_is_the_top_singular_vector(qwen3_tiny):
    # For small θ, Σ‖h_t(θ) − h_t(0)‖² ≈ ‖Jθ‖², maximised by the top right singular vector.
    small = melbo(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, radius=1e-3, steps=150, lr=1e-4
    )
    power = power_steering(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1)
    assert abs(float(small.vectors[0] @ power.vectors[0])) > 0.9


def test_default_radius_is_the_median_residual_norm(qwen3_tiny):
    result = melbo(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, steps=2)
    batch = encode_prompts(qwen3_tiny, PROMPTS)
    assert result.radius == pytest.approx(scale_unit(qwen3_tiny, batch, SOURCE))


def test_at_the_mlp_site_the_objective_is_the_change_from_adding_to_the_mlp_output():
    # Gemma-3 normalises the MLP output before adding it, so site "mlp" is not the block.
    lm = tiny_model("gemma3")
    result = melbo(
        lm, PROMPTS, SOURCE, TARGET, num_vectors=2, radius=4.0, steps=20, lr=0.05,
        source_site="mlp",
    )  # fmt: skip
    thetas = 4.0 * result.vectors.double()
    at_mlp = activation_change(lm, thetas, source_module=lm.blocks[SOURCE].mlp)
    assert torch.allclose(at_mlp.float(), result.values, rtol=1e-5)
    assert not torch.allclose(activation_change(lm, thetas), at_mlp, rtol=1e-2)
    assert result.options["source_site"] == "mlp" and result.options["target_site"] == "block"


def test_history_rises_and_ends_at_the_reported_value(learned):
    assert len(learned.history) == 3
    for trace, value in zip(learned.history, learned.values, strict=True):
        assert len(trace) == 100 + 1  # before the first step, then after each of 100
        assert trace[-1] > trace[0]
        assert trace[-1] == float(value)


def test_history_is_saved_with_the_vectors(tmp_path, learned):
    path = save_vectors(tmp_path / "melbo.safetensors", learned)
    loaded, metadata = load_vectors(path)
    assert loaded.history == learned.history == metadata["history"]


RESTART = {"radius": 4.0, "steps": 30, "lr": 0.05}


def test_independent_restarts_are_one_vector_runs_with_consecutive_seeds(qwen3_tiny):
    # "Independent": row i is exactly what a one-vector run from seed + i learns, whatever
    # the other rows are; no row constrains another.
    restarts = melbo(
        qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=3, seed=5, orthogonal=False, **RESTART
    )
    for index in range(3):
        alone = melbo(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=1, seed=5 + index, **RESTART)
        assert torch.equal(restarts.vectors[index], alone.vectors[0])
        assert restarts.history[index] == alone.history[0]
    rows = restarts.vectors.double()
    assert torch.allclose(rows.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    off_diagonal = (rows @ rows.T - torch.eye(3, dtype=torch.float64)).abs()
    assert float(off_diagonal.max()) > 0.1  # restarts climb towards the same directions
    assert restarts.options["orthogonal"] is False


def test_orthogonal_and_independent_runs_share_their_first_vector(qwen3_tiny):
    runs = [
        melbo(qwen3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, orthogonal=flag, **RESTART)
        for flag in (True, False)
    ]
    assert torch.equal(runs[0].vectors[0], runs[1].vectors[0])
    assert abs(float(runs[0].vectors[0] @ runs[0].vectors[1])) < 1e-5
