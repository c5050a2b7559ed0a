"""Steering-vector methods and their one registry.

Every method takes a model, prompts, a (source, target) layer pair, a number of vectors
and a seed, and returns :class:`SteeringVectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.engine.layers import LayerSpec
from harness.engine.methods.caa import difference_of_means
from harness.engine.methods.melbo import median_residual_norm, melbo
from harness.engine.methods.power import power_steering
from harness.engine.methods.random import random_directions
from harness.engine.methods.result import SteeringVectors
from harness.engine.models import LanguageModel
from harness.errors import PowersteerError

MethodFunction = Callable[..., SteeringVectors]


def _power(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    k: int,
    seed: int,
    **options: Any,
) -> SteeringVectors:
    return power_steering(lm, prompts, source, target, k, seed=seed, **options)


def _melbo(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    k: int,
    seed: int,
    **options: Any,
) -> SteeringVectors:
    return melbo(lm, prompts, source, target, k, seed=seed, **options)


def _random(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    k: int,
    seed: int,
    **options: Any,
) -> SteeringVectors:
    return random_directions(lm, source, target, k, seed=seed, **options)


def _caa(
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    k: int,
    seed: int,
    *,
    contrast: Sequence[str] | None = None,
    **options: Any,
) -> SteeringVectors:
    if contrast is None:
        raise PowersteerError("method caa needs contrast prompts (contrast=...)")
    return difference_of_means(lm, prompts, contrast, source, target, seed=seed, **options)


METHODS: dict[str, MethodFunction] = {
    "power": _power,
    "melbo": _melbo,
    "random": _random,
    "caa": _caa,
}
# The functions whose keyword arguments are each method's options.
METHOD_FUNCTIONS: dict[str, Callable[..., SteeringVectors]] = {
    "power": power_steering,
    "melbo": melbo,
    "random": random_directions,
    "caa": difference_of_means,
}
SUPERVISED_METHODS = frozenset({"caa"})  # need contrast prompts; return one direction


def find_vectors(
    method: str,
    lm: LanguageModel,
    prompts: Sequence[str],
    source: LayerSpec,
    target: LayerSpec,
    k: int = 8,
    *,
    seed: int = 0,
    **options: Any,
) -> SteeringVectors:
    """Run the registered ``method`` (``power``, ``melbo``, ``random``, or ``caa`` with
    ``contrast=`` prompts)."""
    if method not in METHODS:
        raise PowersteerError(
            f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}"
        )
    return METHODS[method](lm, prompts, source, target, k, seed, **options)


__all__ = [
    "METHODS",
    "METHOD_FUNCTIONS",
    "SUPERVISED_METHODS",
    "difference_of_means",
    "SteeringVectors",
    "find_vectors",
    "median_residual_norm",
    "melbo",
    "power_steering",
    "random_directions",
]
