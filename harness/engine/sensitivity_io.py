"""Save, load and resume sensitivity maps (safetensors + parquet + a resumable state)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.engine.sensitivity import MapState, SensitivityMap
from harness.errors import PowersteerError

MAP_FILE = "map.safetensors"
TABLE_FILE = "map.parquet"
STATE_FILE = "state.safetensors"
KL_FILE = "map_kl.parquet"


def save_map(out_dir: str | os.PathLike[str], result: SensitivityMap, **metadata: Any) -> Path:
    """Write ``map.safetensors`` (pairs, singular values, vectors, metadata) and
    ``map.parquet`` (one row per pair and singular value) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "n_layers": result.n_layers,
        "iterations": result.iterations,
        "converged": result.converged,
        "forward_passes": result.forward_passes,
        "prompt_passes": result.prompt_passes,
        "wall_time_s": result.wall_time_s,
        "options": result.options,
        **metadata,
    }
    tensors = {
        "pairs": torch.tensor(result.pairs, dtype=torch.int64),
        "singular_values": result.singular_values.contiguous(),
        "vectors": result.vectors.contiguous(),
    }
    _atomic_save(tensors, {"powersteer_map": json.dumps(header)}, out / MAP_FILE)
    table = result.to_frame()
    partial = out / (TABLE_FILE + ".partial")
    table.to_parquet(partial, index=False)
    partial.replace(out / TABLE_FILE)
    return out


def load_map(out_dir: str | os.PathLike[str]) -> SensitivityMap:
    path = Path(out_dir) / MAP_FILE
    if not path.exists():
        raise PowersteerError(f"{path} does not exist; run `powersteer map ... --out {out_dir}`")
    tensors = load_file(str(path))
    header = json.loads(_metadata(path)["powersteer_map"])
    return SensitivityMap(
        pairs=[tuple(pair) for pair in tensors["pairs"].tolist()],
        singular_values=tensors["singular_values"],
        vectors=tensors["vectors"],
        iterations=header["iterations"],
        converged=header["converged"],
        n_layers=header["n_layers"],
        forward_passes=header["forward_passes"],
        prompt_passes=header["prompt_passes"],
        wall_time_s=header["wall_time_s"],
        options=header["options"],
    )


def finished_map(out_dir: str | os.PathLike[str], config: dict[str, Any]) -> SensitivityMap | None:
    """The map saved in ``out_dir`` if it was computed with exactly ``config``, else None."""
    path = Path(out_dir) / MAP_FILE
    if not path.exists():
        return None
    header = json.loads(_metadata(path)["powersteer_map"])
    if header.get("config") != json.loads(json.dumps(config, sort_keys=True)):
        return None
    return load_map(out_dir)


def save_state(path: str | os.PathLike[str], state: MapState, config: dict[str, Any]) -> None:
    """Checkpoint ``state`` with the run's ``config`` (to refuse resuming a different run)."""
    metadata = {"config": json.dumps(config, sort_keys=True),
                "scalars": json.dumps(state.scalars())}  # fmt: skip
    _atomic_save(state.tensors(), metadata, Path(path))


def load_state(path: str | os.PathLike[str], config: dict[str, Any]) -> MapState | None:
    """The saved state if ``path`` exists, after checking it belongs to the same run."""
    path = Path(path)
    if not path.exists():
        return None
    metadata = _metadata(path)
    if json.loads(metadata["config"]) != json.loads(json.dumps(config, sort_keys=True)):
        raise PowersteerError(
            f"{path} holds an unfinished map with different settings; resume it with the "
            "same arguments, or choose another --out (or delete the file) to start afresh"
        )
    return MapState.restore(load_file(str(path)), json.loads(metadata["scalars"]))


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
