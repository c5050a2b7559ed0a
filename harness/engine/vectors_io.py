"""Save and load steering vectors as safetensors with their metadata.

Files carry a checksum of their tensors (:mod:`harness.engine.safetensors_io`) and are
checked on load: the checksum, finite values, and unit rows (every method returns unit
directions; a file whose rows are not unit was changed after it was written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from harness.engine.methods import SteeringVectors
from harness.engine.safetensors_io import DamagedFile, read_checked, write_checked
from harness.errors import PowersteerError

METADATA_KEY = "powersteer"
SETS_METADATA_KEY = "powersteer_sets"
UNIT_TOLERANCE = 1e-4  # float32 rows normalised once are unit to ~1e-7


def save_vectors(path: str | os.PathLike[str], result: SteeringVectors, **extra: Any) -> Path:
    """Write ``vectors`` and ``values`` tensors plus JSON metadata (method, layers, cost,
    and ``extra`` such as the model id). Written to a temporary name, then renamed, so an
    interrupted save never leaves a file that looks complete."""
    metadata = {**result.metadata(), **extra}
    return write_checked(
        Path(path),
        {"vectors": result.vectors, "values": result.values},
        {METADATA_KEY: json.dumps(metadata)},
    )


def load_vectors(path: str | os.PathLike[str]) -> tuple[SteeringVectors, dict[str, Any]]:
    """Read a file written by :func:`save_vectors`; returns the result and all metadata."""
    path = Path(path)
    tensors, header = read_checked(path)
    if "vectors" not in tensors or METADATA_KEY not in header:
        raise PowersteerError(
            f"{path} was not written by powersteer (no 'vectors' tensor or metadata); "
            "create it with `powersteer vectors`"
        )
    metadata = _json_metadata(path, header[METADATA_KEY])
    _check_unit_rows(path, "vectors", tensors["vectors"])
    return _from_metadata(path, tensors["vectors"], tensors.get("values"), metadata), metadata


def _check_unit_rows(path: Path, name: str, vectors: torch.Tensor) -> None:
    if vectors.ndim != 2 or not bool(torch.isfinite(vectors).all()):
        raise DamagedFile(f"{path}: {name!r} must be a finite (k, d_model) matrix")
    deviation = float((vectors.double().norm(dim=1) - 1.0).abs().max()) if len(vectors) else 0.0
    if deviation > UNIT_TOLERANCE:
        raise DamagedFile(
            f"{path}: the rows of {name!r} are not unit vectors (a norm is off by "
            f"{deviation:.2g}), so the file was changed after powersteer wrote it; "
            "write it again"
        )


def _json_metadata(path: Path, text: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise DamagedFile(f"{path}: its metadata is not a JSON object; write the file again")
    return metadata


def _from_metadata(
    path: Path, vectors: torch.Tensor, values: torch.Tensor | None, metadata: dict[str, Any]
) -> SteeringVectors:
    try:
        return _steering_vectors(vectors, values, metadata)
    except (KeyError, TypeError, ValueError) as error:
        raise DamagedFile(
            f"{path}: its metadata lacks or garbles {error}; write it again"
        ) from None


def _steering_vectors(
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
        residuals=_optional_tensor(metadata.get("residuals")),
        bands=metadata.get("bands"),
        history=metadata.get("history"),
        options=metadata.get("options", {}),
    )


def _optional_tensor(values: list[float] | None) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float32)


def save_vector_sets(
    path: str | os.PathLike[str], sets: dict[str, SteeringVectors], **extra: Any
) -> Path:
    """Write several named results (a run's ``"behavior/method"`` sets) into one file.

    Tensors are ``NAME.vectors`` and ``NAME.values``; the metadata maps each name to its
    result's metadata, plus ``extra[NAME]`` when given (such as the selected vector and
    scale). Written under a temporary name, then renamed.
    """
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for name, result in sets.items():
        tensors[f"{name}.vectors"] = result.vectors
        tensors[f"{name}.values"] = result.values
        metadata[name] = {**result.metadata(), **extra.get(name, {})}
    return write_checked(Path(path), tensors, {SETS_METADATA_KEY: json.dumps(metadata)})


def load_vector_sets(
    path: str | os.PathLike[str],
) -> dict[str, tuple[SteeringVectors, dict[str, Any]]]:
    """Read a file written by :func:`save_vector_sets`: ``{name: (result, metadata)}``."""
    path = Path(path)
    tensors, header = read_checked(path)
    if SETS_METADATA_KEY not in header:
        raise PowersteerError(
            f"{path} is not a run's vector file (no {SETS_METADATA_KEY!r} metadata); "
            "give the vectors.safetensors of a `powersteer run` directory"
        )
    sets = {}
    for name, metadata in _json_metadata(path, header[SETS_METADATA_KEY]).items():
        vectors = tensors.get(f"{name}.vectors")
        if vectors is None:
            raise DamagedFile(f"{path}: no tensor {name}.vectors for the set {name!r}")
        _check_unit_rows(path, f"{name}.vectors", vectors)
        values = tensors.get(f"{name}.values")
        sets[name] = (_from_metadata(path, vectors, values, metadata), metadata)
    return sets
