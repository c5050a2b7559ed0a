"""powersteer: find, compare and regression-test steering vectors in language models.

Three layers, each importing only the ones below it (``lint-imports`` checks it):
:mod:`harness.integrations` (CLI, pytest plugin, lm-eval model) over
:mod:`harness.evaluation` (behaviors, scorers, sweep, statistics, report) over
:mod:`harness.engine` (models, prompts, steering, the Jacobian operator, methods).

Every name in ``__all__`` is importable from here, but loads on first use (PEP 562), so
``import harness`` and the pytest plugin cost no torch import until a model is touched.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from harness.errors import PowersteerError

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    # engine: models, prompts, steering, the operator, methods, the map, vectors on disk
    "LanguageModel": "harness.engine.models",
    "load_model": "harness.engine.models",
    "wrap_model": "harness.engine.models",
    "resolve_layer": "harness.engine.layers",
    "PromptBatch": "harness.engine.prompts",
    "encode_prompts": "harness.engine.prompts",
    "steer": "harness.engine.steering",
    "LayerJacobian": "harness.engine.jacobian",
    "SteeringVectors": "harness.engine.methods",
    "find_vectors": "harness.engine.methods",
    "register_method": "harness.engine.methods",
    "power_steering": "harness.engine.methods",
    "melbo": "harness.engine.methods",
    "deep_causal_transcoding": "harness.engine.methods",
    "random_directions": "harness.engine.methods",
    "difference_of_means": "harness.engine.methods",
    "sensitivity_map": "harness.engine.sensitivity",
    "load_vectors": "harness.engine.vectors_io",
    "save_vectors": "harness.engine.vectors_io",
    # evaluation: behaviors, scorers, the run, its analysis and report
    "Behavior": "harness.evaluation.behaviors",
    "load_behavior": "harness.evaluation.behaviors",
    "register_scorer": "harness.evaluation.scorers",
    "run": "harness.evaluation.pipeline",
    "rescore": "harness.evaluation.pipeline",
    "RunResult": "harness.evaluation.pipeline",
    "select_cells": "harness.evaluation.analysis",
    "selected_table": "harness.evaluation.analysis",
    "comparisons": "harness.evaluation.analysis",
    "write_report": "harness.evaluation.report",
}

__all__ = ["PowersteerError", "__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
