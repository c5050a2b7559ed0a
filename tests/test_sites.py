"""Hook sites (block, attention and MLP outputs) and the Jacobian at a steered point agree
with exact Jacobians built here by torch.func.jacrev, on Qwen3, Llama, GPT-2 and Gemma-3."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS
from test_steering import residual_entering
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness import LanguageModel, LayerJacobian, PowersteerError, power_steering, steer
from harness.engine.sensitivity import sensitivity_map
from harness.engine.sites import SITES, site_module
from harness.engine.steering import add_to_residual
from harness.testing.tiny_models import SUBLAYER_ARCHITECTURES, tiny_model

# float64 models (norms kept in float64) against a float64 jacrev reference: the two sides
# compute the same derivative and differ only in summation order (forward vs reverse mode,
# vmapped or not), a few ulps per op; observed at most 1.4e-15 relative on every site pair
# and architecture here. 1e-10 leaves five orders for other BLAS builds and still catches
# any real error: a wrong site, a dropped tuple element or a wrong linearisation point
# (moving θ₀ by 6 changes J by 85% on Gemma-3) show up at 1e-2 or more.
TOLERANCE = 1e-10
SOURCE, TARGET = 0, 2

# Written out here, not taken from harness.engine.sites: the reference Jacobians must not
# share the code they check.
SUBLAYERS = {
    "qwen3": {"attn": "self_attn", "mlp": "mlp"},
    "llama": {"attn": "self_attn", "mlp": "mlp"},
    "gemma3": {"attn": "self_attn", "mlp": "mlp"},
    "gpt2": {"attn": "attn", "mlp": "mlp"},
}


@pytest.fixture(scope="module", params=SUBLAYER_ARCHITECTURES)
def arch_model(request: pytest.FixtureRequest) -> tuple[str, LanguageModel]:
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="module")
def gemma3_tiny() -> LanguageModel:
    return tiny_model("gemma3")


def module_at(lm: LanguageModel, architecture: str, layer: int, site: str) -> nn.Module:
    block = lm.blocks[layer]
    return block if site == "block" else getattr(block, SUBLAYERS[architecture][site])


def first_of(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def plus(output: object, theta: torch.Tensor) -> object:
    """``output`` with ``theta`` added to its activation (attention returns a tuple)."""
    if isinstance(output, tuple):
        return (output[0] + theta, *output[1:])
    return output + theta


def exact_site_jacobians(
    lm: LanguageModel, architecture: str, source_site: str, at: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``{target_site: (M, d) Jacobian}`` of each site's output of block ``TARGET`` w.r.t. θ
    added at ``source_site`` of block ``SOURCE``, at θ = ``at`` (0 by default), by jacrev over
    a full forward pass with hooks of its own; rows are each prompt's real tokens in order,
    as the harness stacks them."""
    lm.tokenizer.padding_side = "right"
    encoded = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"].bool()
    source = module_at(lm, architecture, SOURCE, source_site)

    def stacked_targets(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        captured: dict[str, torch.Tensor] = {}

        def reader(site: str):
            def read(module: nn.Module, args: tuple, out: object) -> None:
                captured[site] = first_of(out)

            return read

        handles = [source.register_forward_hook(lambda module, args, out: plus(out, theta))]
        handles += [
            module_at(lm, architecture, TARGET, site).register_forward_hook(reader(site))
            for site in SITES
        ]
        try:
            lm.model(**encoded)
        finally:
            for handle in handles:
                handle.remove()
        return tuple(captured[site][mask].reshape(-1) for site in SITES)

    point = torch.zeros(lm.d_model, dtype=lm.dtype) if at is None else at
    with sdpa_kernel(SDPBackend.MATH):
        return dict(zip(SITES, torch.func.jacrev(stacked_targets)(point), strict=True))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def random_rows(rows: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("source_site", SITES)
def test_jvp_and_vjp_match_exact_jacobian_at_every_site(arch_model, source_site):
    architecture, lm = arch_model
    exact_by_target = exact_site_jacobians(lm, architecture, source_site)
    vectors = random_rows(3, lm.d_model)
    for target_site, exact in exact_by_target.items():
        jacobian = LayerJacobian(
            lm, PROMPTS, SOURCE, TARGET, source_site=source_site, target_site=target_site
        )
        assert jacobian.shape == tuple(exact.shape)
        cotangents = random_rows(2, exact.shape[0], seed=2)
        jvp_error = relative_error(jacobian.jvp(vectors), vectors @ exact.T)
        vjp_error = relative_error(jacobian.vjp(cotangents), cotangents @ exact)
        assert max(jvp_error, vjp_error) < TOLERANCE, (target_site, jvp_error, vjp_error)


@pytest.mark.parametrize("architecture", ["qwen3", "gemma3"])
def test_double_vjp_mode_matches_exact_jacobian_at_a_sublayer(architecture):
    lm = tiny_model(architecture)
    jacobian = LayerJacobian(
        lm, PROMPTS, SOURCE, TARGET, source_site="mlp", target_site="attn", jvp_mode="double_vjp"
    )
    exact = exact_site_jacobians(lm, architecture, "mlp")["attn"]
    vectors = random_rows(2, lm.d_model)
    assert relative_error(jacobian.jvp(vectors), vectors @ exact.T) < TOLERANCE


@pytest.fixture(scope="module")
def gemma3_at_point(gemma3_tiny) -> dict[str, object]:
    """A steered point on Gemma-3 and the exact Jacobians from the MLP site there and at 0."""
    direction = random_rows(1, gemma3_tiny.d_model, seed=5)[0]
    direction = direction / direction.norm()
    scale = 6.0  # about half the residual norm: far enough out to change J
    return {
        "direction": direction,
        "scale": scale,
        "at_point": exact_site_jacobians(gemma3_tiny, "gemma3", "mlp", at=scale * direction),
        "at_zero": exact_site_jacobians(gemma3_tiny, "gemma3", "mlp"),
    }


@pytest.mark.parametrize("jvp_mode", ["forward", "double_vjp"])
@pytest.mark.parametrize("target_site", ["block", "mlp"])
def test_jacobian_at_a_steered_point_matches_jacrev_there(
    gemma3_tiny, gemma3_at_point, jvp_mode, target_site
):
    lm = gemma3_tiny
    jacobian = LayerJacobian(
        lm, PROMPTS, SOURCE, TARGET, jvp_mode=jvp_mode, at=gemma3_at_point["direction"],
        at_scale=gemma3_at_point["scale"], source_site="mlp", target_site=target_site,
    )  # fmt: skip
    at_point = gemma3_at_point["at_point"][target_site]
    assert relative_error(at_point, gemma3_at_point["at_zero"][target_site]) > 1e-2  # it matters
    vectors = random_rows(3, lm.d_model)
    cotangents = random_rows(2, at_point.shape[0], seed=2)
    assert relative_error(jacobian.jvp(vectors), vectors @ at_point.T) < TOLERANCE
    assert relative_error(jacobian.vjp(cotangents), cotangents @ at_point) < TOLERANCE
    # unsteered() stays f(0), the activations without any steering
    plain = LayerJacobian(lm, PROMPTS, SOURCE, TARGET, target_site=target_site).unsteered()
    assert torch.equal(jacobian.unsteered(), plain)


def test_steered_point_must_be_one_finite_vector(qwen3_tiny):
    with pytest.raises(PowersteerError, match="shape"):
        LayerJacobian(qwen3_tiny, PROMPTS, 0, 2, at=torch.ones(2, qwen3_tiny.d_model))
    with pytest.raises(PowersteerError, match="NaN"):
        LayerJacobian(qwen3_tiny, PROMPTS, 0, 2, at=torch.full((qwen3_tiny.d_model,), torch.nan))


@pytest.mark.parametrize("architecture", ["qwen3", "llama", "gpt2"])
def test_mlp_site_equals_block_site_where_the_mlp_output_joins_the_residual(architecture):
    lm = tiny_model(architecture)
    vector = random_rows(1, lm.d_model)[0]
    with steer(lm, vector, layer=1, scale=2.0, site="mlp"):
        at_mlp = residual_entering(lm, 2)
    with steer(lm, vector, layer=1, scale=2.0):
        at_block = residual_entering(lm, 2)
    assert torch.allclose(at_mlp, at_block, rtol=0, atol=1e-12)


def test_mlp_and_attention_sites_differ_from_the_block_on_gemma3(gemma3_tiny):
    lm = gemma3_tiny
    vector = random_rows(1, lm.d_model)[0]
    entering = {}
    for site in SITES:
        with steer(lm, vector, layer=1, scale=2.0, site=site):
            entering[site] = residual_entering(lm, 2)
    plain = residual_entering(lm, 2)
    # The post-MLP norm rescales what the MLP adds: the vector does not arrive as itself.
    block_shift = (entering["block"] - plain).norm()
    for site in ("attn", "mlp"):
        assert (entering[site] - entering["block"]).norm() > 1e-2 * block_shift
        assert not torch.equal(entering[site], plain)


def test_attention_site_adds_to_the_attention_output(gemma3_tiny):
    lm = gemma3_tiny
    attention = lm.blocks[1].self_attn
    vector = random_rows(1, lm.d_model)[0]
    seen = []
    handle = attention.register_forward_hook(lambda module, args, out: seen.append(out[0]))
    try:
        residual_entering(lm, 2)
        with steer(lm, vector, layer=1, scale=-3.0, site="attn"):
            residual_entering(lm, 2)
    finally:
        handle.remove()
    plain, steered = seen
    assert torch.allclose(steered - plain, (-3.0 * vector).expand_as(plain), atol=1e-12)


def test_from_position_at_the_mlp_site_steers_that_position_and_later(qwen3_tiny):
    lm = qwen3_tiny
    delta = random_rows(1, lm.d_model)[None]
    plain = residual_entering(lm, 2)
    with add_to_residual(lm, 1, delta, from_position=3, site="mlp"):
        steered = residual_entering(lm, 2)
    assert torch.equal(steered[:, :3], plain[:, :3])
    assert torch.allclose(steered[:, 3:], plain[:, 3:] + delta, atol=1e-12)


def test_sublayer_hooks_are_removed_on_exit(qwen3_tiny):
    lm = qwen3_tiny
    modules = [lm.blocks[1], lm.blocks[1].mlp, lm.blocks[1].self_attn]
    before = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in modules]
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_residual(lm, 1, torch.ones(1, 1, lm.d_model), from_position=2, site="mlp"):
            raise RuntimeError("boom")
    with steer(lm, torch.ones(lm.d_model), 1, site="attn"):
        pass
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in modules] == before


