"""powersteer: find, compare and regression-test steering vectors in language models.

The pipeline, one module per step: :mod:`harness.models` loads a model and finds its
decoder blocks, :mod:`harness.prompts` batches prompts, :mod:`harness.steering` adds vectors
to the residual stream, :mod:`harness.jacobian` is the layer-to-layer Jacobian operator, and
:mod:`harness.methods` finds steering vectors (Power Steering, MELBO, random controls).
"""

from harness.errors import PowersteerError
from harness.jacobian import LayerJacobian
from harness.layers import resolve_layer
from harness.methods import (
    SteeringVectors,
    find_vectors,
    melbo,
    power_steering,
    random_directions,
)
from harness.models import LanguageModel, load_model, wrap_model
from harness.prompts import PromptBatch, encode_prompts
from harness.steering import steer
from harness.vectors_io import load_vectors, save_vectors

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
