"""Import the reference implementations' saved vector files (``.pt``) as :class:`SteeringVectors`.

What the references save, all with ``torch.save``:

- MELBO reference (amack315/unsupervised-steering-vectors): its notebooks save
  ``SteeredModel.learned_vectors``, a bare ``(num_vectors, d_model)`` tensor whose rows have
  the norm ``R`` (its ``normalization``), on the model's device.
- Power Steering reference (obayyub/power_steering): ``find_power_iteration.py`` and
  ``find_power_iteration_multi.py`` save a dict with ``"vectors"`` ``(k, d_model)`` unit rows
  in the model's dtype (bfloat16), ``"sigmas"`` (a list of ``‖JᵀJ v‖``, which is ``σ²`` at
  convergence, not ``σ``) and scalars (``model``, ``source_layer``, ``target_layer``, …);
  its MELBO scripts save a dict with ``"vectors"`` (and ``"losses"``, ``"config"``), or one
  nested per layer pair (``{"vectors": {"src7_tgt32": {"vectors": ..., "losses": ...}}}``).

Files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and
dicts only, never arbitrary pickled objects (which could run code). Rows are normalised to
unit; their original norms are kept in the metadata.

Layer numbers are not converted: both references add the vector at ``mlp.down_proj`` of
block ``source_layer`` (``source_site="mlp"`` here). The Power Steering reference reads the
output of block ``target_layer``; the MELBO reference reads ``hidden_states[target_layer]``,
the output of block ``target_layer - 1``.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from harness.engine.methods import SteeringVectors
from harness.engine.sites import Site, check_site
from harness.errors import PowersteerError

REFERENCE_METHODS = ("power", "melbo")
VECTOR_KEYS = ("vectors", "vector", "learned_vectors")
"""Names under which the references store their vectors, preferred in this order."""


def import_reference_vectors(
    path: str | os.PathLike[str],
    *,
    source: int,
    target: int,
    method: str,
    key: str | None = None,
    source_site: Site = "mlp",
    target_site: Site = "block",
) -> SteeringVectors:
    """The vectors of a reference's ``.pt`` file as a result of ``method`` at blocks
    ``source`` → ``target`` (this package's numbering, see the module docstring).

    The file holds a tensor ``(k, d_model)`` or ``(d_model,)``, or a dict holding one: at
    ``key`` (a ``/``-separated path such as ``"vectors/src7_tgt32/vectors"``) or, without
    ``key``, the one tensor stored under a name in :data:`VECTOR_KEYS` (else the only tensor).
    A Power Steering file's ``sigmas`` become the singular values ``√sigmas``, in the file's
    order (the reference does not sort them). Every mistake is one :class:`PowersteerError`
    naming the file.
    """
    path = Path(path)
    if method not in REFERENCE_METHODS:
        raise PowersteerError(f"method {method!r}; use one of {', '.join(REFERENCE_METHODS)}")
    if not 0 <= source < target:
        raise PowersteerError(
            f"source={source}, target={target}: give block indices with 0 <= source < target"
        )
    sites = {
        "source_site": check_site(source_site, name="source_site"),
        "target_site": check_site(target_site, name="target_site"),
    }
    loaded = _load_weights_only(path)
    where, found, parent = _vectors_tensor(path, loaded, key)
    rows = _as_rows(path, found)
    norms = rows.double().norm(dim=1)
    if not bool((norms > 0).all()):
        raise PowersteerError(f"{path}: a row of its vectors is zero, so it has no direction")
    scalars = _scalars(loaded if isinstance(loaded, dict) else {})
    return SteeringVectors(
        method=method,
        vectors=(rows.double() / norms[:, None]).float(),
        values=_values(parent, method, len(rows)),
        source=source,
        target=target,
        seed=scalars["seed"] if isinstance(scalars.get("seed"), int) else 0,
        options={
            **sites,
            "imported": {
                "file": str(path),
                "key": where,
                "dtype": str(found.dtype).removeprefix("torch."),
                "norms": [float(n) for n in norms],
                "reference": scalars,
            },
        },
    )


def _load_weights_only(path: Path) -> Any:
    if not path.is_file():
        raise PowersteerError(f"{path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise PowersteerError(
            f"{path} is refused: torch.load(weights_only=True) reads only tensors, numbers, "
            "strings, lists and dicts, and this file is not a torch.save file of those "
            f"({_reason(error)}); powersteer does not unpickle other objects, which could run "
            "code. Save the vectors alone: torch.save(tensor_or_dict_of_tensors, path)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise PowersteerError(
            f"{path} is not a readable torch.save file ({_reason(error) or 'empty'}); "
            "check that it is complete"
        ) from None


def _reason(error: Exception) -> str:
    """torch's own reason in one sentence, without its boilerplate about ``weights_only``."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    return reasons[0].split(". ")[0].rstrip(".") if reasons else ""


def _tensor_paths(value: dict, prefix: str = "") -> dict[str, tuple[torch.Tensor, dict]]:
    """Every tensor inside nested dicts: ``{"a/b": (tensor, the dict holding it)}``."""
    found: dict[str, tuple[torch.Tensor, dict]] = {}
    for name, item in value.items():
        where = f"{prefix}{name}"
        if isinstance(item, torch.Tensor):
            found[where] = (item, value)
        elif isinstance(item, dict):
            found.update(_tensor_paths(item, f"{where}/"))
    return found


def _vectors_tensor(
    path: Path, loaded: Any, key: str | None
) -> tuple[str | None, torch.Tensor, dict]:
    """Where in ``loaded`` the vectors are (None for a bare tensor), the tensor, and the
    dict holding it (empty for a bare tensor)."""
    if isinstance(loaded, torch.Tensor) and key is None:
        return None, loaded, {}
    if not isinstance(loaded, dict):
        what = "a bare tensor" if isinstance(loaded, torch.Tensor) else type(loaded).__name__
        raise PowersteerError(
            f"{path} holds {what}, not a dict of tensors" + (f" with key {key!r}" if key else "")
        )
    tensors = _tensor_paths(loaded)
    where = key if key is not None else _preferred(path, list(tensors))
    if where not in tensors:
        listing = ", ".join(tensors) or "none"
        raise PowersteerError(f"{path} has no tensor at {where!r}; its tensors: {listing}")
    return where, *tensors[where]


def _preferred(path: Path, paths: list[str]) -> str:
    """The one path named as vectors (:data:`VECTOR_KEYS`, in order), else the only one."""
    candidates = paths
    for name in VECTOR_KEYS:
        named = [where for where in paths if where.rsplit("/", 1)[-1] == name]
        if named:
            candidates = named
            break
    if len(candidates) != 1:
        listing = ", ".join(candidates) or "none"
        raise PowersteerError(
            f"{path} holds no single tensor of vectors (its candidates: {listing}); "
            "choose one with key (--key)"
        )
    return candidates[0]


def _as_rows(path: Path, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32 ``(k, d)`` rows, or one clear error naming the file."""
    shape = tuple(tensor.shape)
    if tensor.ndim == 1:
        tensor = tensor[None, :]
    if tensor.ndim != 2 or 0 in tensor.shape or not tensor.is_floating_point():
        raise PowersteerError(
            f"{path}: its vectors have shape {shape} and dtype {tensor.dtype}; expected "
            "floating-point (k, d_model) rows or one (d_model,) vector"
        )
    if tensor.shape[0] > tensor.shape[1]:
        raise PowersteerError(
            f"{path}: its vectors have shape {shape}, more rows than columns; vectors are "
            "the rows of a (k, d_model) tensor (transpose a (d_model, k) one before saving)"
        )
    rows = tensor.float()
    if not bool(torch.isfinite(rows).all()):
        raise PowersteerError(f"{path}: its vectors contain NaN or infinity")
    return rows


def _values(parent: dict, method: str, count: int) -> torch.Tensor:
    """Singular values from a Power Steering file's ``sigmas`` (``‖JᵀJ v‖ ≈ σ²``), else NaN."""
    sigmas = parent.get("sigmas")
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.tolist()
    numbers = isinstance(sigmas, list) and all(isinstance(s, int | float) for s in sigmas)
    if method == "power" and numbers and len(sigmas) == count and min(sigmas) >= 0:
        return torch.tensor([math.sqrt(s) for s in sigmas], dtype=torch.float32)
    return torch.full((count,), float("nan"))


def _scalars(record: dict) -> dict[str, Any]:
    """The file's own scalar settings (top level and ``config``), as JSON-ready values."""
    plain = (str, int, float, bool, type(None))
    scalars = {str(k): v for k, v in record.items() if isinstance(v, plain)}
    config = record.get("config")
    if isinstance(config, dict):
        scalars |= {str(k): v for k, v in config.items() if isinstance(v, plain)}
    return {k: v for k, v in scalars.items() if not isinstance(v, float) or math.isfinite(v)}
