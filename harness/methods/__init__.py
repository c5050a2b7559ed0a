"""Steering-vector methods and their one registry.

Every method takes a model, prompts, a (source, target) layer pair, a number of vectors
and a seed, and returns :class:`SteeringVectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.errors import PowersteerError
from harness.layers import LayerSpec
from harness.methods._result import SteeringVectors
from harness.methods.melbo import median_residual_norm, melbo
from harness.methods.power import power_steering
from harness.methods.random import random_directions
from harness.models import LanguageModel

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


METHODS: dict[str, MethodFunction] = {"power": _power, "melbo": _melbo, "random": _random}


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
    """Run the registered ``method`` (``power``, ``melbo`` or ``random``)."""
    if method not in METHODS:
        raise PowersteerError(
            f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}"
        )
    return METHODS[method](lm, prompts, source, target, k, seed, **options)


__all__ = [
    "METHODS",
    "SteeringVectors",
    "find_vectors",
    "median_residual_norm",
    "melbo",
    "power_steering",
    "random_directions",
]
