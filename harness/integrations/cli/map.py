"""``powersteer map``: the top singular values of every requested block pair, resumable, here
in one go or cut into units on Ray actors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import PowersteerError
from harness.files import atomic_write, directory_lock
from harness.integrations.cli.executor import add_executor_arguments, map_executor_from_args
from harness.integrations.cli.model_prompts import add_prompt_arguments, model_and_prompts
from harness.integrations.cli.parsing import add_command, add_no_wait_flag, require_directory

if TYPE_CHECKING:
    from harness.engine.map_units import MapExecutor
    from harness.engine.models import LanguageModel
    from harness.engine.sensitivity import SensitivityMap


def add_map_command(commands: argparse._SubParsersAction) -> None:
    """Register ``map``: the top singular values of every requested block pair (resumable)."""
    mapping = add_command(
        commands,
        "map",
        help="map the whole model's layer-to-layer sensitivity (resumable)",
        description="Top-k singular values and vectors of the Jacobian for every requested "
        "(source, target) block pair, sharing passes across pairs. Writes map.safetensors, "
        "map.parquet and sigma1_heatmap.png (with --kl-scale also map_kl.parquet and "
        "kl_heatmap.png); a killed run continues where it stopped, and a finished map is "
        "reused. With --executor ray the map is cut into units by source block, mapped on "
        "Ray actors and merged; finished units are kept in OUT/map_units and reused.",
        examples=[
            "powersteer map --prompts prompts.txt --pairs all -k 4 --kl-scale 0.25 --out map/",
            "powersteer map --prompts prompts.txt --out map/ --executor ray --workers 2",
        ],
    )
    add_prompt_arguments(mapping)
    mapping.add_argument(
        "--pairs", default="all", help="'all' or SOURCE:TARGET,... (indices or fractions of depth)"
    )
    mapping.add_argument("-k", "--num-vectors", type=int, default=12, dest="k")
    mapping.add_argument("--max-iter", type=int, default=15)
    mapping.add_argument(
        "--kl-scale",
        type=float,
        default=None,
        help="also steer with each pair's top vector at this many median residual norms at "
        "its source and record the KL divergence of the next-token distribution",
    )
    mapping.add_argument(
        "--candidates-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --kl-scale: write the --keep best pairs (ranked by KL) as a candidates "
        "file a behavior names with steering.layers: {candidates: FILE}",
    )
    mapping.add_argument(
        "--keep", type=int, default=3, help="pairs kept in --candidates-out (default 3)"
    )
    mapping.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="at most this many batch rows (vectors x prompts) per pass, to bound memory",
    )
    mapping.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/map-MODEL)"
    )
    add_no_wait_flag(mapping)
    add_executor_arguments(
        mapping, choice="map here in one go (local, default; resumable by iteration) or cut "
        "into units by source block on Ray actors (resumable by unit)", cache_modes=False,
    )  # fmt: skip
    mapping.set_defaults(handler=_run_map)  # fmt: skip


def _run_map(args: argparse.Namespace) -> int:
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import parse_pairs
    from harness.engine.sensitivity_io import map_directory

    out = args.out or Path("reports") / f"map-{Path(str(args.model)).name}"
    if args.candidates_out is not None and args.kl_scale is None:
        raise PowersteerError(
            "--candidates-out ranks pairs by next-token KL; give --kl-scale too (e.g. 1.0)"
        )
    require_directory(out)
    executor = map_executor_from_args(args)  # before the model: a bad address fails at once
    try:
        lm, prompts = model_and_prompts(args)
        pairs = parse_pairs(args.pairs, lm.n_layers)
        config = {"model": str(args.model), "prompts": prompts, "pairs": pairs, "k": args.k,
                  "max_iter": args.max_iter, "seed": args.seed,
                  "target_tokens": args.target_tokens, "dtype": args.dtype}  # fmt: skip
        with directory_lock(out, wait=args.wait, what="map"):
            directory = map_directory(out, config)
            if directory != out:
                print(f"{out} holds a finished map with other settings, which is kept; writing "
                      f"this map to {directory}", file=sys.stderr)  # fmt: skip
            result = _finished_or_computed_map(args, lm, prompts, directory, config, executor)
            summary = _map_outputs(args, lm, prompts, directory, result)
    finally:
        if executor is not None:
            executor.shutdown()
    print(json.dumps(summary, indent=2))
    return 0


def _finished_or_computed_map(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    config: dict[str, Any],
    executor: MapExecutor | None,
) -> SensitivityMap:
    """The finished map in ``directory`` with these settings, else computed and saved there:
    by ``executor`` unit by unit, or (None) here in one go, resuming from its state file,
    which each iteration checkpoints."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity_io import STATE_FILE, finished_map, save_map

    result = finished_map(directory, config)
    if result is not None:
        print(f"reusing the finished map in {directory}", file=sys.stderr)
        return result
    directory.mkdir(parents=True, exist_ok=True)
    if executor is None:
        result = _whole_map(args, lm, prompts, directory, config)
    else:
        result = _map_in_units(args, lm, prompts, directory, config["pairs"], executor)
    save_map(directory, result, config=config, n_prompts=len(prompts))
    (directory / STATE_FILE).unlink(missing_ok=True)  # only now: a kill before leaves it
    return result


