"""Vectors out of powersteer, into other tools' formats: llama.cpp and repeng control
vectors (GGUF, :func:`export_control_vector`) and lm-eval's steered model (below).

lm-evaluation-harness's steered model (``lm_eval.models.hf_steered``, registered as
``steered``) reads a ``.pt`` file::

    {hookpoint: {"steering_vector": tensor, "steering_coefficient": float, "action": "add",
                 "bias": None, "head_index": None}}

and adds ``steering_coefficient * steering_vector`` to every position of the output of the
module named ``hookpoint`` in ``model.base_model.named_modules()`` (a forward hook; for a
tuple output, to its first element). ``base_model`` is the model inside the language-model
head, so powersteer's block ``N`` is ``layers.N`` on Llama, Qwen, Mistral and Gemma models
and ``h.N`` on GPT-2: :func:`block_hookpoint` looks the name up on the loaded model rather
than assuming it. We store the unit vector (sign applied) and put the added length, the
scale times the run's scale unit, in the coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.engine.control_vector_io import write_control_vector
from harness.engine.models import LanguageModel
from harness.errors import PowersteerError
from harness.files import atomic_write
from harness.integrations.lm_eval_model import read_steering_vector


@dataclass(frozen=True)
class Exported:
    """What was written: the hook point (module name), the block it is, the coefficient."""

    out: Path
    hookpoint: str
    block: int
    coefficient: float


def block_hookpoint(lm: LanguageModel, block: int) -> str:
    """The name lm-eval's steered model gives block ``block``: its module's name in
    ``model.base_model.named_modules()``."""
    wanted = lm.blocks[lm.layer(block)]
    for name, module in lm.model.base_model.named_modules():
        if module is wanted:
            return name
    raise PowersteerError(
        f"block {block} of {lm.name} is not a module of its base model, so lm-eval's steered "
        "model cannot hook it"
    )


def lm_eval_steer_config(hookpoint: str, vector: torch.Tensor, coefficient: float) -> dict:
    """The ``.pt`` content lm-eval's steered model reads: add ``coefficient * vector`` at
    ``hookpoint``."""
    return {
        hookpoint: {
            "steering_vector": vector.detach().float().cpu().clone(),
            "steering_coefficient": float(coefficient),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    }


def export_lm_eval(
    vectors: str | Path, lm: LanguageModel, out: str | Path, **choice: Any
) -> Exported:
    """Write the vector ``vectors`` (a run directory or vectors file) names as lm-eval's
    steered-model ``.pt`` for ``lm``. ``choice`` is :func:`read_steering_vector`'s keywords
    (``set_name``, ``index``, ``sign``, ``scale``, ``raw_scale``); defaults are the run's
    selection."""
    vector, source, length = read_steering_vector(vectors, **choice)
    _check_width(vector, lm)
    hookpoint = block_hookpoint(lm, source)
    config = lm_eval_steer_config(hookpoint, vector, length)
    path = atomic_write(Path(out), lambda temporary: torch.save(config, temporary))
    return Exported(out=path, hookpoint=hookpoint, block=source, coefficient=length)


def export_control_vector(
    vectors: str | Path, lm: LanguageModel, out: str | Path, **choice: Any
) -> Exported:
    """Write the vector ``vectors`` names as a control-vector GGUF for ``lm`` (llama.cpp's
    ``--control-vector`` and repeng's ``ControlVector.import_gguf`` read the same file).

    The stored direction is the unit vector times the added length, so the consumers'
    strength 1 is the chosen scale; the block index is unchanged (see
    :mod:`harness.engine.control_vector_io`). ``choice`` is as in :func:`export_lm_eval`.
    """
    vector, source, length = read_steering_vector(vectors, **choice)
    _check_width(vector, lm)
    block = lm.layer(source)
    write_control_vector(
        out,
        {block: vector * length},
        model_hint=str(getattr(lm.model.config, "model_type", "")),
        model_name=lm.name,
    )
    return Exported(out=Path(out), hookpoint=f"direction.{block}", block=block, coefficient=1.0)


def _check_width(vector: torch.Tensor, lm: LanguageModel) -> None:
    if vector.shape != (lm.d_model,):
        raise PowersteerError(
            f"the vector has width {vector.shape[-1]}, but {lm.name}'s d_model is "
            f"{lm.d_model}; give the model the vectors were computed on"
        )
