"""``--executor``, ``--workers``, ``--cache``, ``--gpus-per-worker``: where a run's cells (or a
map's units) go."""

from __future__ import annotations

import argparse
from typing import Any


def add_executor_arguments(
    parser: argparse.ArgumentParser,
    *,
    choice: str = "evaluate cell batches here (local, default) or on Ray actors",
    cache_modes: bool = True,
) -> None:
    """The executor flags; ``choice`` says what the choice of executor decides,
    ``cache_modes`` adds ``--cache`` (a map's driver always writes its units: map has none)."""
    group = parser.add_argument_group("scaling out (README 'Scaling out')")
    group.add_argument(
        "--executor",
        default="local",
        metavar="local|ray[:ADDRESS]",
        help=f"{choice}; ray alone uses RAY_ADDRESS or starts a local cluster, ray:auto the "
        "node's running cluster",
    )
    group.add_argument(
        "--workers", type=int, default=2, help="Ray actors, each holding the model (default 2)"
    )
    if cache_modes:
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
    from harness.integrations.ray_executor import make_executor

    return make_executor(args.executor, cache=args.cache, **_ray_settings(args))


def map_executor_from_args(args: argparse.Namespace) -> Any:
    """The map-unit executor the arguments name; None for local (the whole map in one go)."""
    if args.executor == "local":
        return None
    from harness.integrations.ray_executor import make_map_executor

    return make_map_executor(args.executor, **_ray_settings(args))


def _ray_settings(args: argparse.Namespace) -> dict[str, Any]:
    from harness.evaluation.executors import ModelSpec

    return {
        "model": ModelSpec(args.model, dtype=args.dtype, device=args.device),
        "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "threads_per_worker": args.threads_per_worker,
    }
