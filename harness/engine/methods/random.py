"""Random unit directions: the control every report compares against."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.linalg import random_orthonormal_rows
from harness.engine.methods.registry import register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.errors import PowersteerError

# The control's own seed stream. Power Steering, DCT and MELBO start from the Gaussian
# draws of a generator seeded ``seed``; a control drawn from that stream is their start
# block, and MELBO, which moves little from its starts in 100 steps, was compared with its
# own starting directions (cosine 0.94 on the organism's anti-refusal).
CONTROL_SEED_OFFSET = 104_729


def random_directions(
    lm: LanguageModel,
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    seed: int = 0,
) -> SteeringVectors:
    """``num_vectors`` orthonormal directions drawn uniformly from the sphere (QR of a Gaussian)."""
    started = time.perf_counter()
    if not 1 <= num_vectors <= lm.d_model:
        raise PowersteerError(f"num_vectors={num_vectors} must be in 1..d_model={lm.d_model}")
    source_block, target_block = resolve_layer_pair(source, target, lm.n_layers)
    vectors = random_orthonormal_rows(num_vectors, lm.d_model, seed=seed + CONTROL_SEED_OFFSET)
    return SteeringVectors(
        method="random",
        vectors=vectors,
        values=torch.full((num_vectors,), float("nan")),
        source=source_block,
        target=target_block,
        seed=seed,
        wall_time_s=time.perf_counter() - started,
    )


@register_method(
    "random",
    label="random directions",
    colour="C7",
    control=True,
    rank=3,
    options_from=random_directions,
)
def _random_for_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int,
    *,
    seed: int = 0,
) -> SteeringVectors:
    """The common call: random directions do not look at the prompts."""
    return random_directions(lm, source, target, num_vectors, seed=seed)