def test_block_without_sublayers_is_one_clear_error(qwen3_tiny):
    odd_block = nn.Module()
    odd_block.mixer = nn.Linear(2, 2)
    odd_block.norm = nn.LayerNorm(2)
    odd = LanguageModel(
        model=qwen3_tiny.model, tokenizer=qwen3_tiny.tokenizer,
        blocks=nn.ModuleList([odd_block, odd_block]), name="odd",
    )  # fmt: skip
    with pytest.raises(PowersteerError, match="attention sub-layer.*mixer, norm"):
        site_module(odd, 0, "attn")
    with pytest.raises(PowersteerError, match="MLP sub-layer.*mixer, norm"):
        site_module(odd, 1, "mlp")
    assert site_module(odd, 1, "block") is odd_block


def test_unknown_site_name_is_refused(qwen3_tiny):
    with pytest.raises(PowersteerError, match="source_site='resid' is not a hook site"):
        LayerJacobian(qwen3_tiny, PROMPTS, 0, 2, source_site="resid")
    with pytest.raises(PowersteerError, match="not a hook site"):
        with steer(qwen3_tiny, torch.ones(qwen3_tiny.d_model), 1, site="down_proj"):
            pass


def test_power_steering_takes_sites_and_a_steered_point(gemma3_tiny, gemma3_at_point):
    result = power_steering(
        gemma3_tiny, PROMPTS, SOURCE, TARGET, num_vectors=2, source_site="mlp",
        at=gemma3_at_point["direction"], at_scale=gemma3_at_point["scale"],
    )  # fmt: skip
    exact = torch.linalg.svdvals(gemma3_at_point["at_point"]["block"])[:2]
    assert torch.allclose(result.values.double(), exact, rtol=1e-4)
    assert result.options["source_site"] == "mlp" and result.options["linearised_at"]


def test_the_map_at_the_mlp_site_matches_the_exact_site_jacobian(gemma3_tiny):
    exact = exact_site_jacobians(gemma3_tiny, "gemma3", "mlp")["mlp"]
    mapped = sensitivity_map(
        gemma3_tiny, PROMPTS, [(SOURCE, TARGET)], num_vectors=2, source_site="mlp",
        target_site="mlp", tol=1e-8, max_iter=30,
    )  # fmt: skip
    expected = torch.linalg.svdvals(exact)[:2].float()
    assert torch.allclose(mapped.singular_values[0], expected, rtol=1e-4)
    assert mapped.options["source_site"] == "mlp" and mapped.converged == [True]
