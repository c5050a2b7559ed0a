"""Difference of means (contrastive activation addition): the supervised reference.

Unlike Power Steering and MELBO it needs labels: a *contrast* prompt set that shows the
behavior (for the organism, the same requests with the hidden trigger in the system turn).
The direction is the mean residual of the contrast prompts minus that of the prompts, at
the source block and the last prompt token, where the model decides how to answer
(Arditi et al. 2024 read refusal directions there too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from harness.engine.layers import LayerSpec, resolve_layer_pair
from harness.engine.methods.registry import register_method
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.engine.prompts import encode_prompts
from harness.engine.steering import run_to_block
from harness.errors import PowersteerError


def difference_of_means(
    lm: LanguageModel,
    prompts: Sequence[str],
    contrast: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    *,
    seed: int = 0,
    batch_size: int = 64,
) -> SteeringVectors:
    """One unit direction ``mean(h_source(contrast)) - mean(h_source(prompts))``.

    ``.values`` holds the difference's norm before normalising; ``target`` only records
    the layer pair the run used (the direction does not depend on it). Adding ``+v``
    moves the model towards the contrast set.
    """
    started = time.perf_counter()
    if not prompts or not contrast:
        raise PowersteerError(
            "difference of means needs both prompts and contrast prompts; "
            "give the behavior a non-empty contrast: section"
        )
    source_block, target_block = resolve_layer_pair(source, target, lm.n_layers)
    passes = 0

    def mean_last_token(texts: Sequence[str]) -> torch.Tensor:
        nonlocal passes
        total = torch.zeros(lm.d_model, dtype=torch.float64)
        for start in range(0, len(texts), batch_size):
            batch = encode_prompts(lm, texts[start : start + batch_size], target_tokens=1)
            with torch.no_grad():
                hidden = run_to_block(lm, batch, source_block)
            passes += 1
            total += hidden[batch.target_mask].double().sum(dim=0).cpu()
        return total / len(texts)

    difference = mean_last_token(contrast) - mean_last_token(prompts)
    norm = float(difference.norm())
    if not norm > 0 or not torch.isfinite(difference).all():
        raise PowersteerError(
            f"the contrast and prompt means coincide at block {source_block} (norm {norm}); "
            "give contrast prompts that differ from the prompts"
        )
    return SteeringVectors(
        method="caa",
        vectors=(difference / norm).float()[None, :],
        values=torch.tensor([norm]),
        source=source_block,
        target=target_block,
        seed=seed,
        forward_passes=passes,
        prompt_passes=passes,
        wall_time_s=time.perf_counter() - started,
        options={
            "position": "last prompt token",
            "n_prompts": len(prompts),
            "n_contrast": len(contrast),
        },
    )


@register_method(
    "caa",
    label="difference of means (supervised)",
    colour="C2",
    supervised=True,
    rank=2,
    options_from=difference_of_means,
)
def _difference_of_means_for_contrast(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 1,
    *,
    contrast: Sequence[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> SteeringVectors:
    """The common call; the supervised reference is one direction whatever ``num_vectors``."""
    if contrast is None:
        raise PowersteerError("method caa needs contrast prompts (contrast=...)")
    return difference_of_means(lm, prompts, contrast, source, target, seed=seed, **options)
