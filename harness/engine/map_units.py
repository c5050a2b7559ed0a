"""A sensitivity map cut into work units by source block, cached, and run by an executor.

A unit is the pairs of one source block (or of a few consecutive ones); each unit is one
:func:`~harness.engine.sensitivity.sensitivity_map` call with the map's options. Every pair
starts from the same seeded block and runs the same solver to the same stopping rule
whichever pairs share its passes, so a unit's per-pair results equal the whole map's, to
rounding (a pass's batch holds other rows); only the pass counts differ. A unit shares a
target's backward pass only among its own sources, so units cost more passes in all than
one whole map: they pay off when they run side by side (Ray actors,
``harness.integrations.ray_executor``).

Each finished unit is saved in ``unit_dir`` under a content key (the model's identity, the
prompts, the options and the unit's pairs), so a rerun computes only the missing units; a
unit file is checked (checksum, key, pairs, shapes, finite values, unit vectors) before it
is reused, and one that fails is computed again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from harness.engine.models import LanguageModel
from harness.engine.sensitivity import SensitivityMap, checked_pairs, sensitivity_map
from harness.engine.sensitivity_io import load_unit, save_unit
from harness.engine.shared_passes import Pair
from harness.errors import PowersteerError

UNITS_DIR = "map_units"  # beside map.safetensors in a map's output directory
UNITS_VERSION = 1  # part of every unit key: bump when a unit's result would change
UNKEYED_OPTIONS = ("max_rows",)  # bounds memory only; the result does not depend on it
WHOLE_MAP_ONLY = ("pairs", "progress", "resume", "checkpoint")
MAP_OPTIONS = {
    name: parameter.default
    for name, parameter in inspect.signature(sensitivity_map).parameters.items()
    if parameter.default is not inspect.Parameter.empty and name not in WHOLE_MAP_ONLY
}
"""The options of :func:`sensitivity_map` a unit takes, with their defaults."""


Unit = list[Pair]
UnitResults = Iterator[tuple[int, SensitivityMap]]  # (index into the units, its map)


@dataclass(frozen=True)
class MapJob:
    """What every unit of one map shares: the prompts and :func:`sensitivity_map`'s options."""

    prompts: list[str]
    options: dict[str, Any]

    def map(self, lm: LanguageModel, unit: Unit) -> SensitivityMap:
        return sensitivity_map(lm, self.prompts, unit, **self.options)


class MapExecutor(Protocol):
    """Maps units; see the module docstring."""

    def map_units(self, lm: LanguageModel, job: MapJob, units: Sequence[Unit]) -> UnitResults:
        """Yield ``(index into units, that unit's map)`` for every unit, as they finish."""
        ...


class LocalMapExecutor:
    """Maps units one after another in this process, on the driver's model."""

    def map_units(self, lm: LanguageModel, job: MapJob, units: Sequence[Unit]) -> UnitResults:
        for index, unit in enumerate(units):
            yield index, job.map(lm, unit)


@dataclass
class UnitMap:
    """A map assembled from units, with how many this call computed and how many it read."""

    result: SensitivityMap
    computed: int
    reused: int


def cut_into_units(pairs: Sequence[Pair], sources_per_unit: int = 1) -> list[Unit]:
    """``pairs`` grouped by source block, ``sources_per_unit`` consecutive sources a unit;
    within a unit the pairs keep their order in ``pairs``."""
    if sources_per_unit < 1:
        raise PowersteerError(f"sources_per_unit={sources_per_unit}: give at least 1")
    by_source: dict[int, list[Pair]] = {}
    for source, target in pairs:
        by_source.setdefault(source, []).append((source, target))
    sources = sorted(by_source)
    return [
        [pair for source in sources[start : start + sources_per_unit] for pair in by_source[source]]
        for start in range(0, len(sources), sources_per_unit)
    ]