def _map_in_units(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    pairs: list[tuple[int, int]],
    executor: MapExecutor,
) -> SensitivityMap:
    """The map computed by ``executor`` unit by unit, reusing the units in OUT/map_units."""
    # These import torch: not needed for --help.
    from harness.engine.map_units import UNITS_DIR, map_in_units
    from harness.evaluation.cache import model_fingerprint

    # The unit keys name the weights: a same-named model trained again maps afresh.
    identity = {"model": str(args.model), "fingerprint": model_fingerprint(lm)}
    outcome = map_in_units(
        lm, prompts, pairs, executor=executor, unit_dir=directory / UNITS_DIR,
        identity=identity, progress=True, num_vectors=args.k, max_iter=args.max_iter,
        seed=args.seed, target_tokens=args.target_tokens, max_rows=args.max_rows,
    )  # fmt: skip
    print(f"map units: {outcome.computed} computed, {outcome.reused} reused "
          f"({directory / UNITS_DIR})", file=sys.stderr)  # fmt: skip
    return outcome.result


def _whole_map(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    config: dict[str, Any],
) -> SensitivityMap:
    """The map computed here in one go, resuming from and checkpointing its state file."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import sensitivity_map
    from harness.engine.sensitivity_io import STATE_FILE, load_state, save_state

    state_path = directory / STATE_FILE
    resume = load_state(state_path, config)
    if resume is not None:
        print(f"resuming {state_path} after iteration {resume.iteration}", file=sys.stderr)
    return sensitivity_map(
        lm, prompts, config["pairs"], args.k, max_iter=args.max_iter, seed=args.seed,
        target_tokens=args.target_tokens, max_rows=args.max_rows, progress=True,
        resume=resume, checkpoint=lambda state: save_state(state_path, state, config),
    )  # fmt: skip


def _map_outputs(
    args: argparse.Namespace,
    lm: LanguageModel,
    prompts: list[str],
    directory: Path,
    result: SensitivityMap,
) -> dict[str, object]:
    """Write the heatmaps (and with --kl-scale the KL table); the command's summary."""
    # These import torch: not needed for --help.
    from harness.engine.sensitivity import next_token_kl, pair_matrix
    from harness.engine.sensitivity_io import KL_FILE
    from harness.evaluation.plots import plot_pair_heatmap

    plot_pair_heatmap(result.sigma_matrix(0), directory / "sigma1_heatmap.png", label="σ₁",
                      title=f"{args.model}\ntop singular value σ₁ of J(s → t)")  # fmt: skip
    summary: dict[str, object] = {
        "out": str(directory),
        "pairs": len(result.pairs),
        "converged": sum(result.converged),
        "forward_passes": result.forward_passes,
        "wall_time_s": round(result.wall_time_s, 2),
    }
    if args.kl_scale is not None:
        table = next_token_kl(lm, prompts, result, args.kl_scale, max_rows=args.max_rows)
        atomic_write(directory / KL_FILE, lambda path: table.to_parquet(path, index=False))
        matrix = pair_matrix(result.pairs, table["kl"].tolist(), result.n_layers)
        plot_pair_heatmap(matrix, directory / "kl_heatmap.png", label="KL (nats)",
                          title=f"{args.model}\nnext-token KL, top vector at "
                                f"±{args.kl_scale:g}× residual norm")  # fmt: skip
        strongest = table.loc[table["kl"].idxmax()]
        summary["largest_kl"] = {"pair": f"{int(strongest.source)}:{int(strongest.target)}",
                                 "kl": round(float(strongest.kl), 4)}  # fmt: skip
        if args.candidates_out is not None:
            from harness.engine.sensitivity import rank_pairs
            from harness.engine.sensitivity_io import write_candidates

            written = write_candidates(
                args.candidates_out, rank_pairs(result, table), args.keep,
                model=str(args.model), kl_scale=args.kl_scale, n_prompts=len(prompts),
            )  # fmt: skip
            summary["candidates"] = str(written)
    return summary
