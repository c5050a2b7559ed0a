"""Save and load steering vectors as safetensors with their metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.engine.methods import SteeringVectors
from harness.errors import PowersteerError

METADATA_KEY = "powersteer"
SETS_METADATA_KEY = "powersteer_sets"


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
    tensors, header = _read_safetensors(path)
    if "vectors" not in tensors or METADATA_KEY not in header:
        raise PowersteerError(
            f"{path} was not written by powersteer (no 'vectors' tensor or metadata); "
            "create it with `powersteer vectors`"
        )
    metadata = json.loads(header[METADATA_KEY])
    vectors = tensors["vectors"]
    if vectors.ndim != 2 or not bool(torch.isfinite(vectors).all()):
        raise PowersteerError(f"{path}: 'vectors' must be a finite (k, d_model) matrix")
    result = _from_metadata(vectors, tensors.get("values"), metadata)
    return result, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, or one clear error."""
    if not path.exists():
        raise PowersteerError(f"vector file {path} does not exist; check the path")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own untyped errors
        raise PowersteerError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, header


def _from_metadata(
    vectors: torch.Tensor, values: torch.Tensor | None, metadata: dict[str, Any]
) -> SteeringVectors:
    return SteeringVectors(
        method=metadata["method"],
        vectors=vectors,
        values=values if values is not None else torch.full((vectors.shape[0],), float("nan")),
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


def save_vector_sets(
    path: str | os.PathLike[str], sets: dict[str, SteeringVectors], **extra: Any
) -> Path:
    """Write several named results (a run's ``"behavior/method"`` sets) into one file.

    Tensors are ``NAME.vectors`` and ``NAME.values``; the metadata maps each name to its
    result's metadata, plus ``extra[NAME]`` when given (such as the selected vector and
    scale). Written under a temporary name, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for name, result in sets.items():
        tensors[f"{name}.vectors"] = result.vectors.contiguous()
        tensors[f"{name}.values"] = result.values.contiguous()
        metadata[name] = {**result.metadata(), **extra.get(name, {})}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={SETS_METADATA_KEY: json.dumps(metadata)})
    partial.replace(path)
    return path


def load_vector_sets(
    path: str | os.PathLike[str],
) -> dict[str, tuple[SteeringVectors, dict[str, Any]]]:
    """Read a file written by :func:`save_vector_sets`: ``{name: (result, metadata)}``."""
    path = Path(path)
    tensors, header = _read_safetensors(path)
    if SETS_METADATA_KEY not in header:
        raise PowersteerError(
            f"{path} is not a run's vector file (no {SETS_METADATA_KEY!r} metadata); "
            "give the vectors.safetensors of a `powersteer run` directory"
        )
    sets = {}
    for name, metadata in json.loads(header[SETS_METADATA_KEY]).items():
        vectors = tensors.get(f"{name}.vectors")
        if vectors is None or vectors.ndim != 2 or not bool(torch.isfinite(vectors).all()):
            raise PowersteerError(f"{path}: {name}.vectors must be a finite (k, d_model) matrix")
        sets[name] = (_from_metadata(vectors, tensors.get(f"{name}.values"), metadata), metadata)
    return sets
