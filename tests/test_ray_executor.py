"""Sweeps on a real local Ray cluster (loopback, 2 CPUs) give exactly the local results.

One cluster serves the module (starting Ray costs seconds); the behavior is the organism's
anti_refusal shrunk to a few prompts, vectors and scales, cut into many small batches so
that a worker can be killed while batches are still outstanding.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import PowersteerError
from harness.evaluation.executors import ModelSpec
from harness.evaluation.pipeline import run
from harness.integrations.ray_executor import RayExecutor, make_executor
from harness.testing.small_behaviors import small_anti_refusal

ray = pytest.importorskip("ray")  # in the dev extra; CI has it

BATCH_ROWS = 12  # 3 cells of 4 prompts a batch: many batches, so a kill lands mid-run
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_cluster")]


def test_unreachable_cluster_is_one_clear_error():
    # First in the module: the cluster fixture has not connected this process yet.
    assert not ray.is_initialized()
    with pytest.raises(PowersteerError) as caught:
        make_executor("ray:127.0.0.1:9", model=ModelSpec("organism"))
    message = str(caught.value)
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in message
    assert "ray start --head" in message and "\n" not in message
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("local")
    behavior = small_anti_refusal(directory, prompts=8, max_new_tokens=8)
    result = run(
        [behavior], model="organism", out=directory / "out", progress=False, batch_rows=BATCH_ROWS
    )
    return behavior, result


def read_results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def test_ray_run_writes_the_local_results(cluster, local_run, tmp_path):
    behavior, local = local_run
    executor = make_executor("ray", model=ModelSpec("organism"), workers=2)
    try:
        remote = run(
            [behavior],
            model="organism",
            out=tmp_path / "ray",
            progress=False,
            batch_rows=BATCH_ROWS,
            executor=executor,
        )
        pids = executor.worker_pids()
    finally:
        executor.shutdown()
    assert len(set(pids)) == 2 and os.getpid() not in pids  # really two other processes
    pd.testing.assert_frame_equal(read_results(local.run_dir), read_results(remote.run_dir))
    assert remote.sweeps[0].cells_computed == local.sweeps[0].cells_computed > 0


def test_killed_worker_loses_no_cell_and_changes_no_result(cluster, local_run, tmp_path):
    behavior, local = local_run
    executor = make_executor("ray", model=ModelSpec("organism"), workers=2, cache="shared")
    assert isinstance(executor, RayExecutor)
    out = tmp_path / "ray"
    outcome: dict = {}

    def sweep() -> None:
        try:
            outcome["result"] = run(
                [behavior],
                model="organism",
                out=out,
                progress=False,
                batch_rows=BATCH_ROWS,
                executor=executor,
            )
        except BaseException as error:  # re-raised below, in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=sweep)
    thread.start()
    cells = out / "cache" / "cells"
    deadline = time.monotonic() + 240
    while not (cells.is_dir() and any(cells.rglob("*.json"))):  # the workers are running
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    victim = executor.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    try:
        assert "error" not in outcome, outcome.get("error")
        survivors = executor.worker_pids()
    finally:
        executor.shutdown()
    assert victim not in survivors and len(survivors) == 2  # the killed actor was restarted
    remote = outcome["result"]
    assert remote.sweeps[0].cells_computed == local.sweeps[0].cells_computed
    pd.testing.assert_frame_equal(read_results(local.run_dir), read_results(remote.run_dir))


def test_unknown_executor_is_one_clear_error():
    with pytest.raises(PowersteerError, match="unknown executor; use local, ray"):
        make_executor("dask", model=ModelSpec("organism"))
