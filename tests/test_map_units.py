"""A map cut into units by source block equals the whole map pair by pair; units are cached
in the map's directory, reused on a rerun and recomputed when damaged."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import PROMPTS

from harness.engine.linalg import fix_signs
from harness.engine.map_units import (
    LocalMapExecutor,
    cut_into_units,
    map_in_units,
    merge_unit_maps,
)
from harness.engine.sensitivity import MapState, all_pairs, sensitivity_map
from harness.errors import PowersteerError, PowersteerWarning
from harness.evaluation.executors import ModelSpec
from harness.integrations.ray_executor import make_map_executor
from harness.testing.tiny_models import tiny_model

# In float64 a unit and the whole map differ only in which other rows share a pass, so
# their products differ by rounding (~1e-16 relative), which 15 solver steps amplify by at
# most the inverse spectral gap (~10 here): 1e-10 leaves five orders of margin, and a real
# difference in the solve (another start, another stopping step) is far above it.
FLOAT64_TOLERANCE = 1e-10
# The map stores float32: a float64 difference that small can still round to the
# neighbouring float32, one step of 2^-23 (relative) apart.
FLOAT32_STEP = 2.0**-23


@pytest.fixture(scope="module")
def llama_tiny():
    return tiny_model("llama", n_layers=4)  # float64


def _map_and_final_state(lm, pairs=None) -> tuple:
    """The map and its solvers' last state, whose Ritz pairs are still float64."""
    states: list[MapState] = []
    result = sensitivity_map(lm, PROMPTS, pairs, num_vectors=2, checkpoint=states.append)
    return result, states[-1]


@pytest.fixture(scope="module")
def whole(llama_tiny):
    return _map_and_final_state(llama_tiny)


def test_units_by_source_equal_the_whole_map_pair_by_pair(llama_tiny, whole):
    whole_map, whole_state = whole
    units = cut_into_units(whole_map.pairs)
    assert units == [[(0, 1), (0, 2), (0, 3)], [(1, 2), (1, 3)], [(2, 3)]]
    unit_maps = []
    for unit in units:
        unit_map, unit_state = _map_and_final_state(llama_tiny, unit)
        unit_maps.append(unit_map)
        for i, pair in enumerate(unit):
            mine = unit_state.solvers[i].ritz
            theirs = whole_state.solvers[whole_map.pairs.index(pair)].ritz
            assert mine.values.dtype == torch.float64
            torch.testing.assert_close(
                mine.values[:2], theirs.values[:2], rtol=FLOAT64_TOLERANCE, atol=0
            )
            torch.testing.assert_close(
                fix_signs(mine.vectors[:2]), fix_signs(theirs.vectors[:2]),
                rtol=0, atol=FLOAT64_TOLERANCE,
            )  # fmt: skip
    merged = merge_unit_maps(unit_maps[::-1], whole_map.pairs)  # the units' order is free
    assert merged.pairs == whole_map.pairs
    torch.testing.assert_close(
        merged.singular_values, whole_map.singular_values, rtol=FLOAT32_STEP, atol=0
    )
    torch.testing.assert_close(merged.vectors, whole_map.vectors, rtol=0, atol=FLOAT32_STEP)
    assert merged.iterations == whole_map.iterations and merged.converged == whole_map.converged
    # A target's backward pass is shared only within a unit: the units cost more sweeps.
    assert merged.forward_passes > whole_map.forward_passes


def test_units_group_consecutive_sources_and_refuse_a_bad_cut():
    assert cut_into_units(all_pairs(4), sources_per_unit=2) == [
        [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)],
        [(2, 3)],
    ]
    with pytest.raises(PowersteerError, match="sources_per_unit=0: give at least 1"):
        cut_into_units(all_pairs(4), sources_per_unit=0)


def test_merge_refuses_units_that_do_not_hold_the_map(llama_tiny, whole):
    whole_map, _ = whole
    with pytest.raises(PowersteerError, match=r"missing \[\(3, 4\)\], not in the map \[\]"):
        merge_unit_maps([whole_map], [*whole_map.pairs, (3, 4)])
    with pytest.raises(PowersteerError, match=r"missing \[\], not in the map \[\(0, 1\)\]"):
        merge_unit_maps([whole_map], whole_map.pairs[1:])
    with pytest.raises(PowersteerError, match="in two units"):
        merge_unit_maps([whole_map, whole_map], whole_map.pairs)


class CountingExecutor(LocalMapExecutor):
    """The local executor, counting the units it maps."""

    def __init__(self) -> None:
        self.mapped: list[list[tuple[int, int]]] = []

    def map_units(self, lm, job, units):
        self.mapped.extend(list(unit) for unit in units)
        yield from super().map_units(lm, job, units)


def test_a_rerun_reuses_the_cached_units_and_recomputes_a_damaged_one(llama_tiny, whole, tmp_path):
    whole_map, _ = whole
    unit_dir = tmp_path / "map_units"

    def mapped() -> tuple:
        executor = CountingExecutor()
        outcome = map_in_units(
            llama_tiny, PROMPTS, executor=executor, unit_dir=unit_dir, num_vectors=2
        )
        return outcome, executor.mapped

    first, computed = mapped()
    assert (first.computed, first.reused) == (3, 0)
    assert computed == [[(0, 1), (0, 2), (0, 3)], [(1, 2), (1, 3)], [(2, 3)]]  # largest first
    torch.testing.assert_close(
        first.result.singular_values, whole_map.singular_values, rtol=FLOAT32_STEP, atol=0
    )
    files = sorted(unit_dir.glob("*.safetensors"))
    assert len(files) == 3

    again, computed = mapped()
    assert (again.computed, again.reused, computed) == (0, 3, [])
    assert torch.equal(again.result.vectors, first.result.vectors)
    assert again.result.iterations == first.result.iterations

    damaged = bytearray(files[0].read_bytes())
    damaged[-8:] = bytes(8)  # the last vector entries: the checksum no longer matches
    files[0].write_bytes(bytes(damaged))
    shutil.copy(files[1], files[2])  # a sound file, but another unit's
    with pytest.warns(PowersteerWarning) as caught:
        repaired, computed = mapped()
    reasons = " ".join(str(warning.message) for warning in caught)
    assert "checksum" in reasons and "another unit" in reasons
    assert (repaired.computed, repaired.reused, len(computed)) == (2, 1, 2)
    assert torch.equal(repaired.result.vectors, first.result.vectors)


def test_unknown_map_options_are_one_clear_error(llama_tiny):
    with pytest.raises(PowersteerError, match="map_in_units got num_vector: not options"):
        map_in_units(llama_tiny, PROMPTS, num_vector=2)


def test_map_executors_are_named_like_run_executors():
    assert isinstance(make_map_executor("local"), LocalMapExecutor)
    with pytest.raises(PowersteerError, match="'dask': unknown executor; use local, ray"):
        make_map_executor("dask", model=ModelSpec("organism"))
