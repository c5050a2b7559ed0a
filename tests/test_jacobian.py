"""The Jacobian operator agrees with the exact Jacobian from torch.func.jacrev."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, exact_jacobian

from harness import LayerJacobian, PowersteerError
from harness.engine.steering import run_to_block
from harness.testing.pass_counter import count_passes

# float64 models and float64 reference: products agree to rounding (~1e-15 observed);
# 1e-8 leaves room for summation order while catching any real error.
TOLERANCE = 1e-8


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.mark.parametrize("target_tokens", [None, 2])
def test_jvp_and_vjp_match_exact_jacobian(any_tiny_model, target_tokens):
    lm = any_tiny_model
    jacobian = LayerJacobian(lm, PROMPTS, 0, 2, target_tokens=target_tokens)
    exact = exact_jacobian(lm, PROMPTS, 0, 2, target_tokens)
    assert jacobian.shape == tuple(exact.shape)
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, lm.d_model, generator=generator, dtype=torch.float64)
    cotangents = torch.randn(2, exact.shape[0], generator=generator, dtype=torch.float64)

    assert relative_error(jacobian.jvp(vectors), vectors @ exact.T) < TOLERANCE
    assert relative_error(jacobian.vjp(cotangents), cotangents @ exact) < TOLERANCE


def test_double_vjp_mode_matches_exact_jacobian(qwen3_tiny):
    jacobian = LayerJacobian(qwen3_tiny, PROMPTS, 1, 2, jvp_mode="double_vjp")
    exact = exact_jacobian(qwen3_tiny, PROMPTS, 1, 2)
    vectors = torch.randn(2, qwen3_tiny.d_model, dtype=torch.float64)
    with count_passes(qwen3_tiny, 1) as counted:
        images = jacobian.jvp(vectors)
    assert relative_error(images, vectors @ exact.T) < TOLERANCE
    assert jacobian.passes.sweeps == 3  # forward, backward with graph, second backward
    assert (counted.forward, counted.backward) == (1, 2)
    assert jacobian.passes.sweeps == counted.total


def test_chunked_block_equals_whole_block(qwen3_tiny):
    whole = LayerJacobian(qwen3_tiny, PROMPTS, 0, 2)
    chunked = LayerJacobian(qwen3_tiny, PROMPTS, 0, 2, max_rows=2 * len(PROMPTS))
    vectors = torch.randn(5, qwen3_tiny.d_model, dtype=torch.float64)
    cotangents = torch.randn(5, whole.shape[0], dtype=torch.float64)
    # Chunks sum in another order: float64 rounding (measured 2.7e-15 at most on entries up
    # to 9), which breaks a purely relative test on entries near zero, hence the atol.
    assert torch.allclose(chunked.jvp(vectors), whole.jvp(vectors), rtol=1e-12, atol=1e-12)
    assert torch.allclose(chunked.vjp(cotangents), whole.vjp(cotangents), rtol=1e-10, atol=1e-12)


def test_padding_positions_are_not_targets(qwen3_tiny):
    jacobian = LayerJacobian(qwen3_tiny, PROMPTS, 0, 2)
    real_tokens = sum(len(prompt) for prompt in PROMPTS)  # one token per character
    assert jacobian.shape == (real_tokens * qwen3_tiny.d_model, qwen3_tiny.d_model)
    assert LayerJacobian(qwen3_tiny, PROMPTS, 0, 2, target_tokens=2).shape[0] == (
        2 * len(PROMPTS) * qwen3_tiny.d_model
    )


def test_padded_prompt_gives_the_same_activations_as_alone(qwen3_tiny):
    alone = LayerJacobian(qwen3_tiny, ["ab c"], 0, 2).unsteered()
    padded = LayerJacobian(qwen3_tiny, ["ab c", "hello world"], 0, 2).unsteered()
    assert torch.allclose(padded[: alone.numel()], alone, rtol=1e-12, atol=1e-12)


def test_unsteered_target_is_the_block_output(qwen3_tiny):
    jacobian = LayerJacobian(qwen3_tiny, ["hello"], 0, 2)
    encoded = qwen3_tiny.tokenizer(["hello"], return_tensors="pt")
    hidden = qwen3_tiny.model(**encoded, output_hidden_states=True).hidden_states[3]
    assert torch.allclose(jacobian.unsteered(), hidden.reshape(-1), rtol=1e-12, atol=1e-12)
    assert torch.equal(run_to_block(qwen3_tiny, jacobian.batch, 2)[0], hidden[0])


def test_operator_refuses_wrong_shapes(qwen3_tiny):
    jacobian = LayerJacobian(qwen3_tiny, PROMPTS, 0, 2)
    with pytest.raises(PowersteerError, match="jvp takes"):
        jacobian.jvp(torch.zeros(2, qwen3_tiny.d_model + 1))
    with pytest.raises(PowersteerError, match="vjp takes"):
        jacobian.vjp(torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        (0, 0, "not after source"),
        (3, 1, "not after source"),
        (0, 9, "out of range"),
        (-9, 2, "out of range"),
        (0, 1.5, "outside"),
    ],
)
def test_bad_layers_get_one_clear_error(qwen3_tiny, source, target, message):
    with pytest.raises(PowersteerError, match=message):
        LayerJacobian(qwen3_tiny, PROMPTS, source, target)


def test_empty_prompt_list_is_refused(qwen3_tiny):
    with pytest.raises(PowersteerError, match="empty"):
        LayerJacobian(qwen3_tiny, [], 0, 2)
