"""Save, load and resume sensitivity maps (safetensors + parquet + a resumable state).

``map.safetensors`` is written last, so its presence means the map is finished; every file
carries a checksum (:mod:`harness.engine.safetensors_io`) and a state is checked (finite,
orthonormal bases, the same settings) before a map resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.engine.safetensors_io import DamagedFile, read_checked, read_header, write_checked
from harness.engine.sensitivity import MapState, SensitivityMap
from harness.engine.shared_passes import Pair
from harness.errors import PowersteerError, PowersteerWarning
from harness.files import atomic_write, atomic_write_json

MAP_FILE = "map.safetensors"
TABLE_FILE = "map.parquet"
STATE_FILE = "state.safetensors"
KL_FILE = "map_kl.parquet"
ORTHONORMAL_TOLERANCE = 1e-4  # a QR basis in float32 is orthonormal to ~1e-6


def save_map(out_dir: str | os.PathLike[str], result: SensitivityMap, **metadata: Any) -> Path:
    """Write ``map.safetensors`` (pairs, singular values, vectors, metadata) and
    ``map.parquet`` (one row per pair and singular value) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(out, result)
    # Last: its presence is what marks the map finished.
    _write_map_file(out / MAP_FILE, result, metadata)
    return out


def _write_map_file(path: Path, result: SensitivityMap, metadata: dict[str, Any]) -> None:
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
    if result.residuals is not None:
        tensors["residuals"] = result.residuals.contiguous()
    write_checked(path, tensors, {"powersteer_map": json.dumps(header)})


def _write_table(out: Path, result: SensitivityMap) -> None:
    table = result.to_frame()
    atomic_write(out / TABLE_FILE, lambda path: table.to_parquet(path, index=False))


def load_map(out_dir: str | os.PathLike[str]) -> SensitivityMap:
    path = Path(out_dir) / MAP_FILE
    if not path.exists():
        raise PowersteerError(f"{path} does not exist; run `powersteer map ... --out {out_dir}`")
    return _read_map_file(path)[0]


def _read_map_file(path: Path) -> tuple[SensitivityMap, dict[str, Any]]:
    """The map in ``path`` and its whole header; DamagedFile when either is unsound."""
    tensors, metadata = read_checked(path)
    try:
        header = json.loads(metadata["powersteer_map"])
        return _map_from(tensors, header), header
    except (KeyError, TypeError, ValueError) as error:
        raise DamagedFile(f"{path}: its map metadata is incomplete ({error}); map again") from None


