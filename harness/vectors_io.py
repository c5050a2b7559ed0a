"""Save and load steering vectors as safetensors with their metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.errors import PowersteerError
from harness.methods import SteeringVectors

METADATA_KEY = "powersteer"


def save_vectors(path: str | os.PathLike[str], result: SteeringVectors, **extra: Any) -> Path:
    """Write ``vectors`` and ``values`` tensors plus JSON metadata (method, layers, cost,
    and ``extra`` such as the model id). Written to a temporary name, then renamed, so an
    interrupted save never leaves a file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**result.metadata(), **extra}
    partial = path.with_name(path.name + ".partial")
    save_file(
        {"vectors": result.vectors.contiguous(), "values": result.values.contiguous()},
        str(partial),
        metadata={METADATA_KEY: json.dumps(metadata)},
    )
    partial.replace(path)
    return path


def load_vectors(path: str | os.PathLike[str]) -> tuple[SteeringVectors, dict[str, Any]]:
    """Read a file written by :func:`save_vectors`; returns the result and all metadata."""
    path = Path(path)
    if not path.exists():
        raise PowersteerError(f"vector file {path} does not exist; check the path")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own untyped errors
        raise PowersteerError(f"{path} is not a readable safetensors file: {error}") from error
    if "vectors" not in tensors or METADATA_KEY not in header:
        raise PowersteerError(
            f"{path} was not written by powersteer (no 'vectors' tensor or metadata); "
            "create it with `powersteer vectors`"
        )
    metadata = json.loads(header[METADATA_KEY])
    vectors = tensors["vectors"]
    if vectors.ndim != 2 or not bool(torch.isfinite(vectors).all()):
        raise PowersteerError(f"{path}: 'vectors' must be a finite (k, d_model) matrix")
    result = SteeringVectors(
        method=metadata["method"],
        vectors=vectors,
        values=tensors.get("values", torch.full((vectors.shape[0],), float("nan"))),
        source=int(metadata["source"]),
        target=int(metadata["target"]),
        seed=int(metadata["seed"]),
        forward_passes=int(metadata.get("forward_passes", 0)),
        prompt_passes=float(metadata.get("prompt_passes", 0.0)),
        wall_time_s=float(metadata.get("wall_time_s", 0.0)),
        iterations=metadata.get("iterations"),
        converged=metadata.get("converged"),
        radius=metadata.get("radius"),
        options=metadata.get("options", {}),
    )
    return result, metadata
