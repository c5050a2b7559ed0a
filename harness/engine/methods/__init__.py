"""Steering-vector methods and their one registry (:mod:`harness.engine.methods.registry`).

Every method takes a model, prompts, a (source, target) layer pair, a number of vectors
and a seed, and returns :class:`SteeringVectors`. Importing this package registers the
built-in methods; a new method is one file here plus one import line below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.engine.layers import LayerSpec
from harness.engine.methods.caa import difference_of_means
from harness.engine.methods.dct import deep_causal_transcoding
from harness.engine.methods.melbo import melbo
from harness.engine.methods.power import power_steering
from harness.engine.methods.random import random_directions
from harness.engine.methods.registry import (
    METHODS,
    MethodInfo,
    method_info,
    ranked_methods,
    register_method,
    unsupervised_methods,
)
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel


def find_vectors(
    method: str,
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    num_vectors: int = 8,
    *,
    seed: int = 0,
    **options: Any,
) -> SteeringVectors:
    """Run the registered ``method`` (``power``, ``melbo``, ``dct``, ``random``, or ``caa`` with
    ``contrast=`` prompts)."""
    return method_info(method).function(
        lm, prompts, source, target, num_vectors, seed=seed, **options
    )


__all__ = [
    "METHODS",
    "MethodInfo",
    "SteeringVectors",
    "deep_causal_transcoding",
    "difference_of_means",
    "find_vectors",
    "melbo",
    "method_info",
    "ranked_methods",
    "power_steering",
    "random_directions",
    "register_method",
    "unsupervised_methods",
]