def _map_from(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> SensitivityMap:
    return SensitivityMap(
        pairs=[tuple(pair) for pair in tensors["pairs"].tolist()],
        singular_values=tensors["singular_values"],
        vectors=tensors["vectors"],
        residuals=tensors.get("residuals"),
        iterations=header["iterations"],
        converged=header["converged"],
        n_layers=header["n_layers"],
        forward_passes=header["forward_passes"],
        prompt_passes=header["prompt_passes"],
        wall_time_s=header["wall_time_s"],
        options=header["options"],
    )


def finished_map(out_dir: str | os.PathLike[str], config: dict[str, Any]) -> SensitivityMap | None:
    """The map saved in ``out_dir`` if it was computed with exactly ``config``, else None.

    A finished map whose table is missing (killed between the two files) gets its table
    written again from the map; a damaged map file is reported and left for recomputing.
    """
    out = Path(out_dir)
    if _saved_config(out) != _canonical(config):
        return None
    try:
        result = load_map(out)
    except DamagedFile as error:
        warnings.warn(f"{error}; computing the map again", PowersteerWarning, stacklevel=2)
        return None
    if not (out / TABLE_FILE).is_file():
        _write_table(out, result)
    return result


def map_directory(out_dir: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Where a map with ``config`` belongs: ``out_dir``, unless it already holds a finished
    map with other settings, which is kept; then ``out_dir/settings-<hash of config>``."""
    out = Path(out_dir)
    saved = _saved_config(out)
    if saved is None or saved == _canonical(config):
        return out
    digest = hashlib.sha256(json.dumps(_canonical(config), sort_keys=True).encode()).hexdigest()
    return out / f"settings-{digest[:8]}"


def save_unit(path: str | os.PathLike[str], result: SensitivityMap, key: str) -> Path:
    """Write one work unit's map (:mod:`harness.engine.map_units`) to ``path``, under ``key``."""
    path = Path(path)
    _write_map_file(path, result, {"unit_key": key})
    return path


def load_unit(
    path: str | os.PathLike[str], key: str, pairs: list[Pair], num_vectors: int, d_model: int
) -> SensitivityMap | None:
    """The unit map saved in ``path`` if it is sound and is the unit ``key`` of ``pairs``;
    None when there is none; a damaged or foreign file is reported, removed and left for
    recomputing."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        result, header = _read_map_file(path)
    except DamagedFile as error:
        return _discard(path, str(error), UNIT_DISCARDED)
    problem = _unit_problem(result, header, key, pairs, num_vectors, d_model)
    return _discard(path, problem, UNIT_DISCARDED) if problem else result


def _unit_problem(
    result: SensitivityMap,
    header: dict[str, Any],
    key: str,
    pairs: list[Pair],
    num_vectors: int,
    d_model: int,
) -> str | None:
    """Why a loaded unit cannot be used, or None when it is the unit asked for and sound."""
    if header.get("unit_key") != key:
        return "it was written for another unit (its key differs)"
    if result.pairs != [tuple(pair) for pair in pairs]:
        return f"it holds pairs {result.pairs}, not {pairs}"
    n = len(pairs)
    expected = {"singular_values": (n, num_vectors), "vectors": (n, num_vectors, d_model),
                "residuals": (n, num_vectors)}  # fmt: skip
    for name, shape in expected.items():
        tensor = getattr(result, name)
        if tensor is None or tuple(tensor.shape) != shape:
            return f"its {name} are not of shape {shape}"
        if not bool(torch.isfinite(tensor).all()):
            return f"its {name} hold NaN or infinity"
    if len(result.iterations) != n or len(result.converged) != n:
        return "its iterations or converged flags do not cover its pairs"
    norms = result.vectors.double().norm(dim=-1)
    if float((norms - 1).abs().max()) > ORTHONORMAL_TOLERANCE:
        return "its vectors are not of unit length"
    return None


def _saved_config(out: Path) -> Any:
    """The config of the finished map in ``out`` (None without one or unreadable)."""
    path = out / MAP_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(read_header(path)["powersteer_map"]).get("config")
    except (DamagedFile, KeyError, ValueError, AttributeError):
        return None


def _canonical(config: dict[str, Any]) -> Any:
    return json.loads(json.dumps(config, sort_keys=True))


def save_state(path: str | os.PathLike[str], state: MapState, config: dict[str, Any]) -> None:
    """Checkpoint ``state`` with the run's ``config`` (to refuse resuming a different run)."""
    metadata = {"config": json.dumps(config, sort_keys=True),
                "scalars": json.dumps(state.scalars())}  # fmt: skip
    write_checked(Path(path), state.tensors(), metadata)


def load_state(path: str | os.PathLike[str], config: dict[str, Any]) -> MapState | None:
    """The saved state if ``path`` exists, after checking it belongs to the same run and is
    sound (checksum, finite tensors, orthonormal bases); a state that is not is discarded
    with a warning, and the map starts afresh."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        tensors, metadata = read_checked(path)
        saved_config = json.loads(metadata["config"])
    except (DamagedFile, KeyError, ValueError) as error:
        return _discard(path, str(error))
    if saved_config != _canonical(config):
        raise PowersteerError(
            f"{path} holds an unfinished map with different settings; resume it with the "
            "same arguments, or choose another --out (or delete the file) to start afresh"
        )
    try:
        state = MapState.restore(tensors, json.loads(metadata["scalars"]))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return _discard(path, f"its progress record is incomplete ({error})")
    problem = _state_problem(state)
    return _discard(path, problem) if problem else state


def _state_problem(state: MapState) -> str | None:
    """Why ``state`` cannot be resumed from, or None when it is sound."""
    for index, solver in state.solvers.items():
        for kind in ("current", "basis", "images"):
            if not bool(torch.isfinite(getattr(solver, kind)).all()):
                return f"the {kind} of pair {index} holds NaN or infinity"
        for kind in ("current", "basis"):
            rows = getattr(solver, kind).double()
            gram = rows @ rows.T
            error = float((gram - torch.eye(len(gram), dtype=gram.dtype)).abs().max())
            if error > ORTHONORMAL_TOLERANCE:
                return f"the {kind} block of pair {index} is not orthonormal (off by {error:.2g})"
        if solver.basis.shape != solver.images.shape:
            return (
                f"pair {index} has {len(solver.basis)} basis rows but {len(solver.images)} images"
            )
    return None


STATE_DISCARDED = "cannot resume from it ({}); starting the map afresh"
UNIT_DISCARDED = "not reused ({}); computing this unit again"


def _discard(path: Path, reason: str, what_now: str = STATE_DISCARDED) -> None:
    """Warn that ``path`` is not used, why, and what happens instead; remove it."""
    warnings.warn(
        f"{path}: {what_now.format(reason)}",
        PowersteerWarning,
        stacklevel=3,
    )
    path.unlink(missing_ok=True)
    return None


CANDIDATES_VERSION = 1


def write_candidates(path: str | os.PathLike[str], ranked: Any, keep: int, **metadata: Any) -> Path:
    """Write the best ``keep`` pairs of a :func:`~harness.engine.sensitivity.rank_pairs`
    table as a candidates file (JSON) that a behavior names with
    ``steering.layers: {candidates: FILE}``; the whole ranked table rides along."""
    if keep < 1:
        raise PowersteerError(f"--keep {keep}: keep at least one pair")
    rows = json.loads(ranked.to_json(orient="records"))  # plain numbers, not numpy scalars
    document = {
        "powersteer_candidates": CANDIDATES_VERSION,
        "pairs": [f"{int(r['source'])}:{int(r['target'])}" for r in rows[:keep]],
        "ranked": rows,
        **metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, document, indent=1)


def read_candidates(path: str | os.PathLike[str]) -> list[str]:
    """The ``SOURCE:TARGET`` pairs of a candidates file written by :func:`write_candidates`."""
    path = Path(path)
    fix = "write one with `powersteer map --candidates-out FILE --keep N`"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PowersteerError(f"{path}: no such candidates file; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PowersteerError(f"{path}: unreadable candidates file ({error}); {fix}") from None
    pairs = document.get("pairs") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("powersteer_candidates") != CANDIDATES_VERSION
        or not isinstance(pairs, list)
        or not pairs
        or not all(isinstance(p, str) for p in pairs)
    ):
        raise PowersteerError(f"{path}: not a powersteer candidates file (key pairs); {fix}")
    return pairs
