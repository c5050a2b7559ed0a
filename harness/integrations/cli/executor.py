"""``--executor``, ``--workers``, ``--cache``, ``--gpus-per-worker``: where a run's cells go."""

from __future__ import annotations

import argparse
from typing import Any


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scaling out (README 'Scaling out')")
    group.add_argument(
        "--executor",
        default="local",
        metavar="local|ray[:ADDRESS]",
        help="evaluate cell batches here (local, default) or on Ray actors; ray alone uses "
        "RAY_ADDRESS or starts a local cluster, ray:auto the node's running cluster",
    )
    group.add_argument(
        "--workers", type=int, default=2, help="Ray actors, each holding the model (default 2)"
    )
    group.add_argument(
        "--cache",
        choices=("driver", "shared"),
        default="driver",
        help="driver: workers return cells and this process writes them (default); "
        "shared: workers write into the run directory, which every node must see",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPU share of each actor on cuda (default 1; 0.5 puts two actors on a card)",
    )
    group.add_argument(
        "--threads-per-worker", type=int, default=1, help="CPU threads of each actor (default 1)"
    )


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the arguments name; None for local (the pipeline's default)."""
    if args.executor == "local":
        return None
    from harness.evaluation.executors import ModelSpec
    from harness.integrations.ray_executor import make_executor

    return make_executor(
        args.executor,
        model=ModelSpec(args.model, dtype=args.dtype, device=args.device),
        workers=args.workers,
        cache=args.cache,
        gpus_per_worker=args.gpus_per_worker,
        threads_per_worker=args.threads_per_worker,
    )
