"""Vectors from other tools' files into a checked powersteer vectors file.

llama.cpp and repeng control vectors (GGUF, ``direction.N`` added to block ``N``'s
output) and lm-eval's steered-model ``.pt`` (``hookpoint -> steering_vector, coefficient``)
each become one unit vector at its block, its added length kept as the selected scale (a
scale unit of 1), so ``powersteer export`` of the imported file writes the same steering.
The reference repos' ``.pt`` files go through :mod:`harness.engine.reference_io`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from harness.engine.control_vector_io import read_control_vector
from harness.engine.methods.result import SteeringVectors
from harness.engine.vectors_io import save_vectors
from harness.errors import PowersteerError

GGUF_FORMATS = ("llama-cpp", "repeng")
IMPORT_FORMATS = (*GGUF_FORMATS, "lm-eval", "power-ref", "melbo-ref")
_TRAILING_NUMBER = re.compile(r"(?:^|\.)(\d+)$")


def import_steering_file(
    path: str | Path,
    out: str | Path,
    file_format: str,
    *,
    block: int | None = None,
    num_blocks: int | None = None,
    d_model: int | None = None,
) -> SteeringVectors:
    """Read a llama-cpp/repeng GGUF or an lm-eval ``.pt`` and save it to ``out``.

    ``block`` chooses among several layers; ``num_blocks`` and ``d_model`` check the file
    against the model it is meant for.
    """
    path = Path(path)
    if file_format in GGUF_FORMATS:
        directions, info = read_control_vector(path, num_blocks=num_blocks, d_model=d_model)
        model = info.get("model")
    elif file_format == "lm-eval":
        directions, model = _read_lm_eval_steer(path, d_model=d_model), None
    else:
        raise PowersteerError(f"--format {file_format!r} is not one of {', '.join(IMPORT_FORMATS)}")
    chosen = _one_block(path, directions, block)
    vector = directions[chosen].float()
    length = float(vector.norm())
    if not length > 0 or not torch.isfinite(vector).all():
        raise PowersteerError(f"{path}: the direction at block {chosen} is zero or not finite")
    result = SteeringVectors(
        method="imported",
        vectors=(vector / length)[None],
        values=torch.tensor([float("nan")]),
        source=chosen,
        target=chosen,
        seed=0,
        options={"imported": {"file": str(path), "format": file_format, "length": length}},
    )
    extra = {"model": model} if model else {}
    selected = {"vector": 0, "sign": 1, "scale": length}
    save_vectors(out, result, imported_from=str(path), selected=selected, scale_unit=1.0, **extra)
    return result


def _one_block(path: Path, directions: dict[int, torch.Tensor], block: int | None) -> int:
    if block is not None:
        if block not in directions:
            raise PowersteerError(
                f"{path} has no direction for block {block}; it has {sorted(directions)}"
            )
        return block
    if len(directions) != 1:
        raise PowersteerError(f"{path} steers blocks {sorted(directions)}; choose one with --block")
    return next(iter(directions))


def _read_lm_eval_steer(path: Path, *, d_model: int | None) -> dict[int, torch.Tensor]:
    """``{block: coefficient * steering_vector}`` of lm-eval's steered-model ``.pt``."""
    if not path.is_file():
        raise PowersteerError(f"{path}: no such file")
    try:
        config = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises many kinds for a bad pickle
        raise PowersteerError(f"{path}: not a torch.save file of tensors ({error})") from error
    if not isinstance(config, dict) or not config:
        raise PowersteerError(f"{path}: expected a dict of hook point -> steering settings")
    directions: dict[int, torch.Tensor] = {}
    for hookpoint, entry in config.items():
        number = _TRAILING_NUMBER.search(str(hookpoint))
        if number is None or not isinstance(entry, dict) or "steering_vector" not in entry:
            raise PowersteerError(
                f"{path}: hook point {hookpoint!r} is not a block (layers.N) with a steering_vector"
            )
        if entry.get("action", "add") != "add" or entry.get("head_index") is not None:
            raise PowersteerError(
                f"{path}: hook point {hookpoint!r} uses action {entry.get('action')!r} or a "
                "head_index; only whole-output 'add' is a steering vector here"
            )
        vector = torch.as_tensor(entry["steering_vector"]).float().reshape(-1)
        if d_model is not None and vector.numel() != d_model:
            raise PowersteerError(
                f"{path}: {hookpoint}'s steering_vector has width {vector.numel()}, but the "
                f"model's d_model is {d_model}"
            )
        directions[int(number.group(1))] = vector * float(entry.get("steering_coefficient", 1))
    return directions
