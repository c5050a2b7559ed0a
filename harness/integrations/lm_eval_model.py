"""A steered model for lm-evaluation-harness, registered as ``powersteer``.

The Hugging Face wrapper (``HFLM``) with one vector added to one block's output::

    powersteer lm-eval --model powersteer --tasks my_task --include_path my_tasks/ \\
        --device cpu --model_args pretrained=organism,vectors=reports/RUN,set=NAME/power,scale=1

or from Python, after ``import harness.integrations.lm_eval_model``::

    lm_eval.simple_evaluate(model="powersteer", model_args={...}, tasks=[...])

Model arguments (besides HFLM's own, such as ``batch_size`` and ``device``):

* ``pretrained``: anything :func:`harness.engine.models.load_model` takes (catalogue name, hub id,
  local directory, ``.gguf``); default ``organism``.
* ``vectors``: a run directory (its ``vectors.safetensors``), a run's vector file, or a
  file from ``powersteer vectors``. Without it the model is unsteered.
* ``set``: which ``behavior/method`` of a run's file (needed when it holds several).
* ``index``, ``sign``: the vector and its sign; default the run's selected ones (else 0, +1).
* ``scale``: in units of the median residual norm the run measured at the source block
  (the scale the report shows); default the selected scale. ``raw_scale`` instead gives
  the added vector's length directly (needed for files without a scale unit).
* ``layer``: the block to steer; default the vector's source block.
* ``from_position``: steer only tokens at this position of the text and later (default 0,
  every token); positions count real tokens, so padding does not shift them.

lm-eval 0.4 has no plugin entry point for models, so the bare ``lm_eval`` command only
sees this model once the module is imported; ``powersteer lm-eval`` does that and then
runs lm-eval's own command line with the arguments given.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from harness.engine.methods import SteeringVectors
from harness.engine.models import LanguageModel, load_model
from harness.engine.safetensors_io import read_header
from harness.engine.steering import add_to_residual
from harness.engine.vectors_io import SETS_METADATA_KEY, load_vector_sets, load_vectors
from harness.errors import PowersteerError
from harness.evaluation.run_dir import VECTORS_FILE


def read_steering_vector(
    path: str | Path,
    *,
    set_name: str | None = None,
    index: int | None = None,
    sign: int | None = None,
    scale: float | None = None,
    raw_scale: float | None = None,
) -> tuple[torch.Tensor, int, float]:
    """``(unit vector, source block, added length)`` from a run directory or vector file.

    Defaults come from the run's selection; every mistake is one clear error naming the
    file and the argument.
    """
    path = Path(path)
    file = path / VECTORS_FILE if path.is_dir() else path
    if not file.is_file():
        raise PowersteerError(f"vectors={path}: no such run directory or vector file")
    if SETS_METADATA_KEY in read_header(file):
        result, metadata = _chosen_set(file, set_name)
    else:
        result, metadata = load_vectors(file)
    selected = metadata.get("selected") or {}
    index = int(index if index is not None else selected.get("vector", 0))
    sign = int(sign if sign is not None else selected.get("sign", 1))
    if not 0 <= index < result.num_vectors:
        raise PowersteerError(
            f"index={index} is out of range: {file} holds {result.num_vectors} vectors"
        )
    if sign not in (1, -1):
        raise PowersteerError(f"sign={sign} must be 1 or -1")
    if raw_scale is None:
        raw_scale = _length_from_scale(file, metadata, scale)
    return result.vectors[index].float() * sign, result.source, float(raw_scale)


def _chosen_set(file: Path, set_name: str | None) -> tuple[SteeringVectors, dict[str, Any]]:
    """The set ``set_name`` of a run's vector file (the only one when not named)."""
    sets = load_vector_sets(file)
    if set_name is None:
        if len(sets) != 1:
            raise PowersteerError(
                f"vectors={file} holds {len(sets)} sets; choose one with set=NAME "
                f"(one of: {', '.join(sets)})"
            )
        set_name = next(iter(sets))
    if set_name not in sets:
        raise PowersteerError(f"set={set_name!r} is not in {file}; use one of: {', '.join(sets)}")
    return sets[set_name]


def _length_from_scale(file: Path, metadata: dict[str, Any], scale: float | None) -> float:
    """``scale`` (default: the selected one) times the run's scale unit."""
    unit = metadata.get("scale_unit")
    if unit is None:
        raise PowersteerError(
            f"{file} records no scale unit (it is not from `powersteer run`); "
            "give raw_scale= (the added vector's length) instead of scale="
        )
    if scale is None:
        selected = metadata.get("selected") or {}
        if "scale" not in selected:
            raise PowersteerError(f"{file} records no selected scale; give scale=")
        scale = float(selected["scale"])
    return float(scale) * float(unit)


@register_model("powersteer")
class SteeredLM(HFLM):
    """HFLM with ``length * vector`` added to block ``layer``'s output (see module doc)."""

    def __init__(
        self,
        pretrained: str | LanguageModel = "organism",
        vectors: str | None = None,
        set: str | None = None,  # noqa: A002 - the model_args key users write
        index: int | None = None,
        sign: int | None = None,
        scale: float | None = None,
        raw_scale: float | None = None,
        layer: int | None = None,
        from_position: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        lm = (
            pretrained
            if isinstance(pretrained, LanguageModel)
            else load_model(pretrained, dtype=dtype, device=device)
        )
        super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer, device=device, **kwargs)
        self.steered = lm
        self._steering = ExitStack()
        if vectors is not None:
            vector, source, length = read_steering_vector(
                vectors,
                set_name=set,
                index=_int(index),
                sign=_int(sign),
                scale=_float(scale),
                raw_scale=_float(raw_scale),
            )
            self.set_steering(
                vector,
                int(layer) if layer is not None else source,
                length,
                from_position=int(from_position),
            )

    def set_steering(
        self,
        vector: torch.Tensor | None,
        layer: int = 0,
        length: float = 0.0,
        *,
        from_position: int = 0,
    ) -> None:
        """Steer with ``length * vector`` at block ``layer`` from ``from_position`` on;
        ``vector=None`` or ``length=0`` removes the steering (bit-identical to HFLM)."""
        self._steering.close()
        if vector is None or length == 0:
            return
        lm = self.steered
        if vector.shape != (lm.d_model,) or not torch.isfinite(vector).all():
            raise PowersteerError(
                f"the steering vector has shape {tuple(vector.shape)}; this model needs a "
                f"finite ({lm.d_model},) vector: use vectors computed for it"
            )
        delta = (vector * length).to(device=lm.device, dtype=lm.dtype)
        # Held open until the next set_steering: lm-eval runs the model between calls.
        self._steering.enter_context(
            add_to_residual(
                lm, lm.layer(layer), delta[None, None, :], from_position=int(from_position)
            )
        )


def lm_eval_main(argv: Sequence[str]) -> int:
    """``powersteer lm-eval ARGS``: lm-eval's command line with this model registered."""
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
