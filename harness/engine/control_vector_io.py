"""Control vectors as GGUF files: llama.cpp's ``--control-vector`` and repeng's format.

The file is a GGUF with architecture ``controlvector``, the keys
``controlvector.model_hint`` (repeng writes the model's ``model_type`` there) and
``controlvector.layer_count``, and one 1-D float32 tensor ``direction.N`` per layer.

Which block output layer ``N`` means (read in the consumers' sources; repeng's reader is
tested, llama.cpp's logits are compared by ``tests/test_llama_cpp_export.py``):

* llama.cpp: ``direction.N`` is added, at every position, to the output of 0-based block
  ``N`` (``build_cvec`` right after the block's last residual add). ``direction.0`` is
  refused by its loader, so block 0 cannot be steered there.
* repeng: ``ControlModel`` wraps ``model.layers[N]`` and adds ``directions[N]`` to that
  block's output, the same block as llama.cpp's.

Both add the stored direction times the user's strength (``--control-vector-scaled F S``,
repeng's ``coeff``), so we store the unit vector times the added length: strength 1 is the
exported scale. This package's block ``N`` is the same 0-based block, so no index moves.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from harness.errors import PowersteerError
from harness.files import atomic_write

ARCHITECTURE = "controlvector"
MODEL_NAME_KEY = "powersteer.model"
"""Our own key with the full model name (``model_hint`` holds only its ``model_type``)."""


def write_control_vector(
    path: str | os.PathLike[str],
    directions: dict[int, torch.Tensor],
    *,
    model_hint: str,
    model_name: str | None = None,
) -> Path:
    """Write ``{block: direction}`` as a control-vector GGUF (float32, one tensor a block)."""
    import gguf  # Only the export needs it.

    if not directions:
        raise PowersteerError(f"{path}: no directions to write")
    if 0 in directions:
        raise PowersteerError(
            f"{path}: llama.cpp refuses direction.0 (it cannot steer block 0's output); "
            "steer block 1 or later"
        )

    def write(temporary: Path) -> None:
        writer = gguf.GGUFWriter(str(temporary), ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(directions))
        if model_name is not None:
            writer.add_string(MODEL_NAME_KEY, model_name)
        for block in sorted(directions):
            values = directions[block].detach().float().cpu().numpy().astype(np.float32)
            writer.add_tensor(f"direction.{block}", values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(Path(path), write)


def read_control_vector(
    path: str | os.PathLike[str],
    *,
    num_blocks: int | None = None,
    d_model: int | None = None,
) -> tuple[dict[int, torch.Tensor], dict[str, str]]:
    """``({block: direction}, {"model_hint": …, "model": …})`` of a control-vector GGUF.

    With ``num_blocks`` and ``d_model`` (the model it is meant for), a layer beyond the
    model or a direction of another width is an error naming the file and tensor.
    """
    import gguf  # Only the import needs it.

    path = Path(path)
    if not path.is_file():
        raise PowersteerError(f"{path}: no such control-vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # gguf raises bare ValueErrors and struct errors
        raise PowersteerError(f"{path}: not a GGUF file ({error})") from error
    architecture = _string_field(reader, "general.architecture")
    if architecture != ARCHITECTURE:
        raise PowersteerError(
            f"{path}: general.architecture is {architecture!r}, not {ARCHITECTURE!r}; "
            "this is not a control-vector file"
        )
    info = {"model_hint": _string_field(reader, f"{ARCHITECTURE}.model_hint") or ""}
    model_name = _string_field(reader, MODEL_NAME_KEY)
    if model_name is not None:
        info["model"] = model_name
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise PowersteerError(
                f"{path}: tensor {tensor.name!r} is not named direction.N; rename it"
            )
        block = int(number)
        values = torch.from_numpy(np.array(tensor.data, dtype=np.float32)).reshape(-1)
        if num_blocks is not None and not 1 <= block < num_blocks:
            raise PowersteerError(
                f"{path}: tensor {tensor.name} steers block {block}, but the model has "
                f"blocks 1..{num_blocks - 1} that llama.cpp can steer; give the file of this "
                "model"
            )
        if d_model is not None and values.numel() != d_model:
            raise PowersteerError(
                f"{path}: tensor {tensor.name} has width {values.numel()}, but the model's "
                f"d_model is {d_model} (model_hint {info['model_hint']!r}); give the file "
                "of this model"
            )
        directions[block] = values
    if not directions:
        raise PowersteerError(f"{path}: no direction.N tensors")
    return directions, info


def _string_field(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    return bytes(field.parts[-1]).decode("utf-8")