def merge_unit_maps(units: Sequence[SensitivityMap], pairs: Sequence[Pair]) -> SensitivityMap:
    """One map of ``pairs``, in that order, from unit maps that hold each pair exactly once.

    Costs (passes, wall time) add up over the units; ``options["max_rows"]`` is the lowest
    row cap any unit ended with (None when none had one).
    """
    pairs = [(int(source), int(target)) for source, target in pairs]
    where: dict[Pair, tuple[int, int]] = {}
    for u, unit in enumerate(units):
        for i, pair in enumerate(unit.pairs):
            if tuple(pair) in where:
                raise PowersteerError(f"pair {pair} is in two units; cut the map once")
            where[tuple(pair)] = (u, i)
    missing = [pair for pair in pairs if pair not in where]
    foreign = sorted(set(where) - set(pairs))
    if missing or foreign:
        raise PowersteerError(
            f"the units do not hold exactly the map's pairs (missing {missing}, not in the "
            f"map {foreign}); merge the units cut_into_units made from these pairs"
        )
    first = units[0]
    for unit in units[1:]:
        if unit.n_layers != first.n_layers or _settings(unit) != _settings(first):
            raise PowersteerError(
                "the units were mapped with different models or options; map them alike"
            )
    rows = [where[pair] for pair in pairs]

    def gather(name: str) -> torch.Tensor | None:
        parts = [getattr(units[u], name) for u, _ in rows]
        if any(part is None for part in parts):
            return None
        return torch.stack([part[i] for part, (_, i) in zip(parts, rows, strict=True)])

    caps = [unit.options.get("max_rows") for unit in units]
    caps = [cap for cap in caps if cap is not None]
    return SensitivityMap(
        pairs=pairs,
        singular_values=gather("singular_values"),
        vectors=gather("vectors"),
        residuals=gather("residuals"),
        iterations=[units[u].iterations[i] for u, i in rows],
        converged=[units[u].converged[i] for u, i in rows],
        n_layers=first.n_layers,
        forward_passes=sum(unit.forward_passes for unit in units),
        prompt_passes=sum(unit.prompt_passes for unit in units),
        wall_time_s=sum(unit.wall_time_s for unit in units),
        options={**first.options, "max_rows": min(caps) if caps else None},
    )


def _settings(result: SensitivityMap) -> Any:
    """The options that decide a map's result, as canonical JSON (a loaded unit's options
    went through JSON)."""
    kept = {k: v for k, v in result.options.items() if k not in UNKEYED_OPTIONS}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def unit_key(
    lm: LanguageModel,
    prompts: Sequence[str],
    pairs: Sequence[Pair],
    options: dict[str, Any],
    identity: Any = None,
) -> str:
    """The content key of one unit: a sha256 of everything its result depends on."""
    model = {"name": lm.name, "n_layers": lm.n_layers, "d_model": lm.d_model,
             "dtype": str(lm.compute_dtype)}  # fmt: skip
    keyed = {name: value for name, value in options.items() if name not in UNKEYED_OPTIONS}
    document = {"version": UNITS_VERSION, "model": model, "identity": identity,
                "prompts": list(prompts), "options": keyed,
                "pairs": [list(pair) for pair in pairs]}  # fmt: skip
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def map_in_units(
    lm: LanguageModel,
    prompts: Sequence[str],
    pairs: Sequence[Pair] | None = None,
    *,
    executor: MapExecutor | None = None,
    unit_dir: str | os.PathLike[str] | None = None,
    identity: Any = None,
    sources_per_unit: int = 1,
    progress: bool = False,
    **options: Any,
) -> UnitMap:
    """The map of ``pairs`` (default: all) computed unit by unit on ``executor`` (default
    :class:`LocalMapExecutor`), reusing and saving units in ``unit_dir`` when given.

    ``options`` are :func:`sensitivity_map`'s (``num_vectors``, ``solver``, ``max_iter``,
    ...). ``identity`` joins every unit key: pass what tells this model's weights apart
    (a fingerprint) when ``unit_dir`` may hold units of a same-named other model.
    """
    unknown = sorted(set(options) - set(MAP_OPTIONS))
    if unknown:
        raise PowersteerError(
            f"map_in_units got {', '.join(unknown)}: not options of a map unit; give "
            f"{', '.join(MAP_OPTIONS)}"
        )
    options = {**MAP_OPTIONS, **options}
    pairs = checked_pairs(lm, pairs, options["num_vectors"])
    units = cut_into_units(pairs, sources_per_unit)
    keys = [unit_key(lm, prompts, unit, options, identity) for unit in units]
    directory = None if unit_dir is None else Path(unit_dir)
    finished: dict[int, SensitivityMap] = {}
    if directory is not None:
        for index, (unit, key) in enumerate(zip(units, keys, strict=True)):
            saved = load_unit(
                directory / f"{key}.safetensors", key, unit, options["num_vectors"], lm.d_model
            )
            if saved is not None:
                finished[index] = saved
    reused = len(finished)
    # Largest units first: one started last would keep a single worker busy at the end.
    todo = sorted((i for i in range(len(units)) if i not in finished), key=lambda i: -len(units[i]))
    bar = tqdm(total=len(units), initial=reused, desc="map units", disable=not progress)
    executor = executor or LocalMapExecutor()
    job = MapJob(list(prompts), options)
    for position, result in executor.map_units(lm, job, [units[i] for i in todo]):
        index = todo[position]
        if directory is not None:
            save_unit(directory / f"{keys[index]}.safetensors", result, keys[index])
        finished[index] = result
        bar.update(1)
    bar.close()
    merged = merge_unit_maps([finished[i] for i in range(len(units))], pairs)
    return UnitMap(merged, computed=len(todo), reused=reused)
