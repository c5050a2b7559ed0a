"""A map whose units run on a real local Ray cluster (loopback, 2 CPUs) is the local map.

The model is a tiny float64 Llama saved to a directory, which every actor loads by path
(weights never travel); the reference is the same units mapped in this process.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from conftest import PROMPTS, saved_model_and_prompts

from harness.engine.map_units import UNITS_DIR, map_in_units
from harness.engine.models import load_model
from harness.engine.prompts import DEFAULT_TARGET_TOKENS
from harness.engine.sensitivity_io import TABLE_FILE, load_map
from harness.evaluation.executors import ModelSpec
from harness.integrations.cli import main
from harness.integrations.ray_executor import RayMapExecutor, make_map_executor
from harness.testing.tiny_models import tiny_model

pytest.importorskip("ray")  # in the dev extra; CI has it
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_cluster")]

OPTIONS = {"num_vectors": 2, "target_tokens": DEFAULT_TARGET_TOKENS}  # the CLI's, with -k 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The saved model directory, the prompts file and the local map of that model."""
    directory = tmp_path_factory.mktemp("model")
    model_dir, prompts = saved_model_and_prompts(directory, tiny_model("llama", n_layers=4))
    lm = load_model(model_dir, dtype="float64")
    local = map_in_units(lm, PROMPTS, **OPTIONS)
    assert (local.computed, local.reused) == (3, 0)  # sources 0, 1, 2
    return model_dir, prompts, lm, local.result


def assert_same_map(result, local) -> None:
    # The same units: equal, but for the rounding another thread count may give in float64
    # (far below the float32 the map stores, which can still round one step, 2^-23, apart).
    assert result.pairs == local.pairs
    step = 2.0**-23
    torch.testing.assert_close(result.singular_values, local.singular_values, rtol=step, atol=0)
    torch.testing.assert_close(result.vectors, local.vectors, rtol=0, atol=step)
    assert result.iterations == local.iterations and result.converged == local.converged


def test_two_ray_workers_map_the_local_map_and_a_rerun_reuses_every_unit(cluster, saved, tmp_path):
    model_dir, _, lm, local = saved
    executor = make_map_executor("ray", model=ModelSpec(model_dir, dtype="float64"), workers=2)
    assert isinstance(executor, RayMapExecutor)
    try:
        remote = map_in_units(lm, PROMPTS, executor=executor, unit_dir=tmp_path, **OPTIONS)
        pids = executor.worker_pids()
        again = map_in_units(lm, PROMPTS, executor=executor, unit_dir=tmp_path, **OPTIONS)
    finally:
        executor.shutdown()
    assert len(set(pids)) == 2 and os.getpid() not in pids  # really two other processes
    assert (remote.computed, remote.reused) == (3, 0)
    assert_same_map(remote.result, local)
    assert (again.computed, again.reused) == (0, 3)
    assert_same_map(again.result, local)


def test_map_command_on_ray_writes_the_local_map(cluster, saved, tmp_path):
    model_dir, prompts, _, local = saved
    out = tmp_path / "map"
    code = main(["map", "--model", model_dir, "--prompts", prompts, "-k", "2", "--dtype",
                 "float64", "--out", str(out), "--executor", "ray", "--workers", "2"])  # fmt: skip
    assert code == 0
    assert_same_map(load_map(out), local)
    pd.testing.assert_frame_equal(pd.read_parquet(out / TABLE_FILE), local.to_frame())
    assert len(list((out / UNITS_DIR).glob("*.safetensors"))) == 3
