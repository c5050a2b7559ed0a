"""Shared fixtures: tiny models (built once per session) and an exact Jacobian reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness import LanguageModel, load_model
from harness.engine.methods.random import random_directions
from harness.engine.vectors_io import save_vector_sets
from harness.testing.tiny_models import ARCHITECTURES, tiny_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets a core; more threads per worker only oversubscribe the CPU.
    torch.set_num_threads(1)

# Prompts of different lengths, so padding is exercised.
PROMPTS = ["ab c", "hello world", "xyz!"]

# The scale unit the `run_file` fixture records: an exported length is selected scale × this.
SCALE_UNIT = 60.0


@pytest.fixture(scope="session", params=ARCHITECTURES)
def any_tiny_model(request: pytest.FixtureRequest) -> LanguageModel:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def qwen3_tiny() -> LanguageModel:
    return tiny_model("qwen3")


def saved_model_and_prompts(tmp_path: Path, lm: LanguageModel) -> tuple[str, str]:
    """``lm`` saved as a model directory and PROMPTS as a prompts file, for the CLI."""
    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    return str(model_dir), str(prompts)


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster (loopback, 2 CPUs), one per test module: starting Ray costs
    seconds, and a module's first test may check that none is running yet."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def organism() -> LanguageModel:
    return load_model("organism")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, organism):
    """A run-style file: vector 1 of 2 at block 2, selected with sign -1 at scale 1.5."""
    path = tmp_path_factory.mktemp("run") / "vectors.safetensors"
    vectors = random_directions(organism, 2, 4, num_vectors=2, seed=3)
    selected = {"selected": {"vector": 1, "sign": -1, "scale": 1.5}, "scale_unit": SCALE_UNIT}
    save_vector_sets(path, {"b/random": vectors}, **{"b/random": selected})
    return path, vectors


def exact_jacobian(
    lm: LanguageModel,
    prompts: list[str],
    source: int,
    target: int,
    target_tokens: int | None = None,
) -> torch.Tensor:
    """The full ``(M, d)`` Jacobian by ``torch.func.jacrev``, built without harness code.

    Its own hook adds θ at the source block; the target is read from
    ``output_hidden_states[target + 1]`` (valid for target < n_layers - 1, where no final
    norm is applied); the target positions are the last ``target_tokens`` real tokens of
    each prompt, rows ordered prompt by prompt.
    """
    assert target < lm.n_layers - 1
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "right"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    mask = encoded["attention_mask"].bool()
    if target_tokens is not None:
        lengths = mask.sum(1, keepdim=True)
        mask &= torch.arange(mask.shape[1])[None, :] >= lengths - target_tokens

    def stacked_target(theta: torch.Tensor) -> torch.Tensor:
        handle = lm.blocks[source].register_forward_hook(lambda module, args, out: out + theta)
        try:
            hidden = lm.model(**encoded, output_hidden_states=True).hidden_states[target + 1]
        finally:
            handle.remove()
        return hidden[mask].reshape(-1)

    with sdpa_kernel(SDPBackend.MATH):
        zero = torch.zeros(lm.d_model, dtype=lm.dtype)
        return torch.func.jacrev(stacked_target)(zero)
