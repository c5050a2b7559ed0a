"""Map units on Ray: the organism's whole-model map with 2 single-thread Ray workers vs 1.

Both runs map every (source, target) pair of the model (the bundled 6-block organism by
default) unit by unit, one unit per source block (:mod:`harness.engine.map_units`), on a
local Ray cluster started here with 2 CPUs; each run starts its actors afresh (start-up
included, as a user pays it) and caches nothing. Prints both walls, the ratio, and whether
the two maps are equal.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_ray_map.py
"""

from __future__ import annotations

import argparse
import time

import ray
import torch

from harness.engine.map_units import map_in_units
from harness.engine.models import load_model
from harness.engine.prompts import DEFAULT_TARGET_TOKENS
from harness.evaluation.executors import ModelSpec
from harness.integrations.ray_executor import make_map_executor

PROMPTS = [
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Explain how a bicycle stays upright.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=15)
    parser.add_argument(
        "--prompt-copies",
        type=int,
        default=1,
        help="map the prompts this many times over: more work per unit against the fixed "
        "actor start-up",
    )
    args = parser.parse_args()
    prompts = PROMPTS * args.prompt_copies
    torch.set_num_threads(1)
    lm = load_model(args.model)  # the driver's copy: prompts, fingerprint, merged map
    options = {"num_vectors": args.k, "max_iter": args.max_iter,
               "target_tokens": DEFAULT_TARGET_TOKENS}  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    walls, maps = {}, {}
    for workers in (1, 2):
        executor = make_map_executor("ray", model=ModelSpec(args.model), workers=workers)
        started = time.perf_counter()
        maps[workers] = map_in_units(lm, prompts, executor=executor, **options).result
        walls[workers] = time.perf_counter() - started
        executor.shutdown()
    ray.shutdown()
    one, two = maps[1], maps[2]
    same = (
        one.pairs == two.pairs
        and torch.equal(one.singular_values, two.singular_values)
        and torch.equal(one.vectors, two.vectors)
        and one.iterations == two.iterations
    )
    print(f"model: {args.model}, {lm.n_layers} blocks, {len(one.pairs)} pairs in "
          f"{lm.n_layers - 1} units; k={args.k}; {len(prompts)} prompts")  # fmt: skip
    for workers, wall in walls.items():
        print(f"ray, {workers} worker(s): {wall:7.1f} s")
    print(f"2 workers vs 1: {walls[1] / walls[2]:.2f}x; maps equal: {same}")


if __name__ == "__main__":
    main()
