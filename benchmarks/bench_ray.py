"""Ray executor on this machine: local vs 1 vs 2 single-thread Ray workers, one run each.

The same small organism sweep (anti_refusal, 16 prompts, power/random/caa, 2 vectors,
3 scales) is run fresh three times in one process: locally with one thread, then on a
local Ray cluster with one and with two single-thread actors (actor start-up included,
as a user pays it). Prints the walls and the ratios; every results.parquet is compared.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_ray.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import torch

from harness.evaluation.executors import ModelSpec
from harness.evaluation.pipeline import run
from harness.integrations.ray_executor import make_executor
from harness.testing.small_behaviors import small_anti_refusal


def main() -> None:
    torch.set_num_threads(1)
    directory = Path(tempfile.mkdtemp())
    file = small_anti_refusal(directory, prompts=16, max_new_tokens=16)
    walls: dict[str, float] = {}
    frames: dict[str, pd.DataFrame] = {}
    started = time.perf_counter()
    run([file], model="organism", out=directory / "local", progress=False, batch_rows=32)
    walls["local, 1 thread"] = time.perf_counter() - started
    frames["local, 1 thread"] = pd.read_parquet(directory / "local" / "results.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for workers in (1, 2):
        name = f"ray, {workers} worker(s)"
        executor = make_executor("ray", model=ModelSpec("organism"), workers=workers)
        started = time.perf_counter()
        run(
            [file],
            model="organism",
            out=directory / name,
            progress=False,
            batch_rows=32,
            executor=executor,
        )
        walls[name] = time.perf_counter() - started
        executor.shutdown()
        frames[name] = pd.read_parquet(directory / name / "results.parquet")
    reference = frames["local, 1 thread"]
    for name, wall in walls.items():
        same = reference.equals(frames[name])
        print(f"{name:<20} {wall:7.1f} s  results equal to local: {same}")
    one, two = walls["ray, 1 worker(s)"], walls["ray, 2 worker(s)"]
    local = walls["local, 1 thread"]
    print(f"2 workers vs 1: {one / two:.2f}x; ray (1 worker) vs local: {one / local:.2f}x")


if __name__ == "__main__":
    main()
