"""powersteer: find, compare and regression-test steering vectors in language models.

Three layers: :mod:`harness.engine` (models, prompts, steering, the Jacobian operator,
methods), :mod:`harness.evaluation` (behaviors, scorers, sweep, statistics, report) and
:mod:`harness.integrations` (CLI, pytest plugin, lm-eval model).
"""

from harness.engine.jacobian import LayerJacobian
from harness.engine.layers import resolve_layer
from harness.engine.methods import (
    SteeringVectors,
    find_vectors,
    melbo,
    power_steering,
    random_directions,
)
from harness.engine.models import LanguageModel, load_model, wrap_model
from harness.engine.prompts import PromptBatch, encode_prompts
from harness.engine.steering import steer
from harness.engine.vectors_io import load_vectors, save_vectors
from harness.errors import PowersteerError

__version__ = "0.1.0"

__all__ = [
    "LanguageModel",
    "LayerJacobian",
    "PowersteerError",
    "PromptBatch",
    "SteeringVectors",
    "encode_prompts",
    "find_vectors",
    "load_model",
    "load_vectors",
    "melbo",
    "power_steering",
    "random_directions",
    "resolve_layer",
    "save_vectors",
    "steer",
    "wrap_model",
]
